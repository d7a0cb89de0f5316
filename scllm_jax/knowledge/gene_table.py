"""Gene knowledge tables: loading them and mapping dataset gene names onto them.

The knowledge base is one row per human gene symbol with NCBI Entrez Gene
fields and Gene Ontology term names (see ``data/PROVENANCE.md``). Every field is
a string; a missing value is the empty string, never NaN.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import json
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

COLUMNS: tuple[str, ...] = (
    "symbol",
    "entrez_id",
    "ensembl_id",
    "name",
    "gene_type",
    "aliases",
    "map_location",
    "go_bp",
    "go_mf",
    "go_cc",
    "summary",
)
"""Columns of :attr:`GeneKnowledge.table`. ``ensembl_id``, ``aliases`` and
``map_location`` are ``|``-joined lists; ``go_*`` are ``; ``-joined term names."""

SHIPPED_TABLE = "human_gene_knowledge.tsv.gz"

ACCEPTED_FORMATS = (
    "accepted formats: a knowledge TSV with a 'symbol' column (optionally .gz), "
    "an NCBI gene_info TSV (header starting '#tax_id'), "
    "or a GenePT-style JSON object {symbol: summary text}"
)

# Column names of other tables (lower-cased) that mean one of ours.
_COLUMN_SYNONYMS = {
    "gene": "symbol",
    "gene_symbol": "symbol",
    "entrez": "entrez_id",
    "geneid": "entrez_id",
    "ensembl": "ensembl_id",
    "full_name": "name",
    "description": "name",
    "type_of_gene": "gene_type",
    "synonyms": "aliases",
    "cytoband": "map_location",
}
_TYPE_PRIORITY = {"protein-coding": 0, "other": 2, "unknown": 2, "biological-region": 2}
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*G\d+)\.\d+$")


@dataclass(frozen=True)
class GeneKnowledge:
    """A gene knowledge base.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per gene, indexed by upper-case symbol, with the string columns
        :data:`COLUMNS` (missing = ``""``). Treat it as read-only: the default
        table is shared between callers.
    aliases : Mapping[str, str]
        Upper-case alias -> index key, for aliases that name exactly one gene
        and are not themselves a symbol.
    source : str
        Where the table came from (file, release), for provenance records.
    """

    table: pd.DataFrame
    aliases: Mapping[str, str]
    source: str

    @functools.cached_property
    def ensembl(self) -> dict[str, str]:
        """Upper-case Ensembl gene id (no version) -> index key, where unambiguous."""
        return _unique_lookup(self.table["ensembl_id"])

    @functools.cached_property
    def described(self) -> frozenset[str]:
        """Index keys of the genes with functional knowledge.

        Protein-coding genes, and genes with a Gene Ontology term or a summary.
        The others (most pseudogenes and non-coding RNAs) have only a name, a
        type and a location: their text says what kind of gene they are, not
        what they do, so the semantic view leaves them out.
        """
        table = self.table
        functional = (table["gene_type"] == "protein-coding") | (table["summary"] != "")
        for column in ("go_bp", "go_mf", "go_cc"):
            functional |= table[column] != ""
        return frozenset(table.index[functional.to_numpy()])

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, symbol: object) -> bool:
        return isinstance(symbol, str) and symbol.upper() in self.table.index

    def record(self, symbol: str) -> dict[str, str] | None:
        """Return the fields of a gene, found by symbol or alias (any case), or None."""
        key = symbol.upper()
        key = key if key in self.table.index else self.aliases.get(key)
        return None if key is None else self.table.loc[key].to_dict()

    def merged_with(self, other: GeneKnowledge) -> GeneKnowledge:
        """Overlay ``other`` on this knowledge base.

        Non-empty fields of ``other`` replace this table's fields; genes only in
        ``other`` are added. Typical use: add GenePT/NCBI summaries to the
        shipped table, ``load_gene_knowledge().merged_with(load_gene_knowledge(
        "genept.json"))``.

        Parameters
        ----------
        other : GeneKnowledge
            The knowledge whose non-empty fields win.

        Returns
        -------
        GeneKnowledge
            A new knowledge base; neither input is modified.
        """
        index = self.table.index.append(other.table.index.difference(self.table.index))
        mine = self.table.reindex(index, fill_value="")
        theirs = other.table.reindex(index, fill_value="")
        merged = mine.where(theirs == "", theirs)
        merged["symbol"] = mine["symbol"].where(mine["symbol"] != "", theirs["symbol"])
        return _finish(merged.reset_index(drop=True), f"{self.source} + {other.source}")


def load_gene_knowledge(path: str | Path | None = None) -> GeneKnowledge:
    """Load a gene knowledge base.

    Parameters
    ----------
    path : str or Path, optional
        ``None`` loads the table shipped with the package (human, NCBI Entrez
        Gene + Gene Ontology, see ``scllm_jax/knowledge/data/PROVENANCE.md``).
        Otherwise, detected from the content (gzip or plain text):

        - a knowledge TSV with a ``symbol`` column (the shipped layout; other
          tables with e.g. ``ensembl``, ``GO_BP`` columns are renamed),
        - an NCBI ``gene_info`` TSV (header line starting ``#tax_id``; ``-``
          means missing),
        - a GenePT-style JSON object ``{symbol: summary text}``, giving a table
          whose only filled fields are ``symbol`` and ``summary`` (combine it
          with :meth:`GeneKnowledge.merged_with`).

    Returns
    -------
    GeneKnowledge
        Table indexed by upper-case symbol, alias map and source string.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be decoded or its format is not one of the above.
    """
    if path is None:
        return _load_shipped()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gene knowledge file not found: {path}")
    text, digest = _read_text(path)
    head = text.lstrip()[:1]
    first_line = text.split("\n", 1)[0].strip()
    try:
        if head == "{":
            table = _parse_genept_json(text)
        elif first_line.lower().lstrip("#").startswith("tax_id\t"):
            table = _parse_gene_info(text)
        elif "symbol" in [c.strip().lower() for c in first_line.split("\t")]:
            table = _parse_knowledge_tsv(text)
        else:
            raise ValueError("unknown format")
    except (ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"cannot read gene knowledge from {path} ({err}); "
                         f"{ACCEPTED_FORMATS}") from None
    return _finish(table, f"{path} (sha256 {digest})")


@functools.lru_cache(maxsize=1)
def _load_shipped() -> GeneKnowledge:
    resource = resources.files("scllm_jax.knowledge") / "data" / SHIPPED_TABLE
    with resources.as_file(resource) as path:
        text, digest = _read_text(path)
    source = (f"scllm_jax/knowledge/data/{SHIPPED_TABLE} (sha256 {digest}; NCBI Entrez "
              "Gene + Gene Ontology from Bioconductor org.Hs.eg.db/GO.db, see PROVENANCE.md)")
    return _finish(_parse_knowledge_tsv(text), source, strip=False)


def _read_text(path: Path) -> tuple[str, str]:
    """Return the (gunzipped) text of a file and the first 16 hex digits of its sha256."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8"), digest
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise ValueError(f"cannot decode {path} as (gzipped) UTF-8 text ({err}); "
                         f"{ACCEPTED_FORMATS}") from None


