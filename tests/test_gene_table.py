"""Tests for scllm_jax.knowledge.gene_table: loaders and symbol mapping."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from scllm_jax.knowledge.gene_table import (
    COLUMNS,
    GeneKnowledge,
    SymbolMapping,
    load_gene_knowledge,
    map_gene_symbols,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def shipped() -> GeneKnowledge:
    return load_gene_knowledge()


def test_shipped_table_loads(shipped: GeneKnowledge) -> None:
    table = shipped.table
    assert list(table.columns) == list(COLUMNS)
    assert table.index.is_unique
    assert (table.index == table["symbol"].str.upper()).all()
    assert (table["gene_type"] == "protein-coding").sum() > 19000
    assert not table.isna().any().any()
    assert "org.Hs.eg.db" in shipped.source and "sha256" in shipped.source


def test_shipped_table_content(shipped: GeneKnowledge) -> None:
    cd3e = shipped.record("CD3E")
    assert cd3e is not None
    assert "T cell" in cd3e["go_bp"]
    assert cd3e["entrez_id"] == "916"
    assert "ENSG00000198851" in cd3e["ensembl_id"].split("|")
    ins = shipped.record("ins")
    assert ins["name"] == "insulin" and ins["map_location"] == "11p15.5"
    assert "IDDM2" in ins["aliases"].split("|")
    assert "glucose homeostasis" in ins["go_bp"]
    # GO terms are capped per aspect and bare "ND" root terms are dropped.
    for column in ("go_bp", "go_mf", "go_cc"):
        assert shipped.table[column].str.count("; ").max() <= 19
    assert not shipped.table["go_bp"].str.contains("biological_process").any()


def test_load_is_cached(shipped: GeneKnowledge) -> None:
    assert load_gene_knowledge() is shipped


def test_load_gene_info(tmp_path: Path) -> None:
    knowledge = load_gene_knowledge(DATA / "mini_gene_info.tsv")
    assert len(knowledge) == 5
    cd3e = knowledge.record("CD3E")
    assert cd3e["entrez_id"] == "916"
    assert cd3e["ensembl_id"] == "ENSG00000198851"
    assert cd3e["map_location"] == "11q23.3"
    assert cd3e["gene_type"] == "protein-coding"
    assert cd3e["aliases"] == "IMD18|T3E|TCRE"
    # "-" means missing and becomes the empty string.
    loc = knowledge.record("LOC999999001")
    assert loc["name"] == "" and loc["aliases"] == "" and loc["ensembl_id"] == ""
    assert knowledge.aliases["GLP1"] == "GCG"
    # The same file gzipped loads the same way.
    gz = tmp_path / "mini.gene_info.gz"
    gz.write_bytes(gzip.compress((DATA / "mini_gene_info.tsv").read_bytes()))
    assert load_gene_knowledge(gz).table.equals(knowledge.table)


def test_load_genept_json() -> None:
    knowledge = load_gene_knowledge(DATA / "mini_genept.json")
    assert set(knowledge.table.index) == {"INS", "CD3E", "GCG", "NOVEL1"}
    assert knowledge.record("GCG")["symbol"] == "Gcg"
    assert "beta cells" in knowledge.record("INS")["summary"]
    assert knowledge.record("INS")["name"] == ""


def test_load_knowledge_tsv_with_other_column_names(tmp_path: Path) -> None:
    path = tmp_path / "ref.tsv"
    path.write_text(
        "symbol\tensembl\tgene_type\tname\tGO_BP\tGO_MF\tGO_CC\n"
        "CD3E\tENSG00000198851\tprotein-coding\tCD3 epsilon\tT cell activation\t\t\n"
        "NA\t\tunknown\tNA\t\t\t\n"
    )
    knowledge = load_gene_knowledge(path)
    assert knowledge.record("CD3E")["go_bp"] == "T cell activation"
    assert knowledge.record("CD3E")["ensembl_id"] == "ENSG00000198851"
    assert knowledge.record("NA")["name"] == "NA"  # not read as a missing value


def test_merged_with_adds_summaries(shipped: GeneKnowledge) -> None:
    merged = shipped.merged_with(load_gene_knowledge(DATA / "mini_genept.json"))
    assert len(merged) == len(shipped) + 1  # NOVEL1
    ins = merged.record("INS")
    assert ins["name"] == "insulin" and "beta cells" in ins["summary"]
    assert merged.record("GCG")["symbol"] == "GCG"  # the base table's spelling wins
    assert shipped.record("INS")["summary"] == ""  # inputs untouched


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01\x02\xff\xfe binary garbage",
        b"just some text\nwith no header we know\n",
        b"[1, 2, 3]",
        b'{"INS": "insulin", ',
        b"\x1f\x8b\x08\x00truncated gzip",
    ],
)
def test_bad_file_raises_value_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="accepted formats"):
        load_gene_knowledge(path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_gene_knowledge(tmp_path / "absent.tsv")


def test_map_mouse_symbols(shipped: GeneKnowledge) -> None:
    names = ["Cd3e", "Ins2", "Gcg", "Ptprc", "mt-Co1", "Gm12345"]
    mapping = map_gene_symbols(names, shipped, species="mouse")
    assert isinstance(mapping, SymbolMapping)
    # Ins2 has no same-named human gene (human has one insulin gene, INS).
    assert list(mapping.matched) == ["CD3E", None, "GCG", "PTPRC", "COX1", None]
    assert mapping.n_matched == 4
    assert mapping.fraction_matched == pytest.approx(4 / 6)
    assert mapping.via_alias == 1  # mt-Co1 -> MTCO1 -> COX1
    np.testing.assert_array_equal(mapping.mask, [True, False, True, True, True, False])
    assert "mouse" in mapping.summary()


def test_map_alias_and_ensembl(shipped: GeneKnowledge) -> None:
    # Retired symbols resolve through NCBI aliases; Ensembl ids with a version too.
    mapping = map_gene_symbols(["SEPT7", "LARS", "ENSG00000254647.5", "CD3E"], shipped)
    assert list(mapping.matched) == ["SEPTIN7", "LARS1", "INS", "CD3E"]
    assert mapping.via_alias == 2 and mapping.via_ensembl == 1
    assert mapping.summary() == (
        "4 of 4 genes (100.0%) matched the knowledge base "
        "(2 via aliases, 1 via Ensembl ids)"
    )


def test_ambiguous_alias_is_not_used(shipped: GeneKnowledge) -> None:
    aliases = shipped.table["aliases"].str.split("|").explode().str.upper()
    counts = aliases[aliases != ""].value_counts()
    ambiguous = next(a for a in counts.index[counts > 1] if a not in shipped.table.index)
    assert ambiguous not in shipped.aliases
    assert map_gene_symbols([ambiguous], shipped).n_matched == 0


def test_placeholder_names_match_nothing(shipped: GeneKnowledge) -> None:
    mapping = map_gene_symbols([f"gene_{i:05d}" for i in range(50)], shipped)
    assert mapping.n_matched == 0 and mapping.fraction_matched == 0.0
    assert mapping.summary().startswith("0 of 50 genes (0.0%)")
    assert map_gene_symbols([], shipped).fraction_matched == 0.0
