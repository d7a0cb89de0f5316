"""Structured gene text (METHOD.md section 1, step 1) to feed a language model.

A prompt looks like::

    Gene: INS. Full name: insulin. Type: protein-coding. Aliases: IDDM, IDDM1,
    IDDM2. Location: 11p15.5. Functions: glucose homeostasis; hormone activity; ...

Missing fields are left out. The functional description is the gene's summary
(e.g. NCBI/GenePT text) when there is one, otherwise its Gene Ontology term
names: processes, then functions, then components.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .gene_table import GeneKnowledge

DEFAULT_TEMPLATE: tuple[tuple[str, str], ...] = (
    ("Gene", "symbol"),
    ("Full name", "name"),
    ("Type", "gene_type"),
    ("Aliases", "aliases"),
    ("Location", "map_location"),
    ("Functions", "functions"),
)
"""``(label, field)`` pairs rendered as ``"label: value."`` in order. ``functions``
is derived (summary, else GO terms); other fields are knowledge-table columns."""

MAX_ALIASES = 8
MAX_GO_TERMS = 60
MAX_FUNCTION_CHARS = 1200

PROMPT_VERSION = (
    f"gene-prompt-v1:aliases{MAX_ALIASES}:go{MAX_GO_TERMS}:chars{MAX_FUNCTION_CHARS}"
)
"""Changes whenever the default prompt text would change; key embedding caches on it
(together with the knowledge table's source and the model name)."""

_MISSING = {"", "-", "nan", "none"}


def _value(record: Mapping[str, object], field: str) -> str:
    value = record.get(field)
    if value is None or (isinstance(value, float) and value != value):  # None / NaN
        return ""
    text = " ".join(str(value).split())
    return "" if text.lower() in _MISSING else text


def _functions(record: Mapping[str, object]) -> str:
    summary = _value(record, "summary")
    if summary:
        text = summary
    else:
        terms = [t.strip() for field in ("go_bp", "go_mf", "go_cc")
                 for t in _value(record, field).split(";") if t.strip()]
        text = "; ".join(dict.fromkeys(terms[:MAX_GO_TERMS]))
    if len(text) > MAX_FUNCTION_CHARS:
        cut = text[:MAX_FUNCTION_CHARS]
        stop = max(cut.rfind("; "), cut.rfind(". "), cut.rfind(" "))
        text = cut[:stop] if stop > 0 else cut
    return text.rstrip(" ;.,")


def _field(record: Mapping[str, object], field: str) -> str:
    if field == "functions":
        return _functions(record)
    value = _value(record, field)
    if field == "aliases":
        return ", ".join([a for a in value.split("|") if a.strip()][:MAX_ALIASES])
    if field == "map_location":
        return ", ".join(value.split("|"))
    return value.rstrip(".")


def gene_prompt(record: Mapping[str, object],
                template: tuple[tuple[str, str], ...] = DEFAULT_TEMPLATE) -> str:
    """Build the knowledge text of one gene.

    Parameters
    ----------
    record : Mapping[str, object]
        The gene's fields, e.g. ``knowledge.record("INS")`` or a row of
        ``knowledge.table``. Empty, ``None``, NaN, ``"-"`` and ``"nan"`` values
        count as missing and are left out with their label.
    template : tuple of (label, field) pairs, optional
        Which fields to render and how to label them; see :data:`DEFAULT_TEMPLATE`.

    Returns
    -------
    str
        ``"Label: value."`` parts joined by spaces, e.g. ``"Gene: INS. Full name:
        insulin. ..."``; empty if every field is missing.
    """
    parts = []
    for label, field in template:
        value = _field(record, field)
        if value:
            parts.append(f"{label}: {value}.")
    return " ".join(parts)


def gene_prompts(symbols: Iterable[str], knowledge: GeneKnowledge,
                 template: tuple[tuple[str, str], ...] = DEFAULT_TEMPLATE) -> list[str]:
    """Build the knowledge text of many genes.

    Parameters
    ----------
    symbols : iterable of str
        Gene symbols or aliases, any case (e.g. ``SymbolMapping.matched`` entries).
        A symbol the knowledge base does not know gets just ``"Gene: <SYMBOL>."``.
    knowledge : GeneKnowledge
        From :func:`~scllm_jax.knowledge.gene_table.load_gene_knowledge`.
    template : tuple of (label, field) pairs, optional
        Passed to :func:`gene_prompt`.

    Returns
    -------
    list of str
        One prompt per symbol, in order.
    """
    prompts = []
    for symbol in symbols:
        record = knowledge.record(str(symbol)) or {"symbol": str(symbol).upper()}
        prompts.append(gene_prompt(record, template))
    return prompts
