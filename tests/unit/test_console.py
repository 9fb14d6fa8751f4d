"""The console service's clocks and bounds, with a manual clock: challenges and sessions expire, and the number
of sign-ins waiting for an answer is bounded (anyone may start one)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from labrelay.crypto.passkeys import Relying
from labrelay.domain.parties import Role
from labrelay.errors import AuthenticationFailed, Unavailable
from labrelay.relay import console as console_module
from labrelay.relay.console import ConsoleService
from tests.support.passkeys import SoftPasskey
from tests.support.relay_setup import Setup

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


@pytest.mark.threat("T22")
def test_challenges_expire(setup: Setup) -> None:
    key = enrolled(setup)
    service = console_of(setup)
    options = json.loads(service.signin_options(RP))
    setup.clock.advance(console_module.CHALLENGE_TTL + timedelta(seconds=1))
    with pytest.raises(AuthenticationFailed):
        service.signin(key.get(options), RP, None)


@pytest.mark.threat("T22")
def test_sessions_expire(setup: Setup) -> None:
    key = enrolled(setup)
    service = console_of(setup)
    session = service.signin(key.get(json.loads(service.signin_options(RP))), RP, None)
    assert service.user(session.token).party == "ops-01"
    setup.clock.advance(service.session_ttl + timedelta(seconds=1))
    with pytest.raises(AuthenticationFailed):
        service.user(session.token)


@pytest.mark.threat("T22")
def test_pending_sign_ins_are_bounded(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_module, "MAX_PENDING_SIGNINS", 3)
    service = console_of(setup)
    for _ in range(3):
        service.signin_options(RP)
    with pytest.raises(Unavailable):
        service.signin_options(RP)
    setup.clock.advance(console_module.CHALLENGE_TTL + timedelta(seconds=1))
    assert json.loads(service.signin_options(RP))["challenge"]  # the expired ones were forgotten


@pytest.mark.threat("T22")
def test_a_passkey_bound_by_a_replaced_key_is_void(setup: Setup) -> None:
    """The authority revokes ops-01's key and issues it a new one: what the old key bound no longer opens."""
    key = enrolled(setup)
    service = console_of(setup)
    session = service.signin(key.get(json.loads(service.signin_options(RP))), RP, None)
    setup.clock.advance(timedelta(seconds=1))
    setup.revoke("ops-01")
    setup.clock.advance(timedelta(seconds=1))
    setup.member("ops-01", Role.ADMIN)  # a new entry, a new signing key
    with pytest.raises(AuthenticationFailed):
        service.user(session.token)
    with pytest.raises(AuthenticationFailed):
        service.signin(key.get(json.loads(service.signin_options(RP))), RP, None)
