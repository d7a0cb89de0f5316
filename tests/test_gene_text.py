"""Tests for scllm_jax.knowledge.gene_text: structured gene prompts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scllm_jax.knowledge.gene_table import GeneKnowledge, load_gene_knowledge
from scllm_jax.knowledge.gene_text import (
    DEFAULT_TEMPLATE,
    MAX_FUNCTION_CHARS,
    PROMPT_VERSION,
    gene_prompt,
    gene_prompts,
)

DATA = Path(__file__).parent / "data"
MISSING_WORDS = re.compile(r"\b(nan|None|null)\b")


@pytest.fixture(scope="module")
def shipped() -> GeneKnowledge:
    return load_gene_knowledge()


def test_ins_prompt(shipped: GeneKnowledge) -> None:
    prompt = gene_prompt(shipped.record("INS"))
    assert prompt.startswith(
        "Gene: INS. Full name: insulin. Type: protein-coding. "
        "Aliases: IDDM, IDDM1, IDDM2, ILPR"
    )
    assert "Location: 11p15.5." in prompt
    functions = prompt.split("Functions: ", 1)[1]
    assert "glucose homeostasis" in functions and "insulin receptor binding" in functions
    assert prompt.endswith(".") and ".." not in prompt


def test_go_order_processes_functions_components(shipped: GeneKnowledge) -> None:
    prompt = gene_prompt(shipped.record("CD3E"))
    assert prompt.index("T cell receptor signaling pathway") < prompt.index(
        "T cell receptor binding") < prompt.index("T cell receptor complex")


def test_summary_preferred_over_go(shipped: GeneKnowledge) -> None:
    merged = shipped.merged_with(load_gene_knowledge(DATA / "mini_genept.json"))
    prompt = gene_prompt(merged.record("INS"))
    assert "Functions: Encodes insulin, the peptide hormone" in prompt
    assert "glucose homeostasis" not in prompt
    assert prompt.endswith("lowers blood glucose.")


def test_missing_fields_are_omitted() -> None:
    record = {"symbol": "ABC1", "name": float("nan"), "gene_type": None,
              "aliases": "", "map_location": "-", "go_bp": "nan", "summary": "None"}
    assert gene_prompt(record) == "Gene: ABC1."
    assert gene_prompt({}) == ""


def test_gene_info_prompt_has_no_missing_words() -> None:
    knowledge = load_gene_knowledge(DATA / "mini_gene_info.tsv")
    prompts = gene_prompts(knowledge.table.index, knowledge)
    assert "Gene: LOC999999001. Type: unknown." in prompts
    assert not any(MISSING_WORDS.search(p) for p in prompts)


def test_all_shipped_prompts_clean_and_bounded(shipped: GeneKnowledge) -> None:
    prompts = [gene_prompt(r) for r in shipped.table.to_dict("records")]
    assert not [p for p in prompts if MISSING_WORDS.search(p)]
    assert all(p.startswith("Gene: ") for p in prompts)
    assert max(map(len, prompts)) < MAX_FUNCTION_CHARS + 600


def test_function_text_is_capped() -> None:
    record = {"symbol": "BIG", "go_bp": "; ".join(f"process number {i}" for i in range(500))}
    functions = gene_prompt(record).split("Functions: ", 1)[1]
    assert len(functions) <= MAX_FUNCTION_CHARS + 1
    assert "process number 59" in functions and "process number 60" not in functions
    long_summary = {"symbol": "BIG", "summary": "word " * 1000}
    assert len(gene_prompt(long_summary)) < MAX_FUNCTION_CHARS + 50


def test_gene_prompts_lookup(shipped: GeneKnowledge) -> None:
    prompts = gene_prompts(["cd3e", "LARS", "not_a_gene"], shipped)
    assert prompts[0].startswith("Gene: CD3E. Full name: CD3 epsilon subunit")
    assert prompts[1].startswith("Gene: LARS1.")  # found through its alias
    assert prompts[2] == "Gene: NOT_A_GENE."


def test_template_and_version() -> None:
    record = {"symbol": "INS", "name": "insulin", "gene_type": "protein-coding"}
    assert gene_prompt(record, template=(("Symbol", "symbol"), ("Kind", "gene_type"))) == (
        "Symbol: INS. Kind: protein-coding.")
    assert isinstance(PROMPT_VERSION, str) and PROMPT_VERSION.startswith("gene-prompt-v")
    assert [field for _, field in DEFAULT_TEMPLATE][0] == "symbol"
