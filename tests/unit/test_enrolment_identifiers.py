"""The identifiers an entry may carry (domain/identifiers.py): what is refused, what is only a warning, and entries
with and without one (old entries keep their exact signed payload)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from labrelay.crypto.envelopes import sign_envelope, verify_envelope
from labrelay.crypto.keys import SigningKey
from labrelay.domain import identifiers
from labrelay.domain.identifiers import Identifier, Scheme, check_for_role, luhn_ok
from labrelay.domain.parties import ENTRY_TYPE, PartyEntry, Role
from labrelay.errors import UntrustedEntry, UsageError

AGE = "age1" + "q" * 58
ED = "A" * 43
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("good", ["750712184", "130786049", "2A0000016", "2B0012345", "010000024"])
def test_well_formed_finess(good: str) -> None:
    assert identifiers.finess(good).value == good


def test_spaces_are_ignored_where_people_type_them() -> None:
    assert identifiers.finess("75 071 2184").value == "750712184"
    assert identifiers.organisation("180 035 024") == Identifier(Scheme.SIREN, "180035024")
    assert identifiers.organisation("130 005 481 00010") == Identifier(Scheme.SIRET, "13000548100010")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "75071218",
        "7507121845",
        "75071218X",
        "2C0712184",
        "2a0712184",
        "A20712184",
        "75O712184",
        "²50712184",
        "\uff1750712184",
        "750712184\n",
        "2A000001B",
    ],
)
def test_malformed_finess_is_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid FINESS"):
        identifiers.finess(bad)


@pytest.mark.parametrize(
    "bad",
    [
        "18003502",
        "1800350245",
        "1800350241234",
        "180035024123456",
        "18003502X",
        "\u0661\u0668\u0660\u0660\u0663\u0665\u0660\u0662\u0664",
    ],
)
def test_malformed_organisation_is_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid"):
        identifiers.organisation(bad)


def test_luhn() -> None:
    assert luhn_ok("750712184")
    assert luhn_ok("130786049")
    assert luhn_ok("79927398713")  # the usual textbook example
    assert not luhn_ok("750712185")
    assert not luhn_ok("79927398710")


def test_a_check_digit_that_does_not_hold_is_a_warning_never_a_refusal() -> None:
    assert identifiers.finess("750712184").warnings() == []
    [warning] = identifiers.finess("750712185").warnings()
    assert "Luhn" in warning
    assert "unofficial" in warning
    [corsica] = identifiers.finess("2A0000016").warnings()
    assert "not checked" in corsica
    assert identifiers.organisation("180035024").warnings() == []
    [siren] = identifiers.organisation("180035025").warnings()
    assert "Luhn" in siren


def test_finess_for_labs_organisations_for_the_others() -> None:
    check_for_role(identifiers.finess("750712184"), "lab")
    check_for_role(identifiers.organisation("180035024"), "recipient")
    check_for_role(identifiers.organisation("180035024"), "dpo")
    check_for_role(None, "lab")
    with pytest.raises(UsageError, match="a recipient cannot carry a FINESS"):
        check_for_role(identifiers.finess("750712184"), "recipient")
    with pytest.raises(UsageError, match="a lab cannot carry a SIRET"):
        check_for_role(identifiers.organisation("13000548100010"), "lab")


def _entry(identifier: Identifier | None, role: Role = Role.LAB) -> PartyEntry:
    return PartyEntry("lab-x", role, None, AGE, ED, T0, T0 + timedelta(days=1), T0, "0" * 36, identifier)


def test_an_entry_without_identifier_has_no_such_field_so_old_signatures_still_verify() -> None:
    """Entries signed before identifiers existed: the same payload, field for field, verifies and reads back."""
    key = SigningKey.generate()
    payload = _entry(None).to_payload()
    assert "identifier" not in payload
    old = sign_envelope(payload, key, "@authority")
    read = PartyEntry.from_payload(verify_envelope(old, ENTRY_TYPE, key.public))
    assert read.identifier is None
    assert read == _entry(None)


def test_an_entry_with_an_identifier_round_trips_under_its_signature() -> None:
    key = SigningKey.generate()
    envelope = sign_envelope(_entry(identifiers.finess("750712184")).to_payload(), key, "@authority")
    assert envelope["payload"]["identifier"] == {"scheme": "finess", "value": "750712184"}
    read = PartyEntry.from_payload(verify_envelope(envelope, ENTRY_TYPE, key.public))
    assert read.identifier == Identifier(Scheme.FINESS, "750712184")


@pytest.mark.parametrize(
    "identifier",
    [
        None,
        "750712184",
        {"scheme": "finess"},
        {"scheme": "finess", "value": "75071218X"},
        {"scheme": "nir", "value": "750712184"},
        {"scheme": "finess", "value": 750712184},
        {"scheme": "finess", "value": "750712184", "extra": "x"},
        {"scheme": "siren", "value": "180035024"},  # a lab with a SIREN
    ],
)
def test_a_malformed_identifier_makes_the_entry_untrusted(identifier: object) -> None:
    payload = {**_entry(None).to_payload(), "identifier": identifier}
    with pytest.raises(UntrustedEntry, match="malformed party entry"):
        PartyEntry.from_payload(payload)
