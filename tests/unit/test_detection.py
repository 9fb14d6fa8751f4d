"""Detection rules on the live audit stream, with a manual clock (days of history without sleeping), and the kill
switch's signed commands: each rule trips exactly when it should, each refusal fails closed."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

import pytest

from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import SigningKey
from labrelay.domain.admin import AdminAction, AdminCommand
from labrelay.domain.audit import AuditEvent
from labrelay.domain.detection import RULES, parse_lock_on
from labrelay.domain.names import AUTHORITY_KEYID, new_id
from labrelay.domain.parties import Role
from labrelay.errors import NotFound, PartyLocked, PartyRevoked, PermissionDenied, ReplayDetected, UsageError
from labrelay.notify import WebhookSink
from labrelay.relay import detector as detector_module
from labrelay.relay.alerts import Alert, AlertDispatcher, AlertQueue
from labrelay.relay.auth import Caller
from labrelay.relay.detector import DetectionRules, Detector
from tests.support.alerting import webhook
from tests.support.relay_setup import Setup, read_all, request


class RecordedAlerts:
    """An alert queue that keeps what it is given (the detector's ``AlertQueue`` port)."""

    def __init__(self) -> None:
        self.submitted: list[Alert] = []

    def submit(self, alert: Alert) -> None:
        self.submitted.append(alert)


def fresh_detector(setup: Setup, rules: DetectionRules, alerts: AlertQueue | None = None) -> Detector:
    """A detector with test thresholds, in place of the one the runtime wired."""
    services = setup.relay.services
    det = Detector(rules, services.auditor, services.control, alerts or RecordedAlerts())
    if setup.relay.detector is not None:
        services.auditor.unsubscribe(setup.relay.detector)
    for previous in setup.detectors:
        services.auditor.unsubscribe(previous)
    setup.detectors.append(det)
    services.auditor.subscribe(det)
    return det


def rule_names(det: Detector) -> list[str]:
    return [a.rule for a in det.raised]


def test_every_rule_has_a_summary_and_lock_on_is_checked() -> None:
    assert set(detector_module._SUMMARIES) == set(RULES)
    assert parse_lock_on("enumeration, volume") == {"enumeration", "volume"}
    assert parse_lock_on("none") == frozenset()
    with pytest.raises(ValueError, match="unknown rules"):
        parse_lock_on("enumeration,everything")
    with pytest.raises(ValueError, match="proves nobody"):
        parse_lock_on("bad-signatures")
    with pytest.raises(ValueError, match="captured the request"):
        parse_lock_on("replay")


@pytest.mark.threat("T18")
def test_volume_ten_times_the_usual_raises_an_alert_at_the_webhook(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    # the floor is over one payload (4,000 bytes sealed to a hybrid key: 5,659), so that the first day stays quiet
    rules = DetectionRules(volume_floor=10_000, volume_factor=10, volume_history=7, volume_window=timedelta(days=1))
    with webhook() as (hook, posts):
        dispatcher = AlertDispatcher([WebhookSink(hook)])
        det = fresh_detector(setup, rules, dispatcher)

        def pull(n: int) -> None:
            for _ in range(n):
                envelope, data = setup.seal(lab, cnam, b"r" * 4000)
                setup.upload(lab, envelope, data)
                read_all(setup, cnam, envelope["payload"]["transfer_id"])

        for _ in range(7):  # a week of one payload a day: the usual volume
            pull(1)
            setup.clock.advance(timedelta(days=1))
        pull(9)  # nine times the usual: still quiet
        assert "volume" not in rule_names(det)
        pull(2)  # eleven: over ten times
        assert rule_names(det) == ["volume"]
        alert = det.raised[0]
        assert alert.subject == "cnam"
        assert alert.locked is False  # volume is not in detect_lock_on by default
        found = posts.wait_for(lambda a: a["rule"] == "volume", timeout=5)
        assert found is not None
        assert found[1]["subject"] == "cnam"
        dispatcher.close()


def test_volume_rule_can_lock_and_the_lock_holds(setup: Setup) -> None:
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    fresh_detector(setup, DetectionRules(volume_floor=10_000, lock_on=frozenset({"volume"})))
    for _ in range(4):
        envelope, data = setup.seal(lab, cnam, b"r" * 4000)
        setup.upload(lab, envelope, data)
        read_all(setup, cnam, envelope["payload"]["transfer_id"])
    auth = setup.relay.services.auth
    with pytest.raises(PartyLocked):
        auth.authenticate(request(cnam, cnam.signing, setup.clock.now()), has_body=False)


@pytest.mark.threat("T18")
def test_enumeration_counts_within_the_window_only(setup: Setup) -> None:
    cnam = setup.member("cnam", Role.RECIPIENT)
    det = fresh_detector(setup, DetectionRules(probes=5, window=timedelta(minutes=1)))
    delivery = setup.relay.services.delivery
    for _ in range(20):  # 4 probes a minute: never 5 in one window
        for _ in range(4):
            with pytest.raises(NotFound):
                delivery.open_payload(cnam.caller, new_id())
        setup.clock.advance(timedelta(seconds=61))
    assert det.raised == []
    for _ in range(5):
        with pytest.raises(NotFound):
            delivery.open_payload(cnam.caller, new_id())
    assert rule_names(det) == ["enumeration"]
    assert det.raised[0].locked is True
    # Cooldown: more probes do not raise another alert for the same subject.
    setup.relay.services.control._store.clear_lock("cnam")
    for _ in range(10):
        with pytest.raises(NotFound):
            delivery.open_payload(cnam.caller, new_id())
    assert rule_names(det) == ["enumeration"]


@pytest.mark.threat("T18")
def test_bad_signatures_alert_but_never_lock_the_claimed_name(setup: Setup) -> None:
    cnam = setup.member("cnam", Role.RECIPIENT)
    det = fresh_detector(setup, replace(DetectionRules(), auth_failures=5, lock_on=parse_lock_on("enumeration")))
    auth = setup.relay.services.auth
    forger = type(cnam.signing).generate()
    for _ in range(6):
        with pytest.raises(Exception, match="refused"):
            auth.authenticate(request(cnam, forger, setup.clock.now()), has_body=False, remote="203.0.113.9")
    assert rule_names(det) == ["bad-signatures"]
    assert det.raised[0].subject == "remote:203.0.113.9"
    assert det.raised[0].locked is False
    assert auth.authenticate(request(cnam, cnam.signing, setup.clock.now()), has_body=False).name == "cnam"


def test_revoked_key_use_alerts_at_once(setup: Setup) -> None:
    cnam = setup.member("cnam", Role.RECIPIENT)
    det = fresh_detector(setup, DetectionRules())
    setup.revoke("cnam")
    with pytest.raises(PartyRevoked):
        setup.relay.services.auth.authenticate(request(cnam, cnam.signing, setup.clock.now()), has_body=False)
    assert rule_names(det) == ["revoked-key"]


# ------------------------------------------------------------------ signed admin commands


def command(setup: Setup, signer, action: AdminAction, target: str | None = None, over: dict | None = None) -> dict:
    cmd = AdminCommand.new(action, target, "test", setup.clock.now(), setup.relay.services.auditor.relay_public.b64)
    payload = {**cmd.payload(), **(over or {})}
    return sign_envelope(payload, signer.signing, signer.name)


@pytest.mark.threat("T19")
def test_admin_commands_fail_closed(setup: Setup) -> None:
    admin, lab = setup.member("admin-1", Role.ADMIN), setup.member("lab-a", Role.LAB)
    control = setup.relay.services.control
    # Not an administrator.
    with pytest.raises(PermissionDenied):
        control.execute(command(setup, lab, AdminAction.FREEZE), caller=None, via="data")
    # Sent by someone else than its signer.
    with pytest.raises(PermissionDenied):
        control.execute(command(setup, admin, AdminAction.FREEZE), caller="lab-a", via="api")
    # A forged signature.
    forged = command(setup, admin, AdminAction.FREEZE)
    forged["payload"]["action"] = "unfreeze"
    with pytest.raises(Exception, match="does not verify"):
        control.execute(forged, caller=None, via="data")
    # Signed for another relay.
    elsewhere = command(setup, admin, AdminAction.FREEZE, over={"relay": SigningKey.generate().public.b64})
    with pytest.raises(PermissionDenied, match="another relay"):
        control.execute(elsewhere, caller=None, via="data")
    # Replayed, and too old.
    once = command(setup, admin, AdminAction.LOCK, "lab-a")
    assert control.execute(once, caller=None, via="data").changed
    with pytest.raises(ReplayDetected):
        control.execute(once, caller=None, via="data")
    stale = command(setup, admin, AdminAction.UNLOCK, "lab-a")
    setup.clock.advance(timedelta(minutes=6))
    with pytest.raises(ReplayDetected):
        control.execute(stale, caller=None, via="data")
    # A malformed target, correctly signed.
    malformed = command(setup, admin, AdminAction.QUARANTINE, new_id(), over={"target": "../../etc"})
    with pytest.raises(UsageError):
        control.execute(malformed, caller=None, via="data")
    assert not control.frozen()
    assert control.refusal("lab-a") is not None
    refused = [r.entry for r in setup.relay.sql.audit.links() if r.entry.event is AuditEvent.ADMIN_REFUSE]
    assert len(refused) == 7
    # A locked administrator cannot use the kill switch either.
    control.lock_by_rule("admin-1", "enumeration")
    with pytest.raises(PermissionDenied):
        control.execute(command(setup, admin, AdminAction.UNLOCK, "admin-1"), caller=None, via="data")


def test_alert_names_no_person() -> None:
    """Alerts carry rule names, party names, counts and sequence numbers: the formats allow nothing else."""
    text = " ".join(detector_module._SUMMARIES.values())
    assert not re.search(r"\{(?!subject|count|threshold|window)", text)


@pytest.mark.threat("T18")
def test_a_sender_cannot_get_a_recipient_locked_with_short_lived_transfers(setup: Setup) -> None:
    """A recipient asking for its own transfers that expired (or were quarantined) is not probing."""
    lab, cnam = setup.member("lab-a", Role.LAB), setup.member("cnam", Role.RECIPIENT)
    det = fresh_detector(setup, DetectionRules(probes=5))
    delivery = setup.relay.services.delivery
    ids = []
    for _ in range(10):
        envelope, data = setup.seal(lab, cnam, b"x" * 100, ttl=timedelta(seconds=30))
        setup.upload(lab, envelope, data)
        ids.append(envelope["payload"]["transfer_id"])
    setup.clock.advance(timedelta(seconds=31))
    for tid in ids:
        with pytest.raises(NotFound):
            delivery.open_payload(cnam.caller, tid)
    assert det.raised == []
    assert setup.relay.services.control.refusal("cnam") is None


def test_the_authority_is_never_locked_and_detection_never_breaks_a_request(setup: Setup) -> None:
    det = fresh_detector(setup, DetectionRules(probes=2, lock_on=frozenset({"enumeration"})))
    authority = Caller(AUTHORITY_KEYID, None)
    for _ in range(3):
        with pytest.raises(NotFound):
            setup.relay.services.delivery.open_payload(authority, new_id())
    assert rule_names(det) == ["enumeration"]
    assert det.raised[0].locked is False
    # A control store that fails: the alert still reaches the sinks, the request still gets its answer.
    cnam = setup.member("cnam", Role.RECIPIENT)
    recorded = RecordedAlerts()
    fresh_detector(setup, DetectionRules(probes=2), recorded)
    sent = recorded.submitted

    def broken(*_a: object, **_k: object) -> bool:
        raise RuntimeError("database is locked")

    setup.relay.services.control.lock_by_rule = broken  # type: ignore[method-assign]
    for _ in range(2):
        with pytest.raises(NotFound):
            setup.relay.services.delivery.open_payload(cnam.caller, new_id())
    assert [a.rule for a in sent] == ["enumeration"]
    assert sent[0].locked is False
