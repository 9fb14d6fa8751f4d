"""Breach scope rules: how each kind of incident exposes a transfer, from its life in the audit trail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.ledger import choose_dpo, purge
from labrelay.domain.breach import Exposure, Incident, Lifecycle, TransferFacts, assess, categories_of, lifecycles
from labrelay.domain.timeutil import to_rfc3339
from labrelay.errors import UsageError

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
FACTS = TransferFacts("t-1", "lab-a", "ars-11", 10, T0 + 7 * 24 * H, ("contact", "health", "identity"))


def life(created: datetime, deleted: datetime | None = None, *, delivered: bool = False) -> Lifecycle:
    one = Lifecycle("t-1", created=created, available=created, deleted=deleted)
    if delivered and deleted:
        one.downloads.append((deleted, "ars-11"))
        one.delivered = deleted
    return one


@pytest.mark.threat("T20")
def test_a_copy_of_the_relay_exposes_ciphertext_only_and_only_what_it_held() -> None:
    stored = life(T0, T0 + 2 * H)
    assert assess(FACTS, stored, Incident(storage_copied_at=T0 + H)).exposure is Exposure.CIPHERTEXT
    assert assess(FACTS, stored, Incident(storage_copied_at=T0 - H)).exposure is Exposure.NONE  # before it came
    assert assess(FACTS, stored, Incident(storage_copied_at=T0 + 3 * H)).exposure is Exposure.NONE  # after deletion
    assert assess(FACTS, stored, Incident(window=(T0 + H, T0 + 5 * H))).exposure is Exposure.CIPHERTEXT
    assert assess(FACTS, stored, Incident(window=(T0 + 3 * H, T0 + 5 * H))).exposure is Exposure.NONE
    assert assess(FACTS, stored, Incident(transfers=frozenset({"t-1"}))).exposure is Exposure.CIPHERTEXT
    assert assess(FACTS, None, Incident(storage_copied_at=T0 + H)).exposure is Exposure.NONE  # never stored


@pytest.mark.threat("T20")
def test_a_stolen_recipient_key_makes_what_it_could_still_get_readable() -> None:
    pending = life(T0)  # never delivered, never deleted
    delivered = life(T0, T0 + H, delivered=True)
    stolen_later = Incident(compromised={"ars-11": T0 + 2 * H})
    assert assess(FACTS, pending, stolen_later).exposure is Exposure.READABLE
    assert assess(FACTS, delivered, stolen_later).exposure is Exposure.RECIPIENT_SIDE
    # A copy of the relay taken while it still held the payload, plus the key stolen later: readable.
    both = Incident(storage_copied_at=T0 + H / 2, compromised={"ars-11": T0 + 2 * H})
    assert assess(FACTS, delivered, both).exposure is Exposure.READABLE
    # Deleted undelivered (expired, cancelled) before the theft: nothing to read anywhere.
    assert assess(FACTS, life(T0, T0 + H), stolen_later).exposure is Exposure.NONE
    # Past its deadline the relay serves nothing: a key stolen after it reads nothing through the relay.
    after_deadline = Incident(compromised={"ars-11": FACTS.deadline + H})
    assert assess(FACTS, pending, after_deadline).exposure is Exposure.NONE
    # A sender's key opens nothing: its payloads are sealed to recipients.
    lab_stolen = Incident(compromised={"lab-a": T0}, storage_copied_at=T0 + H / 2)
    assert assess(FACTS, delivered, lab_stolen).exposure is Exposure.CIPHERTEXT


@pytest.mark.threat("T20")
def test_an_incomplete_audit_export_over_reports_rather_than_under() -> None:
    """The relay's log may be pruned or exported in part: without the transfer's creation on record, it is
    assumed stored from the sender's creation time to its deadline."""
    facts = TransferFacts("t-1", "lab-a", "ars-11", 10, T0 + 7 * 24 * H, ("health",), created=T0)
    copy = Incident(storage_copied_at=T0 + 24 * H)
    finding = assess(facts, None, copy)
    assert finding.exposure is Exposure.CIPHERTEXT
    assert "incomplet" in finding.why
    assert assess(facts, None, Incident(compromised={"ars-11": T0 + H})).exposure is Exposure.READABLE
    deleted_on_record = Lifecycle("t-1", deleted=T0 + H)
    assert assess(facts, deleted_on_record, copy).exposure is Exposure.NONE


