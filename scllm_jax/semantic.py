"""The knowledge-driven semantic view of cells (METHOD.md section 1).

Genes -> knowledge text -> language-model embeddings (cached) -> per cell:
path 1 (expression-weighted sum of its top genes' embeddings) and path 2
(its Cell2Sentence sentence embedded), fused as ``w Z1 + (1 - w) Z2``.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import anndata as ad
import numpy as np

from .config import ScllmConfig
from .preprocess import PreparedData

logger = logging.getLogger(__name__)

#: Below this fraction of genes found in the knowledge base the view is not built.
MIN_FRACTION_MATCHED = 0.05


@dataclasses.dataclass
class SemanticView:
    """The cell text embedding and what it was built from.

    Attributes
    ----------
    cell_embeddings
        ``Z_text`` (cells x d_llm), or ``None`` when the view could not be built.
    gene_embeddings
        ``{"gene_names", "embeddings", "mask"}`` over the kept genes, reused to
        embed new cells; ``None`` without path 1.
    info
        What was used: match counts, paths, model, and why the view is off.
    """

    cell_embeddings: np.ndarray | None
    gene_embeddings: dict[str, np.ndarray] | None
    info: dict


def _off(reason: str) -> SemanticView:
    warnings.warn(f"Semantic view off, clustering graph-only: {reason}", UserWarning, stacklevel=3)
    return SemanticView(None, None, {"used": False, "reason": reason})


def gene_embedding_table(gene_names: np.ndarray, config: ScllmConfig, *, species: str | None = None,
                         progress: bool = True, knowledge=None, cache=None) -> tuple[dict[str, np.ndarray], object]:
    """Language-model embeddings of the knowledge text of each gene.

    Returns
    -------
    (dict, SymbolMapping)
        ``{"gene_names", "embeddings", "mask"}`` with zero rows for genes that
        are not in the knowledge base, and the symbol mapping.
    """
    from .knowledge.gene_table import load_gene_knowledge, map_gene_symbols
    from .knowledge.gene_text import PROMPT_VERSION, gene_prompts
    from .knowledge.language_model import cached_embed_texts

    knowledge = knowledge or load_gene_knowledge()
    mapping = map_gene_symbols(gene_names, knowledge, species=species)
    mask = np.array([m is not None for m in mapping.matched])
    table = {"gene_names": np.asarray(gene_names).astype(str), "mask": mask, "embeddings": None}
    if mask.any():
        symbols = [m for m in mapping.matched if m is not None]
        prompts = gene_prompts(symbols, knowledge)
        vectors = cached_embed_texts(prompts, config.language_model, cache_key_extra=PROMPT_VERSION,
                                     cache=cache, progress=progress)
        embeddings = np.zeros((len(gene_names), vectors.shape[1]), dtype=np.float32)
        embeddings[mask] = vectors
        table["embeddings"] = embeddings
    return table, mapping


def cell_view_from_gene_embeddings(adata: ad.AnnData, prepared: PreparedData,
                                   gene_table: dict[str, np.ndarray] | None, config: ScllmConfig, *,
                                   progress: bool = True, cache=None) -> np.ndarray:
    """``Z_text`` of the cells in ``prepared`` from already embedded genes."""
    from .knowledge.cell_text import (abundance_weighted_embedding, cell_sentences, fuse_views,
                                      sentence_embeddings)

    views = []
    if config.use_path1:
        if gene_table is None or gene_table["embeddings"] is None:
            raise ValueError("Path 1 needs gene embeddings; none were built for this model.")
        views.append(abundance_weighted_embedding(prepared.log_expression, gene_table["embeddings"],
                                                  config.top_k_genes, gene_mask=gene_table["mask"]))
    if config.use_path2:
        symbols = list(prepared.gene_names.astype(str))
        if gene_table is not None:
            # Only genes the knowledge base knows are written into sentences: a symbol the
            # language model has never seen as a gene adds tokens, not meaning.
            symbols = [s if known else "" for s, known in zip(symbols, gene_table["mask"])]
        sentences = cell_sentences(prepared.log_expression, symbols, config.sentence_genes)
        views.append(sentence_embeddings(sentences, config.language_model, cache=cache, progress=progress))
    if len(views) == 2:
        return fuse_views(views[0], views[1], config.fusion_weight)
    return views[0]


def build_semantic_view(adata: ad.AnnData, prepared: PreparedData, config: ScllmConfig, *,
                        progress: bool = True, knowledge=None, cache=None) -> SemanticView:
    """Build ``Z_text`` for the cells of ``adata``, or explain why it cannot be built.

    Datasets without gene symbols (``uns['gene_symbols'] == False``) or whose
    genes are (almost) absent from the knowledge base get no semantic view: a
    warning says so and the model runs graph-only. Random vectors are never
    passed off as knowledge.

    Parameters
    ----------
    adata
        The data (``uns['species']`` and ``uns['gene_symbols']`` are read).
    prepared
        Its preprocessed arrays.
    config
        Uses ``language_model``, ``use_path1/2``, ``top_k_genes``,
        ``sentence_genes``, ``fusion_weight``.
    knowledge, cache
        A :class:`~scllm_jax.knowledge.gene_table.GeneKnowledge` and an
        :class:`~scllm_jax.knowledge.language_model.EmbeddingCache` to use
        instead of the shipped table and the default cache.
    """
    if adata.uns.get("gene_symbols") is False:
        return _off("the data has no gene symbols (uns['gene_symbols'] is False), "
                    "so no gene knowledge can be attached.")
    table, mapping = gene_embedding_table(prepared.gene_names, config, species=adata.uns.get("species"),
                                          progress=progress, knowledge=knowledge, cache=cache)
    info = {"used": True, "genes_matched": int(mapping.n_matched), "genes_total": len(prepared.gene_names),
            "fraction_matched": float(mapping.fraction_matched), "matched_via_alias": int(mapping.via_alias),
            "summary": mapping.summary(), "language_model": config.language_model,
            "paths": [p for p, on in (("path1", config.use_path1), ("path2", config.use_path2)) if on]}
    logger.info(mapping.summary())
    if mapping.fraction_matched < MIN_FRACTION_MATCHED:
        view = _off(f"only {mapping.summary()}; below {MIN_FRACTION_MATCHED:.0%} the knowledge is too thin "
                    "to describe cells. Are the gene names symbols?")
        view.info.update({k: v for k, v in info.items() if k != "used"})
        return view
    cells = cell_view_from_gene_embeddings(adata, prepared, table, config, progress=progress, cache=cache)
    return SemanticView(cells, table if config.use_path1 else None, info)
