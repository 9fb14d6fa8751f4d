"""Routing policies in order (T30): what a lab keeps and refuses, and what the relay registers and refuses.

A lab keeps the newest policy issue it verified and refuses an older one, an expired one and a withdrawn version; the
relay refuses to register an older, expired or withdrawn policy, and refuses new transfers routed under any policy
but the one in force. Real signatures, real storage (SQLite), a manual clock.
"""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest

from labrelay.client.policy import POLICIES_FILE, PolicyBook, verified_signed_policy, verified_withdrawals
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import SigningKey
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.names import AUTHORITY_KEYID, new_id
from labrelay.domain.parties import Role
from labrelay.domain.policy import PolicyWithdrawal, policy_payload
from labrelay.domain.timeutil import to_rfc3339
from labrelay.domain.transfers import TransferState
from labrelay.errors import Conflict, IntegrityError, PermissionDenied, UntrustedEntry
from tests.support.relay_setup import T0, Setup

DEFAULT = "fr-covid-2026.3"  # issue 1 in every setup (tests/support/relay_setup.py)
YEAR = timedelta(days=365)

# A looser policy signed first (the ARS receive names and birth dates) and a stricter one signed after (they do not).
LOOSE = (
    'version = "t-loose"\nloinc = ["94500-6"]\n'
    '[[recipients]]\nname = "cnam"\nselect = "positive"\nfields = ["nir", "nom", "resultat"]\n'
    '[[recipients]]\nname = "ars-{region}"\nby_region = true\n'
    'fields = ["nom", "prenom", "date_naissance", "resultat"]\n'
)
STRICT = (
    'version = "t-strict"\nloinc = ["94500-6"]\n'
    '[[recipients]]\nname = "cnam"\nselect = "positive"\nfields = ["nir", "nom", "resultat"]\n'
    '[[recipients]]\nname = "ars-{region}"\nby_region = true\nfields = ["code_commune_insee", "resultat"]\n'
)


def signed(key: SigningKey, text: str, issue: int, *, at=T0, valid: timedelta = YEAR) -> dict:
    return sign_envelope(policy_payload(text, at, issue=issue, not_after=at + valid), key, AUTHORITY_KEYID)


def withdrawal(key: SigningKey, version: str, reason: str = "too loose") -> dict:
    payload = PolicyWithdrawal(version=version, withdrawn_at=T0, reason=reason, serial=new_id()).to_payload()
    return sign_envelope(payload, key, AUTHORITY_KEYID)


def events(setup: Setup, event: AuditEvent) -> list:
    return [r.entry for r in setup.relay.sql.audit.links() if r.entry.event is event]


# ------------------------------------------------------------------ the lab's side


@pytest.mark.threat("T30")
def test_a_lab_keeps_the_newest_policy_it_verified_and_refuses_an_older_one(tmp_path: Path) -> None:
    """The looser policy verifies (the authority did sign it), but once the lab verified the stricter one, issued
    after it, a relay serving the looser one again is refused, with both versions named; so is another text under an
    issue number already verified. What the lab keeps survives the process, in a file only its owner reads."""
    authority = SigningKey.generate()
    loose = verified_signed_policy(signed(authority, LOOSE, 1), authority.public)
    strict = verified_signed_policy(signed(authority, STRICT, 2), authority.public)
    book_file = tmp_path / POLICIES_FILE
    PolicyBook(book_file).admit(authority.public, loose, [], T0)
    PolicyBook(book_file).admit(authority.public, strict, [], T0)
    assert stat.S_IMODE(book_file.stat().st_mode) == 0o600

    with pytest.raises(UntrustedEntry) as refused:
        PolicyBook(book_file).admit(authority.public, loose, [], T0)
    message = refused.value.message
    assert "t-loose (issue 1)" in message
    assert "t-strict (issue 2)" in message
    assert "rollback" in message
    assert "\n" not in message

    other_text = STRICT.replace('"code_commune_insee", ', "")
    forked = verified_signed_policy(signed(authority, other_text, 2), authority.public)
    with pytest.raises(UntrustedEntry, match="same issue number"):
        PolicyBook(book_file).admit(authority.public, forked, [], T0)
    PolicyBook(book_file).admit(authority.public, strict, [], T0)  # the same policy again is fine
    kept = PolicyBook(book_file).kept(authority.public)
    assert kept is not None
    assert (kept.issue, kept.version) == (2, "t-strict")

    # A policy signed before issue numbers and validity ends existed carries neither: refused, not taken as issue 0.
    legacy = {"type": "routing-policy", "v": 1, "version": "t-loose", "toml": LOOSE, "issued_at": to_rfc3339(T0)}
    with pytest.raises(UntrustedEntry, match="no issue number"):
        verified_signed_policy(sign_envelope(legacy, authority, AUTHORITY_KEYID), authority.public)


