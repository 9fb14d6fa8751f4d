"""A complete copy of the relay yields no health data: no NIR, name, e-mail, phone or address of the batch
anywhere in its data directory (database included, whatever the compression) or in its log."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.support.plaintext import needles_of, plaintext_hits
from tests.support.world import run_cli


@pytest.mark.scaled("no plaintext in pg_dump or in any object of the bucket")
@pytest.mark.threat("T1")
def test_relay_holds_no_plaintext_while_stored_or_after(world, cli, batch: Path) -> None:
    needles = needles_of(batch)
    assert len(needles) > 1000
    lab = world.party_dir("lab-paris-01")
    result = cli("send", batch, "--as", lab, "--server", world.url, "--to", "cnam", "--to", "ars-11")
    assert result.code == 0, str(result)
    assert len(world.stored()) == 2
    # Sanity: the scan does find plaintext when it is there (it is not a check that cannot fail).
    planted = world.root / "planted.bin"
    planted.write_bytes(gzip.compress(batch.read_bytes()[:5000]))
    assert plaintext_hits(world.root, needles, extra=()) != []
    planted.unlink()

    # A complete copy: data directory and logs, and at scale the database dump and the bucket's objects.
    copy = world.copy_relay(world.root / "stolen-1")
    assert len(list(copy.rglob("*"))) > 5
    assert plaintext_hits(copy, needles) == []
    for name in ("cnam", "ars-11"):
        fetched = cli("fetch", "--as", world.party_dir(name), "--server", world.url, "--out", world.root / name)
        assert fetched.code == 0, str(fetched)
    assert world.stored() == []
    assert plaintext_hits(world.copy_relay(world.root / "stolen-2"), needles) == []


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = run_cli("demo", "--records", "600", "--workdir", workdir, cwd=tmp_path, timeout=300)
    assert result.code == 0, str(result)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["ok"] is True
    records = summary["records"]
    assert records["read"] == 600
    assert records["reconciled"] is True
    assert records["read"] == records["accepted"] + records["rejected"] + records["held_for_review"]
    recipients = summary["recipients"]
    assert {"cnam", "spf", "ars-11", "ars-84", "ars-94", "ars-04"} <= set(recipients)
    # SpF gets every valid record (held ones too: only a regional share no ARS covers is held), each ARS its own.
    assert recipients["spf"]["records_sent"] == records["accepted"] + records["held_for_review"]
    assert sum(r["records_sent"] for n, r in recipients.items() if n.startswith("ars-")) == records["accepted"]
    for name, item in recipients.items():
        assert item["records_received"] == item["records_sent"], name
        if item["records_sent"]:
            assert item["receipt"] == "decrypted"
            assert (workdir / item["output"]).is_file()
    checks = summary["checks"]
    assert checks["minimisation"] == {"ok": True, "problems": []}
    assert checks["payloads_left_on_relay"] == 0
    assert checks["plaintext_files_on_relay_after"] == checks["plaintext_files_on_relay_while_stored"] == []
    assert summary["audit"]["chain_ok"] is True
    # Every recipient and the DPO holds a hybrid post-quantum key (T43): the shipped policy requires it.
    assert set(checks["age_keys"]) == {"post-quantum"}
    assert set(checks["age_keys"]["post-quantum"]) == set(recipients) | {"dpo-lab"}
    assert "post-quantum (ML-KEM-768 + X25519): every recipient and the DPO" in result.out
    assert "result      OK" in result.out
    # An independent look at the relay's data: nothing of the batch.
    needles = needles_of(workdir / "lab" / "results.csv")
    assert plaintext_hits(workdir / "relay", needles) == []
    # A second run in the same directory starts afresh; a non-demo directory is never touched.
    assert run_cli("demo", "--records", "50", "--workdir", workdir, cwd=tmp_path).code == 0
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.txt").write_text("do not delete")
    refused = run_cli("demo", "--workdir", other, cwd=tmp_path)
    assert refused.code == 2
    assert (other / "thesis.txt").exists()
