"""The delivery monitor's rules on a relay with a manual clock (labrelay.relay.monitoring): which expiries are
undelivered payloads, what counts as fetching, the cooldowns; and the batch tallies the console and the CLI show."""

from __future__ import annotations

from datetime import timedelta

import pytest

from labrelay.domain.delivery import BatchTally, delivery_outcome
from labrelay.domain.parties import Role
from labrelay.domain.transfers import QuarantineReason
from tests.support.relay_setup import T0, Member, Setup

DAY = timedelta(hours=24)
POLICY = "fr-covid-2026.3"  # the shipped policy, in force: only cnam may receive documents sent unparsed


def _alerts(setup: Setup, rule: str) -> list:
    return [a for a in setup.relay.detector.raised if a.rule == rule]


def _members(setup: Setup) -> tuple[Member, Member, Member]:
    return (
        setup.member("lab-1", Role.LAB),
        setup.member("cnam", Role.RECIPIENT),
        setup.member("spf", Role.RECIPIENT),
    )


def test_no_fetch_counts_from_the_later_of_the_last_listing_and_the_oldest_wait(setup: Setup) -> None:
    lab, cnam, _ = _members(setup)
    monitor = setup.relay.monitor
    envelope, data = setup.seal(lab, cnam, b"x" * 500, ttl=timedelta(days=7))
    setup.upload(lab, envelope, data)
    setup.clock.advance(DAY - timedelta(hours=1))
    assert monitor.run() == 0  # waiting 23 h: not yet
    setup.relay.services.delivery.inbox(cnam.caller)  # cnam's job lists its inbox: it is alive
    setup.clock.advance(timedelta(hours=2))
    assert monitor.run() == 0  # 25 h since the payload arrived, 2 h since cnam listed
    setup.clock.advance(DAY)
    assert monitor.run() == 1  # 26 h since cnam listed, while the payload waited
    [alert] = _alerts(setup, "no-fetch")
    assert (alert.subject, alert.count, alert.window_seconds) == ("cnam", 1, int(DAY.total_seconds()))
    setup.clock.advance(timedelta(hours=1))
    assert monitor.run() == 0  # not again before another alert_no_fetch_after
    assert not any(a.subject == "spf" for a in setup.relay.detector.raised)  # nothing waits for it


def test_a_listing_of_another_box_or_party_is_not_a_fetch(setup: Setup) -> None:
    lab, cnam, _ = _members(setup)
    envelope, data = setup.seal(lab, cnam, b"x" * 500)
    setup.upload(lab, envelope, data)
    setup.clock.advance(DAY)
    setup.relay.services.delivery.outbox(lab.caller)
    setup.relay.services.delivery.inbox(lab.caller)
    setup.clock.advance(timedelta(seconds=1))
    assert setup.relay.monitor.run() == 1
    assert _alerts(setup, "no-fetch")[0].subject == "cnam"


def test_only_payloads_left_waiting_expire_undelivered(setup: Setup) -> None:
    lab, cnam, ars = _members(setup)
    ttl = timedelta(hours=1)
    kept = {}
    for name, to in (("waiting", cnam), ("delivered", cnam), ("held", cnam), ("other", ars)):
        envelope, data = setup.seal(lab, to, b"x" * 500, ttl=ttl, policy_version=POLICY)
        setup.upload(lab, envelope, data)
        kept[name] = envelope
    uploading, data = setup.seal(lab, cnam, b"x" * 500, ttl=ttl)  # never finished: its sender's problem
    setup.relay.services.uploads.create(lab.caller, uploading)
    setup.relay.services.delivery.accept_receipt(
        cnam.caller, kept["delivered"]["payload"]["transfer_id"], setup.receipt(cnam, kept["delivered"])
    )
    setup.relay.sql.transfers.quarantine(
        [kept["held"]["payload"]["transfer_id"]], setup.clock.now(), QuarantineReason.ADMIN
    )
    setup.clock.advance(ttl + timedelta(seconds=1))
    assert setup.relay.services.reaper.run_once().expired == 4  # waiting, held, other, uploading
    assert setup.relay.monitor.run() == 2
    by_subject = {a.subject: a for a in _alerts(setup, "undelivered")}
    assert set(by_subject) == {"cnam", "spf"}
    assert by_subject["cnam"].count == 1
    assert kept["waiting"]["payload"]["transfer_id"] in by_subject["cnam"].summary
    assert kept["held"]["payload"]["transfer_id"] not in by_subject["cnam"].summary


