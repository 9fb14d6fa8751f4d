"""Reference data shipped in ``labrelay/data`` (sources and licences in its README.md)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class Commune:
    insee: str  # INSEE commune code, 5 characters (2A/2B for Corsica, 97x for overseas)
    name: str
    postal_code: str


def _read(name: str) -> str:
    return resources.files("labrelay.data").joinpath(name).read_text(encoding="utf-8")


@cache
def communes() -> tuple[Commune, ...]:
    """Distinct (INSEE code, postal code) pairs of La Poste's base, in file order."""
    seen: set[tuple[str, str]] = set()
    out = []
    for row in csv.DictReader(io.StringIO(_read("laposte_hexasmal.csv")), delimiter=";"):
        key = (row["Code_commune_INSEE"], row["Code_postal"])
        if key in seen:
            continue
        seen.add(key)
        out.append(Commune(insee=key[0], name=row["Nom_commune"], postal_code=key[1]))
    return tuple(out)


@cache
def department_regions() -> dict[str, str]:
    """Department code (``01``, ``2A``, ``974``) → INSEE region code (``84``, ``94``, ``04``)."""
    out = {}
    for row in csv.DictReader(io.StringIO(_read("departement2020.csv"))):
        dep = row["dep"]
        out[dep.zfill(2) if dep.isdigit() else dep] = row["reg"].zfill(2)
    return out


def department_of(insee: str) -> str:
    """The department of an INSEE commune code: 3 characters overseas (97x), else 2."""
    return insee[:3] if insee.startswith("97") else insee[:2]