def _read_tsv(text: str) -> pd.DataFrame:
    # keep_default_na=False: "NA" and "NaN" are real gene symbols/aliases here.
    return pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False,
                       quoting=csv.QUOTE_NONE)


def _parse_knowledge_tsv(text: str) -> pd.DataFrame:
    table = _read_tsv(text)
    table.columns = [c.strip().lower() for c in table.columns]
    table = table.rename(columns=_COLUMN_SYNONYMS)
    return table.loc[:, ~table.columns.duplicated()]


def _parse_gene_info(text: str) -> pd.DataFrame:
    info = _read_tsv(text)
    info.columns = [c.lstrip("#") for c in info.columns]
    missing = {"GeneID", "Symbol"} - set(info.columns)
    if missing:
        raise ValueError(f"gene_info header lacks {sorted(missing)}")
    info = info.replace("-", "")

    def col(name: str) -> pd.Series:
        return info[name] if name in info else pd.Series("", index=info.index)

    xrefs = col("dbXrefs").str.split("|")
    ensembl = xrefs.map(lambda refs: "|".join(r.split(":", 1)[1] for r in refs
                                              if r.startswith("Ensembl:")))
    name = col("description").where(col("description") != "",
                                    col("Full_name_from_nomenclature_authority"))
    return pd.DataFrame({
        "symbol": info["Symbol"], "entrez_id": info["GeneID"], "ensembl_id": ensembl,
        "name": name, "gene_type": col("type_of_gene"), "aliases": col("Synonyms"),
        "map_location": col("map_location"),
    })


def _parse_genept_json(text: str) -> pd.DataFrame:
    data = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(data, dict):
        raise ValueError("JSON is not an object mapping symbols to text")
    summaries = {str(k): " ".join(v) if isinstance(v, list) else str(v)
                 for k, v in data.items() if v is not None}
    return pd.DataFrame({"symbol": list(summaries), "summary": list(summaries.values())})


def _finish(table: pd.DataFrame, source: str, strip: bool = True) -> GeneKnowledge:
    """Normalise columns, index by upper-case symbol, de-duplicate, build aliases."""
    table = table.reindex(columns=list(COLUMNS), fill_value="").fillna("").astype(str)
    if strip:  # the shipped table is already clean; skipping saves ~0.5 s
        table = table.apply(lambda c: c.str.strip())
    table = table[table["symbol"] != ""]
    # One row per upper-case symbol: protein-coding first, then typed, then rest.
    priority = table["gene_type"].map(_TYPE_PRIORITY).fillna(1)
    order = np.lexsort((np.arange(len(table)), priority.to_numpy()))
    table = table.iloc[order]
    table = table[~table["symbol"].str.upper().duplicated()]
    table = table.set_index(table["symbol"].str.upper().rename(None)).sort_index()
    return GeneKnowledge(table=table, aliases=_unique_lookup(table["aliases"], table.index),
                         source=source)