def test_undelivered_alerts_wait_out_their_cooldown_and_count_what_expired_meanwhile(setup: Setup) -> None:
    lab, cnam, _ = _members(setup)
    for ttl in (timedelta(hours=1), timedelta(hours=1, minutes=1), timedelta(hours=1, minutes=2)):
        envelope, data = setup.seal(lab, cnam, b"x" * 500, ttl=ttl)
        setup.upload(lab, envelope, data)
    setup.clock.advance(timedelta(hours=1, seconds=1))
    setup.relay.services.reaper.run_once()
    assert setup.relay.monitor.run() == 1
    for _ in range(2):
        setup.clock.advance(timedelta(minutes=1))
        setup.relay.services.reaper.run_once()
        assert setup.relay.monitor.run() == 0  # within alert_cooldown (5 min): kept, not lost
    setup.clock.advance(timedelta(minutes=5))
    assert setup.relay.monitor.run() == 1
    assert [a.count for a in _alerts(setup, "undelivered")] == [1, 2]


def test_batches_count_each_transfer_by_its_outcome(setup: Setup) -> None:
    lab, cnam, ars = _members(setup)
    batch = "0b0b0b0b-0000-4000-8000-000000000001"
    sent = []
    for to in (cnam, ars):
        envelope, data = setup.seal(lab, to, b"x" * 500, batch_id=batch, policy_version=POLICY)
        setup.upload(lab, envelope, data)
        sent.append(envelope)
    setup.relay.services.delivery.accept_receipt(
        ars.caller, sent[1]["payload"]["transfer_id"], setup.receipt(ars, sent[1])
    )
    [tally] = setup.relay.sql.transfers.batches(10)
    assert (tally.batch_id, tally.sender, tally.total, tally.delivered) == (batch, "lab-1", 2, 1)
    assert tally.as_dict()["waiting"] == 1
    assert tally.line().endswith("1 of 2 delivered (1 waiting)")
    assert setup.relay.sql.transfers.batches(10, sender="someone-else") == []
    overview = setup.relay.services.console.overview()
    assert (overview["batches"][0]["delivered"], overview["batches"][0]["total"]) == (1, 2)


def test_a_refused_or_expired_transfer_is_counted_once() -> None:
    assert delivery_outcome("available", refused=True, held=True) == "refused"
    assert delivery_outcome("expired", refused=True, held=True) == "refused"
    assert delivery_outcome("expired", refused=False, held=False) == "expired"
    assert delivery_outcome("available", refused=False, held=True) == "held"
    assert delivery_outcome("uploading", refused=False, held=False) == "waiting"
    assert delivery_outcome("cancelled", refused=False, held=False) == "failed"
    assert BatchTally("b", "lab", T0, {}).total == 0


def test_an_undelivered_alert_that_cannot_be_raised_is_kept_for_the_next_pass(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab, cnam, _ = _members(setup)
    for ttl in (timedelta(hours=1), timedelta(hours=1, minutes=1)):
        envelope, data = setup.seal(lab, cnam, b"x" * 500, ttl=ttl)
        setup.upload(lab, envelope, data)
    setup.clock.advance(timedelta(hours=1, minutes=2))
    setup.relay.services.reaper.run_once()
    monitor = setup.relay.monitor
    emit = monitor._alerts.emit
    monkeypatch.setattr(monitor._alerts, "emit", lambda *a, **k: (_ for _ in ()).throw(OSError("audit down")))
    assert monitor.run() == 0  # the audit trail refused the alert: nothing raised, nothing lost
    monkeypatch.setattr(monitor._alerts, "emit", emit)
    assert monitor.run() == 1  # the next pass raises it, at once (no cooldown was spent), counting both
    assert [a.count for a in _alerts(setup, "undelivered")] == [2]
