"""``labrelay validate``: the send pipeline's reading, validation and routing, counted, with nothing sent."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import date
from pathlib import Path
from typing import TextIO

from labrelay.batch.csv_reader import Batch
from labrelay.batch.pipeline import RejectionReport, ReviewFile, Summary, open_reader, run
from labrelay.batch.route import Router, destinations
from labrelay.batch.validate import Validator
from labrelay.domain.policy import Policy
from labrelay.refdata import communes, department_regions


def expected_records(path: Path, sample: int = 1 << 20) -> int | None:
    """About how many records a CSV file holds, for a progress bar's total, from its size and its first MiB's
    lines (no second pass over the file); None when it is not one record per line (HL7, FHIR)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(sample)
        size = path.stat().st_size
    except OSError:
        return None
    start = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if not head or start.startswith(b"{") or start[:3] in (b"MSH", b"FHS", b"BHS"):
        return None
    lines = head.count(b"\n") + (0 if head.endswith(b"\n") else 1)
    total = lines if len(head) == size else round(size * lines / len(head))
    return max(total - 1, 0)


def validate_file(
    path: Path,
    policy: Policy,
    *,
    today: date,
    report: TextIO | None = None,
    input_format: str = "auto",
    enrolled: Collection[str] | None = None,
    on_batch: Callable[[Batch], None] | None = None,
) -> Summary:
    """Read and check every record of ``path`` under ``policy``, and count where each would go: to the recipients
    in ``enrolled`` (the directory in force, for a preview against a relay), or to every recipient the policy names
    when ``enrolled`` is None. Rejections go to ``report`` (``record,field,reason``) when given."""
    fmt, reader = open_reader(path, input_format)
    regions = set(department_regions().values())
    validator = Validator(
        today=today,
        loinc=policy.loinc,
        communes=[c.insee for c in communes()],
        department_regions=department_regions(),
    )
    layout = getattr(reader, "layout", None)
    summary = Summary(
        fmt,
        ignored_columns=getattr(layout, "ignored", ()),
        missing_columns=getattr(layout, "missing", ()),
        policy_version=policy.version,
    )
    names = enrolled if enrolled is not None else {d.name for d in destinations(policy, regions)}
    router = Router(policy, regions, names, count_only=True)
    return run(
        reader,
        validator,
        summary=summary,
        report=RejectionReport(report),
        review=ReviewFile(None),
        router=router,
        on_batch=on_batch,
    )
