"""Appending result rows to a benchmark TSV (header written with the first row)."""

from __future__ import annotations

import csv
from pathlib import Path


def append_row(path: Path, columns: list[str], row: dict) -> None:
    """Append ``row`` to the TSV at ``path`` (created with a header if missing) and echo it."""
    new = not path.exists()
    with path.open("a", newline="") as handle:
        # Plain newlines: "\r\n" (csv's default) breaks rows that shell tools append to later.
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t", lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)
    print("\t".join(str(row[c]) for c in columns), flush=True)
