"""The demo benchmark (``./dev bench demo``) still runs end to end on a small batch. Its figures are not asserted
(they are measured, in docs/bench/demo.json); what is checked is that it records them all, that its ratio is the one
its own measurements give, and that the demo's plaintext search covered every identifying value of the batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_demo_bench_records_wall_work_and_a_thorough_search(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--records", "200", "--repeat", "1", "--out", str(out), "--work", str(work)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "demo.json").read_text())
    assert report["records"] == 200
    assert report["goal_ratio_at_most"] == 2.0
    [run] = report["runs"]
    assert run["records_read"] == 200
    for key in ("wall_s", "cpu_s", "reported_work_s", "ratio", "relay_bytes_searched"):
        assert report["median"][key] == run[key], key
    assert run["ratio"] == round(run["wall_s"] / run["reported_work_s"], 3)
    assert run["reported_work_s"] == run["timings_s"]["total"] > 0
    assert report["met"] == (run["ratio"] <= 2.0)
    assert set(run["check_timings_s"]) == {"needles", "scan_while_stored", "audit", "scan_after", "minimisation"}
    # Thorough: every identifying value of the batch searched (counted by the bench on its own), in every byte of
    # the relay's files, twice (while the payloads are stored, and after).
    assert run["identifying_values_searched"] == run["identifying_values_of_batch"] > 200
    assert run["relay_bytes_searched"] > 0
