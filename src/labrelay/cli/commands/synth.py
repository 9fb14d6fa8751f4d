"""``labrelay synth``: synthetic lab results for trials and benchmarks."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from labrelay import errors
from labrelay.cli import ui


def synth(
    count: Annotated[int, typer.Argument(min=0, help="Number of records.")],
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[
        str, typer.Option("--format", help="csv (the template), hl7 (ORU^R01) or fhir (NDJSON of Bundles).")
    ] = "csv",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same file).")] = 1,
    defects: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of records given one defect, each listed in OUT.defects.csv."),
    ] = 0.0,
    today: Annotated[str | None, typer.Option(help="Reference day YYYY-MM-DD for sample dates.")] = None,
) -> None:
    """Write COUNT synthetic lab results: realistic French identities, none real (Faker fr_FR, La Poste base)."""
    from labrelay.synthetic.generator import FORMATS, write_file  # noqa: PLC0415 - Faker loads slowly

    if fmt not in FORMATS:
        raise errors.UsageError(f"unknown format {fmt!r}", hint="csv, hl7 or fhir")
    day = date.fromisoformat(today) if today else date.today()  # noqa: DTZ011 - a calendar day is wanted
    written, injected = write_file(out, count, fmt=fmt, seed=seed, today=day, defects=defects)
    extra = f", {injected} with a defect (listed in {out}.defects.csv)" if defects else ""
    ui.out.print(f"wrote {written} synthetic records to {out} ({fmt}){extra}", markup=False)
