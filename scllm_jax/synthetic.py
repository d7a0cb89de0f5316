"""Synthetic atlases: negative-binomial counts from K cell-type programmes over real gene symbols.

For scaling benchmarks and tests at sizes no public data set conveniently
has (1e4 to 1e6+ cells). Counts are generated block by block straight into
CSR, so a million cells x 2,000 genes needs only the sparse matrix in memory.
"""

from __future__ import annotations

import functools

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


@functools.lru_cache(maxsize=4)
def atlas_genes(n_genes: int, seed: int = 0) -> np.ndarray:
    """``n_genes`` real human protein-coding symbols (from the bundled gene table), fixed by ``seed``."""
    from .knowledge.gene_table import load_gene_knowledge

    table = load_gene_knowledge().table
    symbols = np.asarray(table.index[table["gene_type"] == "protein-coding"], dtype=object)
    if n_genes > symbols.size:
        raise ValueError(f"Only {symbols.size} protein-coding symbols are known, {n_genes} were asked for.")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(symbols, n_genes, replace=False))


def synthetic_atlas(n_cells: int, n_genes: int = 2000, n_types: int = 20, *, seed: int = 0,
                    markers_per_type: int = 40, dispersion: float = 2.0, block_size: int = 20_000) -> ad.AnnData:
    """Raw counts of ``n_cells`` cells from ``n_types`` cell-type programmes.

    Each gene has a base mean (log-normal, most genes low); each type
    up-regulates its own ``markers_per_type`` genes by a log-normal fold
    change (about 2 to 20x) and down-regulates a few; type sizes are
    unbalanced (Dirichlet); each cell has a log-normal library size. Counts
    are negative binomial (Gamma-Poisson) with inverse dispersion ``dispersion``.

    Parameters
    ----------
    n_cells, n_genes, n_types
        Size of the atlas and number of cell types K.
    seed
        Fixes the programmes and every count.
    markers_per_type
        Genes each type up-regulates.
    dispersion
        NB inverse dispersion ``theta`` (variance ``mu + mu^2 / theta``).
    block_size
        Cells generated at once (memory: ``block_size x n_genes`` floats).

    Returns
    -------
    anndata.AnnData
        ``X``: CSR float32 counts; ``obs['cell_type']``: the true type
        (categorical, ``type_00`` ...); ``var_names``: gene symbols.
    """
    rng = np.random.default_rng(seed)
    genes = atlas_genes(n_genes, seed)
    base = np.exp(rng.normal(-3.0, 1.4, n_genes))
    log_fold = np.zeros((n_types, n_genes))
    for k in range(n_types):
        up = rng.choice(n_genes, markers_per_type, replace=False)
        log_fold[k, up] = rng.normal(1.8, 0.6, markers_per_type)
        down = rng.choice(n_genes, markers_per_type // 4, replace=False)
        log_fold[k, down] -= 1.5
    means = (base * np.exp(log_fold)).astype(np.float32)
    proportions = rng.dirichlet(np.full(n_types, 3.0))
    labels = rng.choice(n_types, n_cells, p=proportions)
    blocks = []
    for start in range(0, n_cells, block_size):
        block_rng = np.random.default_rng([seed, start])
        rows = labels[start:start + block_size]
        library = np.exp(block_rng.normal(0.0, 0.35, rows.size)).astype(np.float32)
        mu = means[rows] * library[:, None]
        # Gamma-Poisson mixture = negative binomial; float32 gamma is the fast path.
        rate = block_rng.standard_gamma(np.float32(dispersion), mu.shape, dtype=np.float32) * (mu / dispersion)
        blocks.append(sp.csr_matrix(block_rng.poisson(rate).astype(np.float32)))
        del mu, rate
    counts = sp.vstack(blocks, format="csr", dtype=np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type_{k:02d}" for k in labels])},
                       index=[f"cell_{i}" for i in range(n_cells)])
    return ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes.astype(str))))
