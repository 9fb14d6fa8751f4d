"""Searching a copy of the relay for the batch's plaintext: every identifying value, in the cases a search would
try, in each file's bytes and whatever a decompressor makes of them."""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

SENSITIVE = ("nir", "nom", "prenom", "email", "telephone", "adresse", "prescripteur_nom", "prescripteur_telephone")
CODECS: tuple[Callable[[bytes], bytes], ...] = (gzip.decompress, bz2.decompress, lzma.decompress, zlib.decompress)


def needles_of(batch: Path) -> set[bytes]:
    """Every identifying value of the batch, as bytes, in the cases a search would try."""
    found: set[bytes] = set()
    with batch.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            for column in SENSITIVE:
                value = row[column]
                parts = [value] + (value.split() if column in ("prescripteur_nom",) else [])
                for part in parts:
                    if len(part) >= 6 and part not in ("Dr",):
                        for variant in {part, part.upper(), part.lower()}:
                            found.add(variant.encode("utf-8"))
    return found


def views(path: Path) -> Iterator[tuple[str, bytes]]:
    """The file's bytes, and whatever a decompressor makes of them."""
    data = path.read_bytes()
    yield "raw", data
    for codec in CODECS:
        try:
            yield codec.__module__, codec(data)
        except Exception:  # noqa: BLE001, S112 - most files are not compressed: that is the expected case
            continue


def plaintext_hits(root: Path, needles: set[bytes], extra: tuple[Path, ...] = ()) -> list[str]:
    hits = []
    files = [p for p in root.rglob("*") if p.is_file()] + list(extra)
    assert files, f"nothing to scan under {root}"
    for path in files:
        for how, data in views(path):
            for needle in needles:
                if needle in data:
                    hits.append(f"{path.name} ({how}): {needle[:4]!r}…")
                    break
    return hits