def test_lifecycles_read_only_what_happened() -> None:
    docs = [
        {"transfer_id": "t-1", "outcome": "ok", "event": "transfer:create", "at": to_rfc3339(T0)},
        {"transfer_id": "t-1", "outcome": "refused", "event": "payload:delete", "at": to_rfc3339(T0 + H)},
        {"transfer_id": "t-1", "outcome": "ok", "event": "download:serve", "at": to_rfc3339(T0 + H), "actor": "x"},
        {"transfer_id": "t-1", "outcome": "ok", "event": "payload:delete", "at": to_rfc3339(T0 + 2 * H)},
        {"transfer_id": None, "outcome": "ok", "event": "relay:start", "at": to_rfc3339(T0)},
    ]
    [(tid, one)] = lifecycles(docs).items()
    assert tid == "t-1"
    assert (one.created, one.deleted, one.downloads) == (T0, T0 + 2 * H, [(T0 + H, "x")])
    assert categories_of(["nir", "nom", "resultat", "pseudonyme", "unknown"]) == [
        "health",
        "identity",
        "nir",
        "pseudonym",
    ]


def test_ledgers_are_purged_after_their_time(tmp_path: Path) -> None:
    folder = tmp_path / "ledger"
    folder.mkdir()
    for batch, keep in (("old", T0 - H), ("new", T0 + H)):
        (folder / f"{batch}.persons.age").write_bytes(b"x")
        meta = {"batch_id": batch, "persons_file": f"{batch}.persons.age", "keep_until": to_rfc3339(keep)}
        (folder / f"{batch}.json").write_text(json.dumps(meta))
    assert purge(tmp_path, T0) == ["old"]
    assert sorted(p.name for p in folder.iterdir()) == ["new.json", "new.persons.age"]


class Directory:
    def __init__(self, entries: list) -> None:
        self.entries = entries

    def in_force(self) -> list:
        return self.entries

    def require(self, name: str, roles: object) -> object:
        raise UsageError(f"no {name}")


def test_no_dpo_no_send() -> None:
    from labrelay.domain.parties import Role  # noqa: PLC0415

    class Entry:
        def __init__(self, name: str) -> None:
            self.name, self.role = name, Role.DPO

    with pytest.raises(UsageError, match="no DPO"):
        choose_dpo(Directory([]), None)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="several DPOs"):
        choose_dpo(Directory([Entry("a"), Entry("b")]), None)  # type: ignore[arg-type]
    assert choose_dpo(Directory([Entry("a")]), None).name == "a"  # type: ignore[arg-type]


def test_prescribers_without_rpps_stay_distinct_and_bad_addresses_lose_no_email(tmp_path: Path) -> None:
    import io  # noqa: PLC0415
    from datetime import date  # noqa: PLC0415

    import polars as pl  # noqa: PLC0415

    from labrelay.batch.persons import PersonsIndexSink  # noqa: PLC0415
    from labrelay.breach.notify import Controller, art34  # noqa: PLC0415

    accepted = pl.DataFrame(
        {
            "_lid": [0, 1, 2],
            "nom": ["A", "B", "C"],
            "prenom": ["a", "b", "c"],
            "date_naissance": [date(1980, 1, 1)] * 3,
            "adresse": ["1 rue", "2 rue", ""],
            "code_postal": ["75001"] * 3,
            "commune": ["PARIS"] * 3,
            "telephone": ["0102030405"] * 3,
            "email": ["a@x.org", "bad address, b@x.org", "c@x.org"],
            "prescripteur_rpps": ["", None, ""],
            "prescripteur_nom": ["Dr Un", "Dr Deux", "Dr Trois"],
            "prescripteur_telephone": ["01", "02", "03"],
        }
    )
    out = io.BytesIO()
    sink = PersonsIndexSink(out, {"cnam": "t-1"}, None)
    sink.add(accepted, {"cnam": accepted.select("_lid")})
    rows = pl.read_csv(io.BytesIO(out.getvalue()), infer_schema=False)
    assert sorted(rows.filter(pl.col("kind") == "professional")["nom"].to_list()) == ["Dr Deux", "Dr Trois", "Dr Un"]

    controller_file = tmp_path / "c.toml"
    controller_file.write_text(
        'organisme = "L"\nadresse = "A"\nrepresentant = "R"\ndpo_nom = "D"\ndpo_email = "dpo@x.org"\n'
        'dpo_telephone = "0"\ndecouverte = 2026-11-28T09:00:00Z\n'  # an unquoted TOML date-time is fine
    )
    patients = rows.filter(pl.col("kind") == "patient").with_columns(pl.lit("health").alias("categories"))
    result = art34(patients, Controller.load(controller_file), "n", "m", tmp_path / "o", T0, batch_size=1, pdf=False)
    boxes = sorted((tmp_path / "o" / "courriels").glob("*.mbox"))
    written = sum(p.read_bytes().count(b"\nTo: ") + p.read_bytes().startswith(b"To: ") for p in boxes)
    assert (result.emails, written, len(boxes)) == (2, 2, 2)  # the bad address cost no one else's e-mail
    assert result.letters == 2
    assert result.to_call == 0  # B has a postal address: a letter, not a call