@pytest.mark.threat("T30")
def test_a_lab_refuses_an_expired_or_withdrawn_policy_and_remembers_the_withdrawal(tmp_path: Path) -> None:
    authority = SigningKey.generate()
    book_file = tmp_path / POLICIES_FILE
    short = verified_signed_policy(signed(authority, STRICT, 1, valid=timedelta(days=30)), authority.public)
    PolicyBook(book_file).admit(authority.public, short, [], T0 + timedelta(days=29))
    with pytest.raises(UntrustedEntry, match="expired"):
        PolicyBook(book_file).admit(authority.public, short, [], T0 + timedelta(days=30))

    policy = verified_signed_policy(signed(authority, LOOSE, 2), authority.public)
    withdrawals = verified_withdrawals([withdrawal(authority, "t-loose")], authority.public)
    with pytest.raises(UntrustedEntry, match=r"t-loose \(issue 2\) was withdrawn by the authority \(too loose\)"):
        PolicyBook(book_file).admit(authority.public, policy, withdrawals, T0)
    # A relay that stops serving the withdrawal does not bring the version back: the lab saw it, and kept it.
    with pytest.raises(UntrustedEntry, match="withdrawn"):
        PolicyBook(book_file).admit(authority.public, policy, [], T0)
    # A withdrawal the authority did not sign is not silently skipped: nothing is routed on the relay's word.
    with pytest.raises(UntrustedEntry, match="did not sign"):
        verified_withdrawals([withdrawal(SigningKey.generate(), "t-strict")], authority.public)


# ------------------------------------------------------------------ the relay's side


@pytest.mark.threat("T30")
def test_the_relay_registers_only_a_newer_policy_in_force(setup: Setup) -> None:
    """Older than the newest held, expired, withdrawn, or another text under a version held: refused, and audited
    as ``policy:refuse``. A later issue of the same text (a renewal) replaces it; the exact envelope again is a
    retry."""
    policies, key = setup.relay.services.policies, setup.authority
    strict = signed(key, STRICT, 3)
    assert policies.register(strict, AUTHORITY_KEYID)[1] is True
    assert policies.register(strict, AUTHORITY_KEYID)[1] is False  # a retry
    with pytest.raises(Conflict, match=r"t-loose \(issue 2\) is not newer than t-strict \(issue 3\)"):
        policies.register(signed(key, LOOSE, 2), AUTHORITY_KEYID)
    with pytest.raises(UntrustedEntry, match="expired"):
        policies.register(signed(key, LOOSE, 4, at=T0 - YEAR, valid=YEAR), AUTHORITY_KEYID)
    with pytest.raises(Conflict, match="already registered with other content"):
        policies.register(signed(key, STRICT.replace('"code_commune_insee", ', ""), 4), AUTHORITY_KEYID)
    policies.withdraw(withdrawal(key, "t-loose"), AUTHORITY_KEYID)
    with pytest.raises(Conflict, match="withdrawn"):
        policies.register(signed(key, LOOSE, 5), AUTHORITY_KEYID)
    refused = events(setup, AuditEvent.POLICY_REFUSE)
    assert [(e.outcome, e.reason) for e in refused] == [
        (Outcome.REFUSED, "conflict"),
        (Outcome.REFUSED, "untrusted-entry"),
        (Outcome.REFUSED, "conflict"),
        (Outcome.REFUSED, "conflict"),
    ]
    renewal = signed(key, STRICT, 6, at=T0 + timedelta(days=300))
    assert policies.register(renewal, AUTHORITY_KEYID)[1] is True
    latest = policies.latest()
    assert latest is not None
    assert (latest.label, latest.not_after) == ("t-strict (issue 6)", T0 + timedelta(days=665))
    assert policies.envelope("lab-a") == renewal


