"""Synthetic atlases: negative-binomial counts from K cell-type programmes over real gene symbols.

For scaling benchmarks and tests at sizes no public data set conveniently
has (1e4 to 1e6+ cells), and as the positive control of the knowledge view
(``programmes="go"``: each type's programme is the genes of one Gene Ontology
process). Counts are generated block by block straight into CSR, so a million
cells x 2,000 genes needs only the sparse matrix in memory.
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


@functools.lru_cache(maxsize=4)
def go_programmes(n_programmes: int, size: int, seed: int = 0) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``n_programmes`` Gene Ontology processes and ``size`` of their protein-coding genes each, no gene shared.

    Processes are drawn (fixed by ``seed``) among those with ``size`` to
    ``4 * size`` annotated protein-coding genes in the bundled table (specific
    enough to be a programme); a process overlapping one already drawn is passed over.

    Returns
    -------
    tuple of (term, genes)
        The process name and its chosen gene symbols.
    """
    from .knowledge.gene_table import load_gene_knowledge

    table = load_gene_knowledge().table
    coding = table[table["gene_type"] == "protein-coding"]
    terms = coding["go_bp"].str.split("; ").explode()
    terms = terms[terms.notna() & (terms != "")]
    members = pd.Series(terms.index, index=terms.to_numpy()).groupby(level=0).agg(lambda g: sorted(set(g)))
    sizes = members.map(len)
    candidates = sorted(members.index[(sizes >= size) & (sizes <= 4 * size)])
    rng = np.random.default_rng(seed)
    chosen, used = [], set()
    for term in rng.permutation(np.asarray(candidates, dtype=object)):
        genes = [g for g in members[term] if g not in used]
        if len(genes) < len(members[term]):
            continue
        picked = tuple(sorted(rng.choice(genes, size, replace=False)))
        chosen.append((str(term), picked))
        used.update(members[term])
        if len(chosen) == n_programmes:
            return tuple(chosen)
    raise ValueError(f"Only {len(chosen)} disjoint Gene Ontology processes with {size} to {4 * size} genes were "
                     f"found, {n_programmes} were asked for; ask for fewer types or fewer markers per type.")


def _count_block(means: np.ndarray, rows: np.ndarray, seed: int, start: int, dispersion: float) -> sp.csr_matrix:
    """Counts of one block of cells of types ``rows`` (its own generator: blocks are independent)."""
    block_rng = np.random.default_rng([seed, start])
    library = np.exp(block_rng.normal(0.0, 0.35, rows.size)).astype(np.float32)
    mu = means[rows] * library[:, None]
    # Gamma-Poisson mixture = negative binomial; float32 gamma is the fast path.
    rate = block_rng.standard_gamma(np.float32(dispersion), mu.shape, dtype=np.float32) * (mu / dispersion)
    return sp.csr_matrix(block_rng.poisson(rate).astype(np.float32))


def synthetic_atlas(n_cells: int, n_genes: int = 2000, n_types: int = 20, *, seed: int = 0,
                    markers_per_type: int = 40, dispersion: float = 2.0, block_size: int = 20_000,
                    programmes: str = "random", marker_log_fold: float = 1.8, n_jobs: int = 1) -> ad.AnnData:
    """Raw counts of ``n_cells`` cells from ``n_types`` cell-type programmes.

    Each gene has a base mean (log-normal, most genes low); each type
    up-regulates its own ``markers_per_type`` genes by a log-normal fold
    change (about 2 to 20x at the default ``marker_log_fold``) and
    down-regulates a few; type sizes are unbalanced (Dirichlet); each cell has
    a log-normal library size. Counts are negative binomial (Gamma-Poisson)
    with inverse dispersion ``dispersion``.

    With ``programmes="random"`` a type's up-regulated genes are drawn at
    random; with ``programmes="go"`` they are the genes of one Gene Ontology
    process (:func:`go_programmes`, a different process per type), so genes that
    move together also share knowledge: the positive control of the knowledge
    view (compare with the same atlas after
    :func:`~scllm_jax.controls.permute_gene_symbols`).

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
    programmes
        ``"random"`` or ``"go"`` (see above).
    marker_log_fold
        Mean natural-log fold change of the up-regulated genes (sd 0.6);
        smaller values make types harder to tell apart from expression alone.
    n_jobs
        Processes that generate blocks at once (the counts do not depend on it).

    Returns
    -------
    anndata.AnnData
        ``X``: CSR float32 counts; ``obs['cell_type']``: the true type
        (categorical, ``type_00`` ...); ``var_names``: gene symbols;
        ``uns['programmes']``: with ``"go"``, the process of each type.
    """
    if programmes not in ("random", "go"):
        raise ValueError(f"programmes must be 'random' or 'go', got {programmes!r}.")
    rng = np.random.default_rng(seed)
    genes = atlas_genes(n_genes, seed)
    ups = [None] * n_types
    uns = {}
    if programmes == "go":
        chosen = go_programmes(n_types, markers_per_type, seed)
        programme_genes = sorted({g for _, members in chosen for g in members})
        others = np.setdiff1d(genes, programme_genes)[: max(0, n_genes - len(programme_genes))]
        genes = np.sort(np.concatenate([np.asarray(programme_genes, dtype=object), others]))
        position = {g: j for j, g in enumerate(genes)}
        ups = [np.array([position[g] for g in members]) for _, members in chosen]
        uns["programmes"] = {f"type_{k:02d}": term for k, (term, _) in enumerate(chosen)}
        n_genes = len(genes)
    base = np.exp(rng.normal(-3.0, 1.4, n_genes))
    log_fold = np.zeros((n_types, n_genes))
    for k in range(n_types):
        up = rng.choice(n_genes, markers_per_type, replace=False) if ups[k] is None else ups[k]
        log_fold[k, up] = rng.normal(marker_log_fold, 0.6, markers_per_type)
        down = rng.choice(n_genes, markers_per_type // 4, replace=False)
        log_fold[k, down] -= 1.5
    means = (base * np.exp(log_fold)).astype(np.float32)
    proportions = rng.dirichlet(np.full(n_types, 3.0))
    labels = rng.choice(n_types, n_cells, p=proportions)
    starts = range(0, n_cells, block_size)
    jobs = [(means, labels[start:start + block_size], seed, start, dispersion) for start in starts]
    if n_jobs > 1 and len(jobs) > 1:
        # Each block has its own generator ([seed, start]): the same counts whatever the number of processes.
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(n_jobs, mp_context=get_context("spawn")) as pool:
            blocks = list(pool.map(_count_block, *zip(*jobs)))
    else:
        blocks = [_count_block(*job) for job in jobs]
    counts = sp.vstack(blocks, format="csr", dtype=np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type_{k:02d}" for k in labels])},
                       index=[f"cell_{i}" for i in range(n_cells)])
    return ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes.astype(str))), uns=uns)
