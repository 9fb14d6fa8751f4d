"""What ``authority sign`` refuses given what the authority signed for a name before (domain/parties.py,
``reissue_refusal``): keys of a revoked entry, keys a newer entry replaced, a request older than the name's newest
entry or revocation; and what it still signs (a renewal, a rotation's current keys, fresh keys after a revocation)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from labrelay.domain.parties import PartyEntry, Revocation, Role, reissue_refusal

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S1, S2 = "A" * 43, "B" * 43
A1, A2, A3 = ("age1" + c * 58 for c in "qpz")
SERIALS = iter(f"00000000-0000-4000-8000-{n:012d}" for n in range(1000))


def entry(signing: str, age: str, issued: datetime, name: str = "lab-a") -> PartyEntry:
    return PartyEntry(
        name=name,
        role=Role.LAB,
        region=None,
        age_recipient=age,
        signing_key=signing,
        not_before=issued,
        not_after=issued + timedelta(days=365),
        issued_at=issued,
        serial=next(SERIALS),
    )


def revocation(at: datetime, name: str = "lab-a") -> Revocation:
    return Revocation(name=name, revoked_at=at, reason="key compromised", serial=next(SERIALS))


def days(n: int) -> datetime:
    return T0 + timedelta(days=n)


def test_nothing_signed_before_nothing_against() -> None:
    assert reissue_refusal("lab-a", (S1, A1), days(0), [], []) is None


def test_a_renewal_with_the_same_keys_made_after_the_entry_is_signed() -> None:
    assert reissue_refusal("lab-a", (S1, A1), days(2), [entry(S1, A1, days(1))], []) is None


@pytest.mark.parametrize(
    ("keys", "which"),
    [((S1, A1), "signing key and age recipient"), ((S1, A3), "signing key"), ((S2, A1), "age recipient")],
)
def test_a_key_of_a_revoked_entry_is_refused_even_in_a_fresh_request(keys: tuple[str, str], which: str) -> None:
    why = reissue_refusal("lab-a", keys, days(9), [entry(S1, A1, days(1))], [revocation(days(2))])
    assert why is not None
    assert why.startswith(f"its {which} belonged to lab-a's entry")
    assert "revoked at 2026-01-03T00:00:00Z (key compromised)" in why


def test_fresh_keys_after_a_revocation_are_signed() -> None:
    assert reissue_refusal("lab-a", (S2, A2), days(3), [entry(S1, A1, days(1))], [revocation(days(2))]) is None


def test_an_entry_issued_after_a_revocation_is_not_revoked_by_it() -> None:
    """The authority re-enrolled the name with new keys after the revocation: those keys are in force."""
    history = [entry(S1, A1, days(1)), entry(S2, A2, days(3))]
    assert reissue_refusal("lab-a", (S2, A2), days(4), history, [revocation(days(2))]) is None


def test_a_rotation_keeps_the_signing_key_and_leaves_the_old_age_key_behind() -> None:
    history = [entry(S1, A1, days(1)), entry(S1, A2, days(2))]
    assert reissue_refusal("lab-a", (S1, A2), days(3), history, []) is None
    why = reissue_refusal("lab-a", (S1, A1), days(3), history, [])
    assert why is not None
    assert why.startswith("its age recipient belonged to lab-a's entry")
    assert f"replaced by entry {history[1].serial}" in why


def test_keys_replaced_by_a_newer_entry_are_refused() -> None:
    history = [entry(S1, A1, days(1)), entry(S2, A2, days(2))]
    why = reissue_refusal("lab-a", (S1, A1), days(3), history, [])
    assert why is not None
    assert why.startswith("its signing key and age recipient belonged to lab-a's entry")


@pytest.mark.parametrize("revoked", [False, True])
def test_a_request_made_before_the_newest_entry_or_revocation_is_refused(revoked: bool) -> None:
    history = [entry(S1, A1, days(1))]
    revs = [revocation(days(5))] if revoked else []
    newest = "2026-01-06T00:00:00Z" if revoked else "2026-01-02T00:00:00Z"
    keys = (S2, A2) if revoked else (S1, A1)  # fresh keys after a revocation: refused only for being older
    why = reissue_refusal("lab-a", keys, days(1) - timedelta(seconds=1) if not revoked else days(4), history, revs)
    assert why is not None
    assert why.startswith("it was made at")
    assert f"for lab-a ({newest})" in why
    assert reissue_refusal("lab-a", keys, days(6), history, revs) is None


def test_other_names_history_does_not_count() -> None:
    history = [entry(S1, A1, days(1), name="lab-b")]
    assert reissue_refusal("lab-a", (S1, A1), days(0), history, [revocation(days(2), name="lab-b")]) is None


def test_a_request_made_in_the_same_second_as_the_newest_entry_is_signed() -> None:
    """Instants are kept to the second: a tie does not show that the request predates the entry (a party re-created
    and requesting at once, in a script); the key checks, which do not depend on time, still hold."""
    assert reissue_refusal("lab-a", (S2, A2), days(1), [entry(S1, A1, days(1))], []) is None
    assert reissue_refusal("lab-a", (S2, A2), days(1), [entry(S1, A1, days(1))], [revocation(days(1))]) is None
