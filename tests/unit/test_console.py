"""The console service's clocks and bounds, with a manual clock: challenges and sessions expire; a sign-in, which
anyone may start, leaves the relay nothing to hold until it succeeds, and each address may ask only so often."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import text

from labrelay.crypto import passkeys
from labrelay.crypto.passkeys import Relying
from labrelay.domain.audit import AuditEvent
from labrelay.domain.parties import Role
from labrelay.errors import AuthenticationFailed, ReplayDetected
from labrelay.relay import console as console_module
from labrelay.relay import throttle
from labrelay.relay.console import ConsoleService, NewSession
from tests.support.passkeys import SoftPasskey
from tests.support.relay_setup import T0, Setup

RP = Relying(rp_id="localhost", origin="http://localhost:8000")


def console_of(setup: Setup) -> ConsoleService:
    service = setup.relay.services.console
    assert service is not None
    return service


def enrolled(setup: Setup, name: str = "ops-01") -> SoftPasskey:
    setup.member(name, Role.ADMIN)
    key = SoftPasskey(origin=RP.origin)
    service = console_of(setup)
    options = json.loads(service.registration_options(name, RP))
    service.register(name, key.create(options), RP, None)
    return key


def sign_in(service: ConsoleService, key: SoftPasskey, remote: str | None = None) -> NewSession:
    """What the browser does: start (the relay answers options and a sealed challenge, its cookie), then answer
    with the passkey and send the cookie back."""
    start = service.signin_options(RP)
    return service.signin(key.get(json.loads(start.options)), start.sealed, RP, remote)


def rows(setup: Setup, table: str) -> int:
    with setup.relay.sql.db.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608 - test tables


@pytest.mark.threat("T22")
def test_challenges_expire(setup: Setup) -> None:
    key = enrolled(setup)
    service = console_of(setup)
    start = service.signin_options(RP)
    setup.clock.advance(console_module.CHALLENGE_TTL + timedelta(seconds=1))
    with pytest.raises(AuthenticationFailed):
        service.signin(key.get(json.loads(start.options)), start.sealed, RP, None)


@pytest.mark.threat("T22")
def test_sessions_expire(setup: Setup) -> None:
    key = enrolled(setup)
    service = console_of(setup)
    session = sign_in(service, key)
    assert service.user(session.token).party == "ops-01"
    setup.clock.advance(service.session_ttl + timedelta(seconds=1))
    with pytest.raises(AuthenticationFailed):
        service.user(session.token)


@pytest.mark.threat("T22")
@pytest.mark.threat("T32")
def test_a_sign_in_flood_leaves_no_state_and_an_admin_still_signs_in(setup: Setup) -> None:
    """12,000 anonymous sign-ins started from as many addresses, each under its limit (the old relay answered 503
    to everyone past 10,000 pending): the relay writes nothing, its memory of addresses stays bounded, and an
    administrator signs in at once."""
    key = enrolled(setup)
    service = console_of(setup)
    before = rows(setup, "audit_events")
    for n in range(12_000):
        remote = f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}"
        assert service.throttle(remote) is None
        start = service.signin_options(RP)
        assert json.loads(start.options)["challenge"]
        assert start.sealed
    assert rows(setup, "console_challenges") == 0
    assert rows(setup, "audit_events") == before  # nothing recorded either
    assert len(service.signin_limiter) == throttle.MAX_ADDRESSES
    assert service.throttle("192.0.2.1") is None
    assert sign_in(service, key, "192.0.2.1").user.party == "ops-01"
    assert rows(setup, "console_challenges") == 1  # the one challenge that signed in, kept until it expires
    setup.clock.advance(console_module.CHALLENGE_TTL + timedelta(seconds=1))
    sign_in(service, key)
    assert rows(setup, "console_challenges") == 1  # the expired one was forgotten


@pytest.mark.threat("T32")
def test_one_address_over_its_limit_waits_is_recorded_once_and_alerted(setup: Setup) -> None:
    service = console_of(setup)
    limit = service.signin_limiter.per_minute
    for _ in range(limit):
        assert service.throttle("198.51.100.7") is None
    over = service.throttle("198.51.100.7")
    assert over is not None
    assert over.report is not None
    assert 1 <= over.retry_after <= 60 // limit + 1
    assert over.report.subject == "198.51.100.7"
    assert over.report.refused == 1
    service.report_limit(over.report, "signin")
    for _ in range(100):  # the same flood goes on: refused, but reported once a minute only
        again = service.throttle("198.51.100.7")
        assert again is not None
        assert again.report is None
    assert service.throttle("198.51.100.8") is None  # another address is not affected
    [hit] = list(setup.relay.sql.audit.links_since(setup.clock.now() - timedelta(minutes=1), AuditEvent.LIMIT_HIT))
    assert hit.entry.details["limit"] == "console-signin"
    assert hit.entry.details["remote"] == "198.51.100.7"
    [alert] = [a for a in setup.relay.detector.raised if a.rule == "limits"]
    assert alert.subject == "console-signin:198.51.100.7"
    setup.clock.advance(timedelta(seconds=60 // limit + 1))
    assert service.throttle("198.51.100.7") is None  # the bucket refills


@pytest.mark.threat("T32")
def test_the_address_limiter_is_bounded_and_its_reports_are_capped() -> None:
    now = T0
    limiter = throttle.AddressLimiter(2, max_addresses=100, max_reports=3)
    reports = []
    for n in range(20):  # 20 addresses, each over its limit
        for _ in range(3):
            over = limiter.hit(f"203.0.113.{n}", now)
        assert over is not None
        reports.append(over.report)
    sent = [r for r in reports if r is not None]
    assert len(sent) == 3  # a flood from many addresses: a few audit records a minute, not one per address
    for _ in range(3):  # a minute later, one of them again
        later = limiter.hit("203.0.113.0", now + throttle.REPORT_EVERY)
    assert later is not None
    assert later.report is not None
    assert later.report.suppressed == 17
    for n in range(1000):
        limiter.hit(f"2001:db8:{n:x}::1", now)
    assert len(limiter) == 100
    # One IPv6 host holds a /64: its addresses share one bucket; an IPv4-mapped address counts as IPv4.
    assert throttle.address_key("2001:db8:1:2:aaaa::1") == throttle.address_key("2001:db8:1:2:bbbb::2")
    assert throttle.address_key("::ffff:192.0.2.9") == "192.0.2.9"


def _counterless(setup: Setup) -> SoftPasskey:
    """A passkey whose signature counter stays 0 (as synced passkeys report): only the relay's record of a used
    challenge stops a replayed answer."""
    key = enrolled(setup)
    key.counts = False
    key.counter = 0
    return key


@pytest.mark.threat("T32")
def test_a_sealed_challenge_is_bound_to_its_cookie_expires_resists_tampering_and_signs_in_once(setup: Setup) -> None:
    key = _counterless(setup)
    service = console_of(setup)
    mine, theirs = service.signin_options(RP), service.signin_options(RP)
    answer = key.get(json.loads(mine.options))
    # An answer to one browser's challenge, sent with another browser's cookie, or with none.
    for sealed in (theirs.sealed, None, ""):
        with pytest.raises(AuthenticationFailed):
            service.signin(answer, sealed, RP, None)
    # A cookie altered in any part: the challenge, the expiry, the MAC; or sealed for another relying party.
    version, expires, challenge, mac = mine.sealed.split(".")
    other_challenge = json.loads(theirs.options)["challenge"]
    for forged in (
        f"{version}.{expires}.{other_challenge}.{mac}",
        f"{version}.{int(expires) + 3600}.{challenge}.{mac}",
        f"{version}.{expires}.{challenge}.{mac[:-2]}AA",
        f"{version}.{expires}.{challenge}",
    ):
        with pytest.raises(AuthenticationFailed):
            service.signin(answer, forged, RP, None)
    elsewhere = Relying(rp_id="localhost", origin="http://localhost:9000")
    with pytest.raises(AuthenticationFailed):
        service.signin(key.get(json.loads(mine.options), origin=elsewhere.origin), mine.sealed, elsewhere, None)
    # A challenge sealed under any other key than this relay's (another relay's, a guess).
    foreign = passkeys.seal_challenge(bytes(32), RP, passkeys.unb64url(challenge), int(expires))
    with pytest.raises(AuthenticationFailed):
        service.signin(answer, foreign, RP, None)
    # The genuine pair signs in, once: the same answer and cookie again are a replay.
    assert service.signin(answer, mine.sealed, RP, None).user.party == "ops-01"
    with pytest.raises(ReplayDetected):
        service.signin(answer, mine.sealed, RP, None)
    # After expiry, a genuine, unused pair is refused.
    late = service.signin_options(RP)
    late_answer = key.get(json.loads(late.options))
    setup.clock.advance(console_module.CHALLENGE_TTL)
    with pytest.raises(AuthenticationFailed):
        service.signin(late_answer, late.sealed, RP, None)
    refused = [r.entry.reason for r in setup.relay.sql.audit.links_since(setup.clock.now() - timedelta(hours=1))]
    assert refused.count("replay") == 1


@pytest.mark.threat("T22")
def test_a_passkey_bound_by_a_replaced_key_is_void(setup: Setup) -> None:
    """The authority revokes ops-01's key and issues it a new one: what the old key bound no longer opens."""
    key = enrolled(setup)
    service = console_of(setup)
    session = sign_in(service, key)
    setup.clock.advance(timedelta(seconds=1))
    setup.revoke("ops-01")
    setup.clock.advance(timedelta(seconds=1))
    setup.member("ops-01", Role.ADMIN)  # a new entry, a new signing key
    with pytest.raises(AuthenticationFailed):
        service.user(session.token)
    with pytest.raises(AuthenticationFailed):
        sign_in(service, key)
