"""The post-quantum cost benchmark (``./dev bench pq``) still runs end to end, on a small batch and a small file: two
real relays, the CLI's send and fetch with hybrid and with classic keys, the age format in fresh processes. Its
figures are not asserted (they are measured, in docs/bench/pq.json); what is checked is that both worlds delivered
every record, that each used the keys it claims, and that the ratios it reports are the ones its own measurements
give."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_pq_bench_runs_both_worlds_and_the_age_format(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--records", "600", "--repeat", "1", "--control", "--age-mb", "2", "--out", str(out), "--work", str(work)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "pq", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "pq.json").read_text())

    transfer = report["transfer"]
    assert transfer["batch_records"] == 600
    # Every record reached the 20 recipients in both worlds (spf alone gets each accepted one).
    assert transfer["records_delivered"] > 600
    assert transfer["hybrid"]["recipient_prefix"] == "age1pq1"
    hybrid, classic, control = transfer["hybrid"], transfer["classic"], transfer["classic_control"]
    assert control["recipient_prefix"] == classic["recipient_prefix"] == "age1 (X25519)"
    for world in (hybrid, classic, control):
        [only] = world["each_round"]
        assert world["send_fetch_s"] == only["send_fetch_s"] == round(only["send_s"] + only["fetch_s"], 2)
    assert transfer["ratio"]["send_fetch"] == round(hybrid["send_fetch_s"] / classic["send_fetch_s"], 3)
    assert transfer["control_ratio"]["cpu"] == round(control["cpu_s"] / classic["cpu_s"], 3)
    assert transfer["met"] == (transfer["ratio"]["send_fetch"] <= 1.05)

    age = report["age"]
    assert age["bytes"] == 2 << 20
    expected = {
        f"{op} {impl} {kind}"
        for op in ("encrypt", "decrypt")
        for impl in ("ours", "ours-bare")
        for kind in ("classic", "hybrid")
    }
    if importlib.util.find_spec("pyrage") is not None:
        expected |= {f"{op} {impl} classic" for op in ("encrypt", "decrypt") for impl in ("pyrage", "pyrage-bare")}
    assert set(age["results"]) == expected
    for result in age["results"].values():
        assert result["mb_per_s"] > 0
        assert result["tracemalloc_peak_mib"] is not None
        assert result["tracemalloc_peak_mib_small"] is not None
    # The hybrid header is the larger one (a 1,120-byte encapsulation), and it is paid once per payload.
    assert age["header"]["hybrid"]["header_bytes"] > age["header"]["classic"]["header_bytes"] + 1000
