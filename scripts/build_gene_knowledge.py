"""Build the offline human gene knowledge table shipped with ``scllm_jax``.

The table is extracted from Bioconductor's annotation databases as packaged by
Debian: ``org.Hs.eg.db`` (NCBI Entrez Gene, with GO annotations) and ``GO.db``
(Gene Ontology term names). Both packages carry their data as SQLite files, so
no R is needed. Rebuild from the repository root with::

    python scripts/build_gene_knowledge.py

which runs, in a temporary directory::

    apt-get download r-bioc-org.hs.eg.db r-bioc-go.db
    dpkg-deb -x r-bioc-org.hs.eg.db_<version>_all.deb extracted/
    dpkg-deb -x r-bioc-go.db_<version>_all.deb extracted/

then reads ``extracted/**/org.Hs.eg.sqlite`` and ``extracted/**/GO.sqlite`` with
Python's ``sqlite3`` and writes

* ``scllm_jax/knowledge/data/human_gene_knowledge.tsv.gz``: one row per gene
  symbol, columns ``symbol, entrez_id, ensembl_id, name, gene_type, aliases,
  map_location, go_bp, go_mf, go_cc``. Multi-valued identifier fields
  (``ensembl_id``, ``aliases``, ``map_location``) are ``|``-joined; GO term names
  are ``; ``-joined; a missing value is the empty string.
* ``scllm_jax/knowledge/data/PROVENANCE.md``: package versions, source dates,
  checksums and this command.

Choices, all deterministic:

* GO annotations with evidence ``ND`` (no biological data; these are the bare
  root terms such as "biological_process") are dropped.
* Per gene and aspect, terms are ordered by their best evidence tier
  (experimental, then curator/author statement, then phylogenetic, then
  sequence-similarity, then non-traceable author statement, then electronic)
  and then by GO id, and the first ``--max-terms`` (default 20) are kept.
* Where NCBI gives one symbol to several Entrez genes (122 genes in the 2022
  release, mostly tRNA copies), the row kept is protein-coding first, then
  other typed genes, then ``other``/``unknown``/``biological-region``, then the
  lowest Entrez id.
* The gzip stream is written with a zero timestamp so a rebuild from the same
  packages is byte-identical.

Offline use: pass ``--deb-dir DIR`` holding the two ``.deb`` files already
downloaded, and no network is needed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import hashlib
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = ("r-bioc-org.hs.eg.db", "r-bioc-go.db")
ORG_SQLITE = "org.Hs.eg.sqlite"
GO_SQLITE = "GO.sqlite"
COLUMNS = (
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
)
GO_ASPECTS = ("bp", "mf", "cc")

# Lower tier = more trustworthy evidence; unknown codes go last but one.
EVIDENCE_TIER = {
    **dict.fromkeys(
        ["EXP", "IDA", "IPI", "IMP", "IGI", "IEP", "HTP", "HDA", "HMP", "HGI", "HEP"], 0
    ),
    **dict.fromkeys(["TAS", "IC"], 1),
    **dict.fromkeys(["IBA", "IBD", "IKR", "IRD"], 2),
    **dict.fromkeys(["ISS", "ISO", "ISA", "ISM", "IGC", "RCA"], 3),
    "NAS": 4,
    "IEA": 6,
}
UNKNOWN_EVIDENCE_TIER = 5
TYPE_TIER = {"protein-coding": 0, "other": 2, "unknown": 2, "biological-region": 2}

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "scllm_jax" / "knowledge" / "data"
TABLE_NAME = "human_gene_knowledge.tsv.gz"


def fetch_debs(deb_dir: Path) -> list[Path]:
    """Download the two Debian packages into ``deb_dir`` with ``apt-get download``."""
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=deb_dir, check=True)
    return find_debs(deb_dir)


def find_debs(deb_dir: Path) -> list[Path]:
    """Return the ``.deb`` file of each package in ``deb_dir`` (newest name if several)."""
    debs = []
    for package in PACKAGES:
        found = sorted(deb_dir.glob(f"{package}_*.deb"))
        if not found:
            raise FileNotFoundError(f"no {package}_*.deb in {deb_dir}")
        debs.append(found[-1])
    return debs


def deb_version(deb: Path) -> str:
    """Return the ``Version`` field of a ``.deb`` file."""
    out = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def extract_sqlite(debs: list[Path], dest: Path) -> tuple[Path, Path]:
    """Unpack the packages with ``dpkg-deb -x`` and locate the two SQLite files."""
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    found = {}
    for name in (ORG_SQLITE, GO_SQLITE):
        hits = sorted(dest.rglob(name))
        if not hits:
            raise FileNotFoundError(f"{name} not found in the extracted packages")
        found[name] = hits[0]
    return found[ORG_SQLITE], found[GO_SQLITE]


def read_metadata(db: sqlite3.Connection, schema: str = "main") -> dict[str, str]:
    """Return the ``metadata`` table (source names, URLs and dates) of a database."""
    return dict(db.execute(f"SELECT name, value FROM {schema}.metadata").fetchall())


def _multi(db: sqlite3.Connection, sql: str) -> dict[int, list[str]]:
    """Group ``(_id, value)`` rows into sorted, de-duplicated lists per gene."""
    out: dict[int, set[str]] = {}
    for gid, value in db.execute(sql):
        if value:
            out.setdefault(gid, set()).add(value)
    return {gid: sorted(values) for gid, values in out.items()}


def go_terms(db: sqlite3.Connection, aspect: str, max_terms: int) -> dict[int, list[str]]:
    """Return up to ``max_terms`` GO term names per gene for one aspect.

    Terms are ranked by their best evidence tier, then by GO id; ``ND`` evidence
    is dropped.
    """
    best: dict[int, dict[str, tuple[int, str]]] = {}
    sql = (
        f"SELECT x._id, x.go_id, x.evidence, t.term FROM go_{aspect} x "
        "JOIN godb.go_term t ON t.go_id = x.go_id WHERE x.evidence != 'ND'"
    )
    for gid, go_id, evidence, term in db.execute(sql):
        tier = EVIDENCE_TIER.get(evidence, UNKNOWN_EVIDENCE_TIER)
        terms = best.setdefault(gid, {})
        if go_id not in terms or tier < terms[go_id][0]:
            terms[go_id] = (tier, term)
    out = {}
    for gid, terms in best.items():
        ranked = sorted(terms.items(), key=lambda kv: (kv[1][0], kv[0]))
        out[gid] = [term for _, (_, term) in ranked[:max_terms]]
    return out


def build_rows(org_path: Path, go_path: Path, max_terms: int) -> tuple[list[dict], dict]:
    """Read both databases and return the table rows and the source metadata."""
    db = sqlite3.connect(f"file:{org_path}?mode=ro", uri=True)
    db.execute("ATTACH DATABASE ? AS godb", (f"file:{go_path}?mode=ro",))
    meta = {"org": read_metadata(db), "go": read_metadata(db, "godb")}

    genes = db.execute(
        "SELECT g._id, g.gene_id, i.symbol, i.gene_name, t.gene_type FROM genes g "
        "JOIN gene_info i ON i._id = g._id LEFT JOIN genetype t ON t._id = g._id"
    ).fetchall()
    ensembl = _multi(db, "SELECT _id, ensembl_id FROM ensembl")
    aliases = _multi(db, "SELECT _id, alias_symbol FROM alias")
    location = _multi(db, "SELECT _id, cytogenetic_location FROM cytogenetic_locations")
    go = {aspect: go_terms(db, aspect, max_terms) for aspect in GO_ASPECTS}
    db.close()

    # One row per symbol: protein-coding first, then typed genes, then the rest,
    # then the lowest Entrez id.
    def priority(gene: tuple) -> tuple[int, int]:
        return TYPE_TIER.get(gene[4] or "unknown", 1), int(gene[1])

    chosen: dict[str, tuple] = {}
    for gene in sorted(genes, key=priority):
        chosen.setdefault(gene[2], gene)

    rows = []
    for symbol in sorted(chosen):
        gid, entrez, _, name, gene_type = chosen[symbol]
        rows.append(
            {
                "symbol": symbol,
                "entrez_id": entrez,
                "ensembl_id": "|".join(ensembl.get(gid, [])),
                "name": name or "",
                "gene_type": gene_type or "",
                "aliases": "|".join(a for a in aliases.get(gid, []) if a != symbol),
                "map_location": "|".join(location.get(gid, [])),
                **{f"go_{a}": "; ".join(go[a].get(gid, [])) for a in GO_ASPECTS},
            }
        )
    meta["n_entrez_genes"] = len(genes)
    return rows, meta


def _clean(value: str) -> str:
    """Keep a field on one TSV line."""
    return value.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_table(rows: list[dict], path: Path) -> None:
    """Write rows as an unquoted gzip TSV with a fixed (zero) gzip timestamp."""
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(_clean(row[c]) for c in COLUMNS) for row in rows]
    with open(path, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0
    ) as gz:
        gz.write(("\n".join(lines) + "\n").encode("utf-8"))


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_provenance(path: Path, table: Path, rows: list[dict], meta: dict,
                     debs: list[Path], max_terms: int) -> None:
    """Write PROVENANCE.md describing how ``table`` was made."""
    org, go = meta["org"], meta["go"]
    n_pc = sum(r["gene_type"] == "protein-coding" for r in rows)
    with_go = sum(any(r[f"go_{a}"] for a in GO_ASPECTS) for r in rows)
    lines = [
        "# Provenance of `human_gene_knowledge.tsv.gz`",
        "",
        f"Built on {_dt.date.today().isoformat()} by `scripts/build_gene_knowledge.py`.",
        "",
        "Rebuild (from the repository root, on Debian/Ubuntu with the bookworm archive):",
        "",
        "```",
        f"python scripts/build_gene_knowledge.py --max-terms {max_terms}",
        "```",
        "",
        "which runs `apt-get download " + " ".join(PACKAGES) + "`, unpacks them with",
        "`dpkg-deb -x`, and reads `org.Hs.eg.sqlite` and `GO.sqlite` with Python's `sqlite3`.",
        "",
        "## Source packages",
        "",
        "| package | version | sha256 of .deb |",
        "|---|---|---|",
        *[f"| {deb.name.split('_')[0]} | {deb_version(deb)} | `{sha256(deb)}` |" for deb in debs],
        "",
        "## Source data (from the databases' `metadata` tables)",
        "",
        f"- Organism: {org.get('ORGANISM', '?')} (taxon {org.get('TAXID', '?')})",
        f"- Entrez Gene: {org.get('EGSOURCEURL', '?')}, dated {org.get('EGSOURCEDATE', '?')}",
        f"- Gene-to-GO annotations: {org.get('GOEGSOURCENAME', '?')}, dated "
        f"{org.get('GOEGSOURCEDATE', '?')}",
        f"- Ensembl ids: via Entrez Gene, dated {org.get('EGSOURCEDATE', '?')}",
        f"- GO term names (GO.db): {go.get('GOSOURCEURL', '?')}, dated "
        f"{go.get('GOSOURCEDATE', '?')}",
        f"- Schema: {org.get('DBSCHEMA', '?')} {org.get('DBSCHEMAVERSION', '?')}, "
        f"{go.get('DBSCHEMA', '?')} {go.get('DBSCHEMAVERSION', '?')}",
        "",
        "## Result",
        "",
        f"- `{table.name}`: {len(rows)} rows (one per symbol, from "
        f"{meta['n_entrez_genes']} Entrez genes), {n_pc} protein-coding, "
        f"{with_go} with at least one GO term.",
        f"- sha256 `{sha256(table)}`, {table.stat().st_size} bytes.",
        "- Columns: " + ", ".join(f"`{c}`" for c in COLUMNS) + ".",
        "- `ensembl_id`, `aliases`, `map_location`: `|`-joined. GO columns: term names,",
        f"  `; `-joined, at most {max_terms} per aspect, ordered by best evidence tier",
        "  (experimental > TAS/IC > phylogenetic > sequence similarity > NAS > IEA), then",
        "  GO id; `ND` annotations dropped. Missing values are empty strings.",
        "- A symbol shared by several Entrez genes keeps one row: protein-coding first,",
        "  then other typed genes, then other/unknown/biological-region, then lowest Entrez id.",
        "",
        "Licences: NCBI Gene data are public domain; the Gene Ontology is CC BY 4.0",
        "(http://geneontology.org/docs/go-citation-policy/); the Bioconductor packages",
        "are Artistic-2.0.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="where to write the table and PROVENANCE.md")
    parser.add_argument("--deb-dir", type=Path, default=None,
                        help="use .deb files already downloaded here (no apt-get)")
    parser.add_argument("--max-terms", type=int, default=20,
                        help="maximum GO terms per gene and aspect (default 20)")
    args = parser.parse_args(argv)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gene_knowledge_"))
    try:
        debs = find_debs(args.deb_dir) if args.deb_dir else fetch_debs(work)
        org_path, go_path = extract_sqlite(debs, work / "extracted")
        rows, meta = build_rows(org_path, go_path, args.max_terms)
        table = args.out_dir / TABLE_NAME
        write_table(rows, table)
        write_provenance(args.out_dir / "PROVENANCE.md", table, rows, meta, debs,
                         args.max_terms)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {len(rows)} genes to {table} ({table.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