def _unique_lookup(column: pd.Series, exclude: pd.Index | None = None) -> dict[str, str]:
    """Upper-case value -> index key, over ``|``-joined values naming exactly one gene."""
    pairs = column.str.split("|").explode()
    pairs = pairs[pairs.notna() & (pairs != "")].str.upper()
    if exclude is not None:
        pairs = pairs[~pairs.isin(exclude)]
    keys = pd.Series(pairs.index, index=pairs.to_numpy())
    unique = keys.groupby(level=0).nunique() == 1
    keys = keys[unique.reindex(keys.index).to_numpy()]
    return dict(zip(keys.index, keys.to_numpy()))


@dataclass(frozen=True)
class SymbolMapping:
    """Result of :func:`map_gene_symbols`.

    Attributes
    ----------
    gene_names : numpy.ndarray
        The dataset's gene names, as given (object array).
    matched : numpy.ndarray
        Per gene, the knowledge index key (upper-case symbol) or None.
    n_matched : int
        Genes with a match.
    fraction_matched : float
        ``n_matched / n_genes`` (0.0 when there are no genes).
    via_alias : int
        Matches made through an alias rather than the symbol itself.
    via_ensembl : int
        Matches made through an Ensembl gene id.
    species : str or None
        The dataset's species, as given.
    """

    gene_names: np.ndarray
    matched: np.ndarray
    n_matched: int
    fraction_matched: float
    via_alias: int
    via_ensembl: int
    species: str | None = None

    @property
    def n_genes(self) -> int:
        """Number of dataset genes."""
        return len(self.gene_names)

    @property
    def mask(self) -> np.ndarray:
        """Boolean array, True where a gene matched."""
        return np.array([m is not None for m in self.matched], dtype=bool)

    def summary(self) -> str:
        """One line, e.g. ``"12034 of 14878 genes (80.9%) matched ... (311 via aliases)"``."""
        extra = [f"{self.via_alias} via aliases"]
        if self.via_ensembl:
            extra.append(f"{self.via_ensembl} via Ensembl ids")
        text = (f"{self.n_matched} of {self.n_genes} genes "
                f"({100 * self.fraction_matched:.1f}%) matched the knowledge base "
                f"({', '.join(extra)})")
        if self.species and not is_human_species(self.species):
            text += f"; {self.species} names matched to human symbols by name, not orthology"
        return text


def is_human_species(species: str) -> bool:
    """Whether a species name (``uns['species']``: "human", "Homo sapiens", "9606", ...) means human."""
    return species.strip().lower() in {"human", "homo sapiens", "hsapiens", "9606", "hs"}


def map_gene_symbols(gene_names: Iterable[str], knowledge: GeneKnowledge,
                     species: str | None = None) -> SymbolMapping:
    """Map dataset gene names onto knowledge-base symbols.

    Each name is tried, in order, as a symbol (case-insensitive, so mouse
    ``Cd3e`` -> ``CD3E``), as an unambiguous alias (mitochondrial ``MT-CO1`` /
    ``mt-Co1`` via NCBI's alias ``MTCO1`` -> ``COX1``), and as an Ensembl gene id
    (version suffix ignored). Names without a match (e.g. ``gene_00001``, or a
    mouse gene with no same-named human gene such as ``Ins2``) map to None.

    Parameters
    ----------
    gene_names : iterable of str
        The dataset's gene names, e.g. ``adata.var_names``.
    knowledge : GeneKnowledge
        From :func:`load_gene_knowledge`.
    species : str, optional
        The dataset's species (e.g. ``adata.uns['species']``); recorded, and
        named in the summary when not human.

    Returns
    -------
    SymbolMapping
        Per-gene matches and counts.
    """
    names = np.asarray(list(gene_names), dtype=object)
    symbols = set(knowledge.table.index)
    ensembl = knowledge.ensembl
    matched = np.full(len(names), None, dtype=object)
    via_alias = via_ensembl = 0
    for i, name in enumerate(names):
        key = str(name).strip().upper()
        if key in symbols:
            matched[i] = key
        elif key in knowledge.aliases:
            matched[i] = knowledge.aliases[key]
            via_alias += 1
        elif key.startswith("MT-") and key.replace("-", "") in knowledge.aliases:
            # NCBI names mitochondrial genes COX1, ND1, ... with aliases MTCO1, MTND1.
            matched[i] = knowledge.aliases[key.replace("-", "")]
            via_alias += 1
        elif key.startswith("ENS"):
            hit = ensembl.get(_ENSEMBL_VERSION.sub(r"\1", key))
            if hit is not None:
                matched[i] = hit
                via_ensembl += 1
    n_matched = int(sum(m is not None for m in matched))
    return SymbolMapping(
        gene_names=names,
        matched=matched,
        n_matched=n_matched,
        fraction_matched=n_matched / len(names) if len(names) else 0.0,
        via_alias=via_alias,
        via_ensembl=via_ensembl,
        species=species,
    )
