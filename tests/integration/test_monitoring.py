"""Delivery monitoring on a real relay process (issue 20, part 4): a payload that expires undelivered and a recipient
that does not fetch while payloads wait raise alerts that reach a real webhook receiver; the backlog gauges on
/metrics say what waits for whom, the same on every replica; ``labrelay receipts --batch`` counts each batch."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from labrelay.operations import audit_export
from tests.support.alerting import webhook
from tests.support.world import Scaled, World, make_world, sent_ids

ALERT_KEYS = {"type", "rule", "subject", "at", "count", "threshold", "window_seconds", "locked", "audit_seq", "summary"}
FAST = {"reaper_interval": '"1s"', "alert_no_fetch_after": '"2s"'}


def _recorded(world: World, alert: dict) -> dict:
    """The alert's own audit record (``alert:raise``), by its sequence number."""
    [rec] = [d for d in audit_export(world.relay.data, after=alert["audit_seq"] - 1) if d["seq"] == alert["audit_seq"]]
    assert (rec["event"], rec["reason"]) == ("alert:raise", alert["rule"]), rec
    return rec


@pytest.mark.scaled("at scale the leading worker raises them, from the audit log every replica writes")
def test_a_recipient_that_does_not_fetch_and_its_expired_payload_raise_alerts(
    tmp_path: Path, relay_factory, cli, batch: Path, deployment: Scaled | None
) -> None:
    with webhook() as (hook, posts):
        settings = {**FAST, "alert_webhook": f'"{hook}"'}
        world = make_world(tmp_path / "w", relay_factory, settings=settings, scaled=deployment)
        lab = world.party_dir("lab-paris-01")
        sent = cli("send", batch, "--as-is", "--to", "cnam", "--ttl", "6s", "--as", lab, "--server", world.url)
        assert sent.code == 0, str(sent)
        transfer = sent_ids(sent.out)["cnam"]

        # cnam never lists its inbox: 2 s after its payload became available, a no-fetch alert names it.
        found = posts.wait_for(lambda a: a["rule"] == "no-fetch", timeout=30)
        assert found is not None, "no no-fetch alert at the webhook"
        _, silent = found
        assert set(silent) == ALERT_KEYS, silent
        assert (silent["subject"], silent["count"], silent["locked"]) == ("cnam", 1, False)
        assert silent["window_seconds"] >= 2
        assert "cnam has not listed its inbox" in silent["summary"]
        rec = _recorded(world, silent)
        assert (rec["details"]["recipient"], rec["details"]["last_listed"]) == ("cnam", None)

        # Its deadline passes: the reaper expires it, and an undelivered alert names the transfer and its sender.
        found = posts.wait_for(lambda a: a["rule"] == "undelivered", timeout=30)
        assert found is not None, "no undelivered alert at the webhook"
        _, expired = found
        assert set(expired) == ALERT_KEYS, expired
        assert (expired["subject"], expired["count"]) == ("cnam", 1)
        assert transfer in expired["summary"]
        assert "lab-paris-01" in expired["summary"]
        rec = _recorded(world, expired)
        assert rec["transfer_id"] == transfer
        assert (rec["details"]["transfers"], rec["details"]["senders"]) == (transfer, "lab-paris-01")

    alerts = world.db("SELECT reason, COUNT(*) FROM audit_events WHERE event = 'alert:raise' GROUP BY reason")
    # One of each: nobody else had anything waiting, and the cooldowns held back repeats.
    assert dict(alerts) == {"no-fetch": 1, "undelivered": 1}, alerts


def _gauges(world: World) -> dict[str, float]:
    text = httpx.get(f"{world.url}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        m = re.fullmatch(
            r'(labrelay_(?:backlog_transfers|backlog_bytes|stored_bytes))(?:\{recipient="([^"]+)"\})? (\S+)', line
        )
        if m:
            found[m[1] + (f":{m[2]}" if m[2] else "")] = float(m[3])
    return found


def _wait_gauges(world: World, expected: dict[str, float]) -> dict[str, float]:
    """Scrape until the gauges say ``expected`` (they are cached a few seconds), or give up after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        seen = _gauges(world)
        if all(seen.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


@pytest.mark.scaled("the gauges come from the shared database: every replica reports the same backlog")
def test_backlog_gauges_and_receipts_per_batch_after_a_partial_delivery(world: World, cli, batch: Path) -> None:
    lab = world.party_dir("lab-paris-01")
    both = cli("send", batch, "--to", "cnam", "--to", "ars-11", "--as", lab, "--server", world.url)
    assert both.code == 0, str(both)
    again = cli("send", batch, "--again", "--to", "cnam", "--as", lab, "--server", world.url)
    assert again.code == 0, str(again)
    got = cli("fetch", "--as", world.party_dir("ars-11"), "--server", world.url, "--out", world.root / "in")
    assert got.code == 0, str(got)

    sizes = dict(world.db("SELECT id, size FROM transfers WHERE recipient = 'cnam'"))
    assert len(sizes) == 2
    expected = {
        "labrelay_backlog_transfers:cnam": 2,
        "labrelay_backlog_transfers:ars-11": 0,  # every recipient of the directory has a series: 0 when nothing waits
        "labrelay_backlog_bytes:cnam": sum(sizes.values()),
        "labrelay_backlog_bytes:ars-11": 0,
        "labrelay_stored_bytes": sum(sizes.values()),  # ars-11's payload was deleted on its receipt
    }
    for _ in range(2):  # at scale, two scrapes through the balancer: one per replica
        seen = _wait_gauges(world, expected)
        assert {k: seen.get(k) for k in expected} == expected, seen
    assert not any("lab-paris-01" in name or "dpo" in name for name in seen), seen  # only recipients are labels

    result = cli("receipts", "--batch", "--json", "--as", lab, "--server", world.url)
    assert result.code == 0, str(result)
    doc = json.loads(result.out)
    batches = {b["batch_id"]: b for b in doc["batches"]}
    assert (len(batches), len(doc["transfers"])) == (2, 3)
    first = next(b for b in batches.values() if b["total"] == 2)
    second = next(b for b in batches.values() if b["total"] == 1)
    assert (first["delivered"], first["waiting"], first["refused"], first["expired"]) == (1, 1, 0, 0), first
    assert (second["delivered"], second["waiting"]) == (0, 1), second
    # newest first (two sends within one second: by batch id)
    assert doc["batches"] == sorted(doc["batches"], key=lambda b: (b["created"], b["batch_id"]), reverse=True)

    one = cli("receipts", "--batch", "--batch-id", first["batch_id"][:8], "--as", lab, "--server", world.url)
    assert one.code == 0, str(one)
    lines = one.out.splitlines()
    assert lines[0].startswith(f"batch {first['batch_id'][:8]} ")
    assert "1 of 2 delivered (1 waiting)" in lines[0]
    assert [line[:2] for line in lines[1:]] == ["  ", "  "], one.out
    unknown = cli("receipts", "--batch", "--batch-id", "ffffffff-no", "--as", lab, "--server", world.url)
    assert unknown.code == 2, str(unknown)