@pytest.mark.threat("T30")
def test_the_relay_refuses_new_transfers_under_a_superseded_withdrawn_or_expired_policy(setup: Setup) -> None:
    """Only the policy in force routes a new transfer: the refusal is ``permission-denied``, audited as
    ``transfer:refuse``. A transfer accepted just before a new policy registered keeps going (its sender's retry of
    the same manifest is answered as before), and nothing is stored for one refused."""
    lab, ars = setup.member("lab-a", Role.LAB), setup.member("ars-11", Role.RECIPIENT)
    uploads, policies, key = setup.relay.services.uploads, setup.relay.services.policies, setup.authority
    in_flight, data = setup.seal(lab, ars, b"x" * 300, policy_version=DEFAULT, record_count=1)
    uploads.create(lab.caller, in_flight)  # accepted under the policy then in force
    policies.register(signed(key, STRICT, 2), AUTHORITY_KEYID)

    late, _ = setup.seal(lab, ars, b"y" * 300, policy_version=DEFAULT, record_count=1)
    with pytest.raises(PermissionDenied, match=rf"{DEFAULT}: it was superseded by t-strict \(issue 2\)") as info:
        uploads.create(lab.caller, late)
    assert "routes the batch again" in (info.value.hint or "")
    assert setup.upload(lab, in_flight, data) is TransferState.AVAILABLE  # created again (a retry): goes on

    under_strict, _ = setup.seal(lab, ars, b"z" * 300, policy_version="t-strict", record_count=1)
    uploads.create(lab.caller, under_strict)
    policies.withdraw(withdrawal(key, "t-strict", "gives the ARS too much"), AUTHORITY_KEYID)
    again, _ = setup.seal(lab, ars, b"z" * 300, policy_version="t-strict", record_count=1)
    with pytest.raises(PermissionDenied, match=r"withdrawn by the authority \(gives the ARS too much\)"):
        uploads.create(lab.caller, again)
    for version in (DEFAULT, "t-strict"):  # nothing is in force now: not the older one either
        refused, _ = setup.seal(lab, ars, b"w" * 300, policy_version=version, record_count=1)
        with pytest.raises(PermissionDenied):
            uploads.create(lab.caller, refused)

    policies.register(signed(key, LOOSE, 3, valid=timedelta(days=2)), AUTHORITY_KEYID)
    setup.clock.advance(timedelta(days=2))
    expired, _ = setup.seal(lab, ars, b"v" * 300, policy_version="t-loose", record_count=1)
    with pytest.raises(PermissionDenied, match=r"t-loose \(issue 3\) expired"):
        uploads.create(lab.caller, expired)
    unknown, _ = setup.seal(lab, ars, b"u" * 300, policy_version="made-up-1", record_count=1)
    with pytest.raises(IntegrityError, match="does not hold"):  # T13 as before
        uploads.create(lab.caller, unknown)

    refusals = [e for e in events(setup, AuditEvent.TRANSFER_REFUSE) if e.reason == "permission-denied"]
    assert len(refusals) == 5
    stored = {r.transfer_id for r in setup.relay.sql.transfers.for_sender("lab-a")}
    assert stored == {in_flight["payload"]["transfer_id"], under_strict["payload"]["transfer_id"]}
