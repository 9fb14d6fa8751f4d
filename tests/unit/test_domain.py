"""The pure domain: durations, names, directory resolution, manifests, receipts, terms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labrelay.domain.names import check_party_name, check_transfer_id, is_loopback_host, new_id
from labrelay.domain.parties import EntryStatus, PartyEntry, Revocation, Role, resolve
from labrelay.domain.timeutil import format_duration, from_rfc3339, parse_duration, to_rfc3339
from labrelay.domain.transfers import Manifest, Receipt, ReceiptStatus, TransferLimits, check_manifest_terms
from labrelay.errors import IntegrityError, TooLarge, UntrustedEntry, UsageError

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
AGE = "age1" + "q" * 58
KEY = "A" * 43


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800)])
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["", "7", "7w", "-1d", "0s", "1.5h", "7 days", "1d2h", "7d\n1"])
def test_durations_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**8))
def test_duration_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


def test_rfc3339_round_trip_and_naive_refused() -> None:
    assert to_rfc3339(T0) == "2026-11-28T12:00:00Z"
    assert from_rfc3339("2026-11-28T13:00:00+01:00") == T0
    with pytest.raises(ValueError, match="naive"):
        to_rfc3339(datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="time zone"):
        from_rfc3339("2026-11-28T12:00:00")


@pytest.mark.parametrize("name", ["ars-11", "cnam", "lab-paris-01", "spf"])
def test_party_names_accepted(name: str) -> None:
    assert check_party_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "ab",
        "Cnam",
        "1lab",
        "lab-",
        "lab_1",
        "../etc",
        "a" * 65,
        "lab paris",
        "@authority",
        None,
        5,
        "cnam\n",
        "cnam\nx",
    ],
)
def test_party_names_refused(name: object) -> None:
    with pytest.raises(UsageError):
        check_party_name(name)


def test_transfer_ids_are_random_uuid4() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        assert check_transfer_id(value) == value
    for bad in ["../x", "00000000-0000-0000-0000-000000000000", new_id().upper(), new_id() + "\n"]:
        with pytest.raises(UsageError):
            check_transfer_id(bad)


def entry(
    name: str = "cnam",
    *,
    issued: datetime = T0,
    days: int = 365,
    role: Role = Role.RECIPIENT,
    serial: str | None = None,
) -> PartyEntry:
    return PartyEntry(
        name=name,
        role=role,
        region=None,
        age_recipient=AGE,
        signing_key=KEY,
        not_before=issued,
        not_after=issued + timedelta(days=days),
        issued_at=issued,
        serial=serial or new_id(),
    )


def test_entry_payload_round_trip() -> None:
    e = entry()
    assert PartyEntry.from_payload(e.to_payload()) == e


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("type", "transfer-manifest"),
        ("v", 2),
        ("role", "root"),
        ("age_recipient", "ssh-ed25519 AAAA"),
        ("signing_key", "short"),
        ("not_after", "yesterday"),
        ("region", 11),
        ("name", "../x"),
        ("serial", 1),
    ],
)
def test_malformed_entries_refused(field: str, value: object) -> None:
    payload = entry().to_payload()
    payload[field] = value
    with pytest.raises(UntrustedEntry):
        PartyEntry.from_payload(payload)


def test_resolution_statuses() -> None:
    e = entry(issued=T0)
    assert resolve("cnam", [], [], T0).status is EntryStatus.UNKNOWN
    assert resolve("cnam", [e], [], T0 + timedelta(days=1)).status is EntryStatus.ACTIVE
    assert resolve("cnam", [e], [], T0 - timedelta(days=1)).status is EntryStatus.NOT_YET_VALID
    assert resolve("cnam", [e], [], T0 + timedelta(days=366)).status is EntryStatus.EXPIRED
    rev = Revocation(name="cnam", revoked_at=T0 + timedelta(days=2), reason="key lost", serial=new_id())
    assert resolve("cnam", [e], [rev], T0 + timedelta(days=3)).status is EntryStatus.REVOKED
    # An entry issued after the revocation (a new key) is in force again; the old one stays void.
    fresh = entry(issued=T0 + timedelta(days=4))
    res = resolve("cnam", [e, fresh], [rev], T0 + timedelta(days=5))
    assert res.status is EntryStatus.ACTIVE
    assert res.entry == fresh
    # A revocation of another name changes nothing.
    other = Revocation(name="spf", revoked_at=T0 + timedelta(days=2), reason="x", serial=new_id())
    assert resolve("cnam", [e], [other], T0 + timedelta(days=3)).status is EntryStatus.ACTIVE


def test_latest_valid_entry_wins() -> None:
    old, new = entry(issued=T0), entry(issued=T0 + timedelta(days=10))
    assert resolve("cnam", [new, old], [], T0 + timedelta(days=11)).entry == new


def manifest(**over: object) -> Manifest:
    fields: dict[str, object] = {
        "transfer_id": new_id(),
        "batch_id": new_id(),
        "sender": "lab-a",
        "recipient": "cnam",
        "recipient_key": AGE,
        "size": 500,
        "sha256": "a" * 64,
        "record_count": 3,
        "media_type": "text/csv",
        "created": T0,
        "deadline": T0 + timedelta(days=7),
    }
    fields.update(over)
    return Manifest(**fields)  # type: ignore[arg-type]


LIMITS = TransferLimits(max_ttl=timedelta(days=30), max_payload_bytes=1000, clock_skew=timedelta(seconds=30))


def test_manifest_round_trip_and_terms() -> None:
    m = manifest()
    assert Manifest.from_payload(m.to_payload()) == m
    check_manifest_terms(m, T0, LIMITS)


def test_manifest_terms_fail_closed() -> None:
    with pytest.raises(TooLarge):
        check_manifest_terms(manifest(size=1001), T0, LIMITS)
    with pytest.raises(UsageError, match="longer than the relay's maximum of 30d"):
        check_manifest_terms(manifest(deadline=T0 + timedelta(days=31)), T0, LIMITS)
    with pytest.raises(UsageError, match="already passed"):
        check_manifest_terms(manifest(), T0 + timedelta(days=8), LIMITS)
    with pytest.raises(UsageError, match="future"):
        check_manifest_terms(manifest(created=T0 + timedelta(minutes=5), deadline=T0 + timedelta(days=1)), T0, LIMITS)
    with pytest.raises(UsageError):
        manifest(deadline=T0)  # a deadline must come after creation


@pytest.mark.parametrize(
    ("field", "value"),
    [("size", "100"), ("record_count", True), ("sha256", "zz"), ("deadline", 5), ("type", "transfer-receipt")],
)
def test_malformed_manifest_refused(field: str, value: object) -> None:
    payload = manifest().to_payload()
    payload[field] = value
    with pytest.raises(IntegrityError):
        Manifest.from_payload(payload)


def test_receipt_matches_only_its_manifest() -> None:
    m = manifest()
    r = Receipt(
        transfer_id=m.transfer_id,
        sender=m.sender,
        recipient=m.recipient,
        sha256=m.sha256,
        size=m.size,
        record_count=3,
        status=ReceiptStatus.DECRYPTED,
        received_at=T0,
    )
    assert Receipt.from_payload(r.to_payload()) == r
    r.check_against(m)  # its own manifest: no error
    with pytest.raises(IntegrityError, match="does not match"):
        r.check_against(manifest())
    with pytest.raises(IntegrityError, match="different sha256"):
        r.check_against(manifest(transfer_id=m.transfer_id, sha256="b" * 64))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),  # noqa: S104 - the address a loopback check must refuse
        ("::", False),
        ("10.0.0.1", False),
        ("relay.example.org", False),
        ("", False),
        ("127.0.0.1.example.org", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
