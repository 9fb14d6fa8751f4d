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


def life(created: datetime, deleted: datetime | None = None) -> Lifecycle:
    return Lifecycle("t-1", created=created, available=created, deleted=deleted)


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
    delivered = life(T0, T0 + H)
    stolen_later = Incident(compromised={"ars-11": T0 + 2 * H})
    assert assess(FACTS, pending, stolen_later).exposure is Exposure.READABLE
    assert assess(FACTS, delivered, stolen_later).exposure is Exposure.RECIPIENT_SIDE
    # A copy of the relay taken while it still held the payload, plus the key stolen later: readable.
    both = Incident(storage_copied_at=T0 + H / 2, compromised={"ars-11": T0 + 2 * H})
    assert assess(FACTS, delivered, both).exposure is Exposure.READABLE
    # A sender's key opens nothing: its payloads are sealed to recipients.
    lab_stolen = Incident(compromised={"lab-a": T0}, storage_copied_at=T0 + H / 2)
    assert assess(FACTS, delivered, lab_stolen).exposure is Exposure.CIPHERTEXT


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
