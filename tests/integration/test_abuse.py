"""Load and abuse at once (issue 18): one enrolled lab stalling uploads, outsiders holding idle and half-sent
connections, sending oversized signature headers and flooding console sign-ins, while another lab sends, a recipient
fetches and an administrator freezes and unfreezes. Every legitimate request is answered, nothing is lost, and the
operators are alerted. docs/threat-model.md, "Denial of service"."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from labrelay.domain.admin import AdminAction
from labrelay.domain.parties import Role
from tests.integration.test_relay_limits import FAST, audit
from tests.support.abuse import Abuse, admin_command, uploading_transfer
from tests.support.world import make_world, positives_in, sent_ids

ABUSE_SECONDS = 20.0
ANSWERED = 5.0


@pytest.mark.threat("T28")
def test_legitimate_parties_are_served_while_the_relay_is_abused(
    tmp_path: Path, relay_factory, cli, batch: Path
) -> None:
    world = make_world(tmp_path, relay_factory, settings=FAST)
    world.add("ops-admin", Role.ADMIN)
    world.add("lab-lyon-02", Role.LAB)
    transfer_id, ciphertext = uploading_transfer(world, tmp_path)  # the abusive lab's own upload
    lab = world.parties["lab-paris-01"]
    attack = Abuse(world.url, lab.name, lab.signing_key, transfer_id, ciphertext[:4096]).start()
    started = time.monotonic()
    try:
        time.sleep(3)  # the attack is in full swing
        sent = cli("send", batch, "--as", world.party_dir("lab-lyon-02"), "--server", world.url, "--to", "cnam")
        assert sent.code == 0, str(sent)
        sent_id = sent_ids(sent.out)["cnam"]
        for action in (AdminAction.FREEZE, AdminAction.UNFREEZE):
            result, took = admin_command(world, action)
            assert result["changed"]
            assert took < ANSWERED, f"{action.value} took {took:.1f} s under attack"
        out = tmp_path / "fetched"
        fetched = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
        assert fetched.code == 0, str(fetched)
        assert sent_id[:8] in fetched.out or sent_id in fetched.out
        time.sleep(max(0.0, ABUSE_SECONDS - (time.monotonic() - started)))
    finally:
        attack.stop()

    # Nothing lost: every positive of the batch reached CNAM, and its receipt went back.
    rows = [
        row
        for f in out.glob("*.csv")
        for row in csv.DictReader(f.read_text(encoding="utf-8").splitlines(), delimiter=";")
    ]
    assert len(rows) == positives_in(batch)
    [(state,)] = world.db("SELECT state FROM transfers WHERE id = :id", id=sent_id)
    assert state == "delivered"

    # The attack met the limits, and nothing else: no attacker thread died on an error, no request failed inside.
    counts = attack.counts
    assert not any(k.startswith("died") for k in counts.get("attacker", {})), counts
    assert counts["slow-senders"]["429"] > 0, counts["slow-senders"]
    assert counts["slow-senders"]["closed"] + counts["slow-senders"]["408"] > 0, counts["slow-senders"]
    assert counts["idle"]["closed"] >= 150, counts["idle"]
    assert counts["half-sent"]["closed"] >= 150, counts["half-sent"]
    assert set(counts["oversized"]) <= {"431", "400", "closed"}, counts[
        "oversized"
    ]  # 400: h11, a partial section over 16 KiB
    assert counts["oversized"]["431"] > 0
    assert counts["sign-in"]["429"] > 0, counts["sign-in"]
    assert not world.db("SELECT count(*) FROM audit_events WHERE event = 'request:error'")[0][0]
    assert "Traceback" not in world.relay.log_text()

    # The operators were told: the limits reached are alerts, each once per subject and cooldown.
    subjects = {str(d.get("subject")) for _, d in audit(world, "alert:raise")}
    assert "uploads-per-party:lab-paris-01" in subjects, subjects
    assert "headers:127.0.0.1" in subjects, subjects
