"""The client's view of the directory: only what the pinned authority signed, in force, with the right role."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from labrelay.client.trust import TrustedDirectory
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import AgeIdentity, SigningKey
from labrelay.domain.names import AUTHORITY_KEYID, new_id
from labrelay.domain.parties import PartyEntry, Revocation, Role
from labrelay.errors import NotFound, PartyRevoked, PermissionDenied, UntrustedEntry

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
AUTHORITY = SigningKey.generate()
RECIPIENTS = {Role.RECIPIENT}


def entry_env(
    name: str,
    *,
    key: SigningKey = AUTHORITY,
    issued: datetime = NOW - timedelta(days=1),
    days: int = 30,
    role: Role = Role.RECIPIENT,
) -> dict:
    entry = PartyEntry(
        name=name,
        role=role,
        region=None,
        age_recipient=AgeIdentity.generate().recipient,
        signing_key=SigningKey.generate().public.b64,
        not_before=issued,
        not_after=issued + timedelta(days=days),
        issued_at=issued,
        serial=new_id(),
    )
    return sign_envelope(entry.to_payload(), key, AUTHORITY_KEYID)


@pytest.mark.threat("T3")
def test_client_refuses_entries_unsigned_foreign_expired_or_revoked() -> None:
    unsigned = entry_env("ars-11")
    del unsigned["sig"]
    revocation = Revocation(name="spf", revoked_at=NOW - timedelta(hours=1), reason="key lost", serial=new_id())
    doc = {
        "entries": [
            entry_env("cnam"),
            unsigned,
            entry_env("ars-93", key=SigningKey.generate()),
            entry_env("ars-84", issued=NOW - timedelta(days=40)),
            entry_env("spf"),
            entry_env("lab-x", role=Role.LAB),
        ],
        "revocations": [sign_envelope(revocation.to_payload(), AUTHORITY, AUTHORITY_KEYID)],
    }
    directory = TrustedDirectory(AUTHORITY.public, doc, NOW)
    assert directory.require("cnam", RECIPIENTS).name == "cnam"
    with pytest.raises(UntrustedEntry, match="did not sign"):
        directory.require("ars-11", RECIPIENTS)
    with pytest.raises(UntrustedEntry, match="did not sign"):
        directory.require("ars-93", RECIPIENTS)
    with pytest.raises(UntrustedEntry, match="expired"):
        directory.require("ars-84", RECIPIENTS)
    with pytest.raises(PartyRevoked):
        directory.require("spf", RECIPIENTS)
    with pytest.raises(PermissionDenied):
        directory.require("lab-x", RECIPIENTS)
    with pytest.raises(NotFound):
        directory.require("ars-01", RECIPIENTS)
    assert [e.name for e in directory.in_force()] == ["cnam", "lab-x"]


@pytest.mark.threat("T3")
def test_a_forged_entry_poisons_its_name_even_beside_a_good_one() -> None:
    """A relay that adds a forged entry next to the genuine one is caught, not silently worked around."""
    doc = {"entries": [entry_env("cnam"), entry_env("cnam", key=SigningKey.generate(), issued=NOW)], "revocations": []}
    with pytest.raises(UntrustedEntry):
        TrustedDirectory(AUTHORITY.public, doc, NOW).require("cnam", RECIPIENTS)
