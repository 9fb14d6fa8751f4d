"""``labrelay admin``: the operator's commands on a relay's data directory (running or stopped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from labrelay.cli import ui
from labrelay.clock import SystemClock
from labrelay.errors import RetentionViolation

DataOpt = Annotated[Path, typer.Option("--data", help="The relay's data directory.")]


def register_admin(app: typer.Typer) -> None:
    admin_app = typer.Typer(help="Operate a relay's data directory: retention proof, reaper.", no_args_is_help=True)
    app.add_typer(admin_app, name="admin")

    @admin_app.command("retention-check")
    def retention_check(
        data: DataOpt,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Prove that nothing outlives its deadline: no payload past it, no epoch key past its epoch, no orphan.
        Reads only; works on a stopped relay. Exit 0 when every check holds, 3 otherwise."""
        from labrelay.runtime import retention_report  # noqa: PLC0415

        report = retention_report(data, SystemClock())
        if as_json:
            ui.out.print(json.dumps(report.as_dict(), indent=2), markup=False)
        else:
            for finding in report.findings:
                mark = "ok  " if finding.ok else "FAIL"
                ui.out.print(f"{mark} {finding.check}: {finding.detail}", markup=False)
                for item in finding.items:
                    ui.out.print(f"       {item}", markup=False)
            oldest = report.oldest
            ui.out.print(
                f"payloads on the relay: {report.payloads}"
                + (
                    f"; oldest {oldest['transfer_id']}, {oldest['age']} old, deadline {oldest['deadline']}"
                    if oldest
                    else ""
                ),
                markup=False,
            )
        failures = report.failures()
        if failures:
            raise RetentionViolation(
                "retention check failed: " + "; ".join(f"{f.check}: {f.detail}" for f in failures),
                hint="docs/retention.md says what each check means and what to do",
            )

    @admin_app.command("reap")
    def reap(data: DataOpt) -> None:
        """Run one reaper pass now: expire transfers past their deadline, delete their bytes and whatever a
        crash left, destroy epoch keys whose epoch has ended. Safe while the relay runs."""
        from labrelay.runtime import reap_once  # noqa: PLC0415

        result = reap_once(data, SystemClock())
        ui.out.print(
            f"expired {result['expired']}, repaired {result['repaired']}, epoch keys destroyed "
            f"{result['keys_destroyed']}, leftovers removed {result['leftovers']}",
            markup=False,
        )
