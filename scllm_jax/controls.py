"""Controls that show whether the semantic view uses gene knowledge.

- Negative control, :func:`permute_gene_symbols`: every gene keeps its
  expression but carries another gene's symbol. The cell graph, the PCA and
  the fraction of genes found in the knowledge base are unchanged; only the
  knowledge attached to each expression pattern is scrambled. A method that
  scores the same with and without the permutation does not use knowledge.
- Positive control, :func:`~scllm_jax.synthetic.synthetic_atlas` with
  ``programmes="go"``: cell types that differ by programmes of genes sharing a
  Gene Ontology process, where knowledge agrees with the expression structure.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def permute_gene_symbols(adata: ad.AnnData, seed: int = 0, *, gene_symbols_key: str | None = None) -> ad.AnnData:
    """A copy of ``adata`` whose gene symbols are permuted among its genes.

    Parameters
    ----------
    adata
        The data.
    seed
        Fixes the permutation.
    gene_symbols_key
        Permute this ``var`` column instead of ``var_names`` (the column the
        semantic view reads symbols from).

    Returns
    -------
    anndata.AnnData
        The same cells and expression; symbols permuted (a derangement: no gene
        keeps its own symbol), ``uns['permuted_gene_symbols'] = seed``.
    """
    permuted = adata.copy()
    n_genes = permuted.n_vars
    rng = np.random.default_rng(seed)
    # A random cyclic shift of a random order moves every gene (a derangement) for n_genes > 1.
    order = rng.permutation(n_genes)
    target = np.empty(n_genes, dtype=np.int64)
    target[order] = np.roll(order, 1)
    if gene_symbols_key is None:
        names = np.asarray(permuted.var_names, dtype=object)
        permuted.var_names = pd.Index(names[target].astype(str))
    else:
        column = permuted.var[gene_symbols_key].to_numpy()
        permuted.var[gene_symbols_key] = column[target]
    permuted.uns["permuted_gene_symbols"] = int(seed)
    return permuted
