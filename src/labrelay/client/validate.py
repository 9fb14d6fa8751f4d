"""``labrelay validate``: the send pipeline's reading and validation, with nothing sent."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from labrelay.batch.pipeline import RejectionReport, ReviewFile, Summary, open_reader, run
from labrelay.batch.validate import Validator
from labrelay.client.policy import default_policy_text
from labrelay.clock import SystemClock
from labrelay.domain.policy import parse_policy
from labrelay.refdata import communes, department_regions


def validate_file(
    path: Path,
    *,
    report: Path | None = None,
    policy_text: str | None = None,
    input_format: str = "auto",
    today: date | None = None,
) -> Summary:
    policy = parse_policy(policy_text or default_policy_text())
    fmt, reader = open_reader(path, input_format)
    validator = Validator(
        today=today or SystemClock().now().date(),
        loinc=policy.loinc,
        communes=[c.insee for c in communes()],
        department_regions=department_regions(),
    )
    summary = Summary(
        fmt, ignored_columns=getattr(getattr(reader, "layout", None), "ignored", ()), policy_version=policy.version
    )
    if report is None:
        return run(reader, validator, summary=summary, report=RejectionReport(None), review=ReviewFile(None))
    with report.open("w", encoding="utf-8", newline="") as out:
        return run(reader, validator, summary=summary, report=RejectionReport(out), review=ReviewFile(None))
