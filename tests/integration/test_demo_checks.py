"""The demo's plaintext check is not a check that cannot fail: a row of the batch planted in the relay's data
directory while the payloads are stored is reported by both scans, by file, and the demo's result is FAILED."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labrelay.cli import demo, ui

pytestmark = pytest.mark.slow


def test_the_demo_reports_plaintext_planted_in_the_relays_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    send = demo._send_batch

    def send_then_plant(lab: Any, url: str, source: Path, *args: Any) -> Any:
        routed = send(lab, url, source, *args)
        row = source.read_bytes().splitlines()[1]  # one record of the batch, as the lab's CSV has it
        (source.parent.parent / "relay" / "leak").mkdir()
        (source.parent.parent / "relay" / "leak" / "row.log").write_bytes(b"debug: " + row + b"\n")
        return routed

    monkeypatch.setattr(demo, "_send_batch", send_then_plant)
    with ui.TerminalProgress(quiet=True) as progress:
        summary = demo.run_demo(tmp_path / "demo", None, 40, False, progress)
    checks = summary["checks"]
    assert checks["plaintext_files_on_relay_while_stored"] == ["leak/row.log"]
    assert checks["plaintext_files_on_relay_after"] == ["leak/row.log"]
    assert checks["identifying_values_searched"] > 40
    assert summary["ok"] is False
    # everything else held: the plaintext check alone failed the demo
    assert checks["minimisation"]["ok"] is True
    assert checks["received_equals_sent"] is True
    assert summary["audit"]["chain_ok"] is True
