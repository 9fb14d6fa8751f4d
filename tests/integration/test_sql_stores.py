"""The SQL stores' contract: the same tests, each run on SQLite and on PostgreSQL, one group per port. What the
relay's services rely on: a key stored once (a replay, a repeated registration, a race between replicas all read
False), a revocation that a lock never overrides, a challenge taken once, a later policy issue replacing an earlier
one and never the reverse, a transfer moved only from the states named, the audit chain appended after its head."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.crypto.checkpoints import sign_checkpoint
from labrelay.crypto.keys import AgeIdentity, SigningKey
from labrelay.domain.audit import GENESIS, AuditEntry, AuditEvent, Checkpoint, verify_chain
from labrelay.domain.names import new_id
from labrelay.domain.parties import PartyEntry, Role
from labrelay.domain.policy import PolicyWithdrawal
from labrelay.domain.transfers import Manifest, QuarantineReason, Transfer, TransferState
from labrelay.errors import Conflict
from labrelay.storage import migrate
from labrelay.storage.sql.engine import postgres_engine, sqlite_engine
from labrelay.storage.sql.stores import SqlStores
from tests.support.pgserver import PostgresServer
from tests.support.relay_setup import party_entry

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def sql(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStores]:
    if request.param == "sqlite":
        engine = sqlite_engine(tmp_path / "relay.db")
        migrate.upgrade(engine)
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        engine = postgres_engine(postgres.create_database(migrated=True), 4)
    try:
        yield SqlStores.on(engine)
    finally:
        engine.dispose()


def test_nonces_are_remembered_once_and_pruned(sql: SqlStores) -> None:
    assert sql.nonces.remember("lab-a", "n1", T0)
    assert not sql.nonces.remember("lab-a", "n1", T0 + timedelta(seconds=1))  # a replay
    assert sql.nonces.remember("lab-b", "n1", T0)  # another signer's nonce
    assert sql.nonces.remember("lab-a", "n2", T0 + timedelta(minutes=10))
    assert sql.nonces.prune(T0 + timedelta(minutes=5)) == 2
    assert sql.nonces.remember("lab-a", "n1", T0)  # forgotten once out of the window


def _entry(name: str, role: Role = Role.LAB) -> PartyEntry:
    return party_entry(name, role, T0)


def test_directory_keeps_each_entry_once_with_its_envelope(sql: SqlStores) -> None:
    entry = _entry("lab-a")
    envelope = {"payload": entry.to_payload(), "signature": "s"}
    assert sql.directory.add_entry(entry, envelope, T0)
    assert not sql.directory.add_entry(entry, envelope, T0)
    assert sql.directory.entries("lab-a") == [entry]
    assert sql.directory.entries("nobody") == []
    entries, revocations = sql.directory.envelopes()
    assert entries == [envelope]
    assert revocations == []


def test_a_later_policy_issue_replaces_an_earlier_one_never_the_reverse(sql: SqlStores) -> None:
    first, second = {"payload": {"issue": 1}}, {"payload": {"issue": 2}}
    until = T0 + timedelta(days=90)
    assert sql.policies.add_policy("fr-2026.1", first, T0, issue=1, not_after=until)
    assert not sql.policies.add_policy("fr-2026.1", first, T0, issue=1, not_after=until)
    assert sql.policies.add_policy("fr-2026.1", second, T0, issue=2, not_after=until)
    assert not sql.policies.add_policy("fr-2026.1", first, T0, issue=1, not_after=until)
    assert sql.policies.policy() == second
    with pytest.raises(Conflict):
        sql.policies.add_policy("fr-2026.2", {"payload": {"other": True}}, T0, issue=2, not_after=until)
    withdrawal = PolicyWithdrawal(version="fr-2026.1", withdrawn_at=T0, reason="superseded", serial=new_id())
    assert sql.policies.add_policy_withdrawal(withdrawal, {"payload": "w"}, T0)
    assert not sql.policies.add_policy_withdrawal(withdrawal, {"payload": "w"}, T0)
    assert sql.policies.policy_withdrawals() == [(withdrawal, {"payload": "w"})]


def _transfer(sender: str = "lab-a", recipient: str = "cnam") -> Transfer:
    manifest = Manifest(
        transfer_id=new_id(),
        batch_id=new_id(),
        sender=sender,
        recipient=recipient,
        recipient_key=AgeIdentity.generate().recipient,
        size=100,
        sha256="0" * 64,
        record_count=None,
        media_type="text/csv",
        created=T0,
        deadline=T0 + timedelta(days=7),
    )
    return Transfer(
        manifest=manifest,
        manifest_envelope={"payload": manifest.to_payload(), "signature": "s"},
        state=TransferState.UPLOADING,
        uploaded=0,
        created_at=T0,
        updated_at=T0,
    )


def test_a_transfer_moves_only_from_the_states_named(sql: SqlStores) -> None:
    transfer = _transfer()
    tid = transfer.transfer_id
    sql.transfers.create(transfer)
    with pytest.raises(Conflict):
        sql.transfers.create(transfer)
    sql.transfers.set_uploaded(tid, 100, T0)
    assert not sql.transfers.transition(tid, [TransferState.AVAILABLE], TransferState.DELIVERED, T0)
    assert sql.transfers.transition(tid, [TransferState.UPLOADING], TransferState.AVAILABLE, T0)
    stored = sql.transfers.get(tid)
    assert stored is not None
    assert (stored.state, stored.uploaded) == (TransferState.AVAILABLE, 100)
    assert [r.transfer_id for r in sql.transfers.for_recipient("cnam", [TransferState.AVAILABLE])] == [tid]
    assert sql.transfers.refuse(tid, {"payload": {"reason": "wrong-recipient"}}, T0)
    assert not sql.transfers.refuse(tid, {"payload": {"reason": "again"}}, T0)  # refused once
    held = sql.transfers.get(tid)
    assert held is not None
    assert held.held_because is QuarantineReason.REFUSED
    assert not sql.transfers.transition(
        tid, [TransferState.AVAILABLE], TransferState.DELIVERED, T0, unless_quarantined=True
    )


def test_quarantine_holds_open_transfers_once(sql: SqlStores) -> None:
    open_, done = _transfer(), _transfer()
    sql.transfers.create(open_)
    sql.transfers.create(done)
    sql.transfers.transition(done.transfer_id, [TransferState.UPLOADING], TransferState.CANCELLED, T0)
    ids = [open_.transfer_id, done.transfer_id]
    assert sql.control.pending_of("lab-a") == [open_.transfer_id]
    assert sql.control.quarantine(ids, T0, QuarantineReason.REVOKED) == [open_.transfer_id]
    assert sql.transfers.quarantine(ids, T0) == []  # held already, or over
    assert sql.control.quarantined_count() == 1


def test_a_revocation_overrides_a_lock_never_the_reverse(sql: SqlStores) -> None:
    control = sql.control
    assert control.set_lock("lab-a", "lock", "probes", T0, "detector")
    assert not control.set_lock("lab-a", "lock", "probes", T0, "detector")
    assert control.set_lock("lab-a", "revoke", "stolen key", T0, "admin-1")
    assert not control.set_lock("lab-a", "lock", "probes", T0, "detector")
    assert control.lock_of("lab-a") == ("revoke", "stolen key")
    assert [lock["name"] for lock in control.locks()] == ["lab-a"]
    assert control.clear_lock("lab-a")
    assert not control.clear_lock("lab-a")
    assert control.lock_of("lab-a") is None


def test_flags_and_commands_change_once(sql: SqlStores) -> None:
    control = sql.control
    assert not control.flag("frozen")
    assert control.set_flag("frozen", True, T0, "admin-1")
    assert not control.set_flag("frozen", True, T0, "admin-1")
    assert control.flag("frozen")
    assert control.set_flag("frozen", False, T0, "admin-1")
    assert control.record_command("c-1", T0, "admin-1", "freeze", None, {"payload": {}})
    assert not control.record_command("c-1", T0, "admin-1", "freeze", None, {"payload": {}})  # a replay


def test_a_console_challenge_is_taken_or_spent_once(sql: SqlStores) -> None:
    console = sql.console
    console.add_challenge("ch-1", "register", "admin-1", None, T0 + timedelta(minutes=5))
    assert console.take_challenge("ch-1", "command", T0) is None  # another purpose
    assert console.take_challenge("ch-1", "register", T0) == ("admin-1", None)
    assert console.take_challenge("ch-1", "register", T0) is None
    assert console.spend_challenge("ch-2", "signin", T0 + timedelta(minutes=5))
    assert not console.spend_challenge("ch-2", "signin", T0 + timedelta(minutes=5))
    assert console.add_passkey("cred-1", "admin-1", "key", "pub", 1, T0)
    assert not console.add_passkey("cred-1", "admin-1", "key", "pub", 1, T0)
    console.use_passkey("cred-1", 5, T0)
    console.use_passkey("cred-1", 3, T0)  # a lower count never replaces a higher one
    assert console.passkey("cred-1") == ("admin-1", "key", "pub", 5)


def test_the_audit_chain_grows_after_its_signed_head_and_is_pruned_to_an_anchor(sql: SqlStores) -> None:
    key = SigningKey.generate()

    def seal(seq: int, digest: str, at: datetime) -> Checkpoint:
        return sign_checkpoint(key, key.public, seq, digest, at)

    log = sql.audit
    for i in range(4):
        entry = AuditEntry(at=T0 + timedelta(days=i), event=AuditEvent.TRANSFER_LIST, actor="cnam", details={"n": i})
        link, head = log.append(entry, seal)
        assert (link.seq, head.seq, head.hash) == (i + 1, i + 1, link.hash)
    links = list(log.links())
    assert links[0].prev_hash == GENESIS
    assert verify_chain(links).ok
    assert log.hash_at(2) == links[1].hash
    assert log.activity() == 0
    assert log.count_events() == {AuditEvent.TRANSFER_LIST.value: 4}
    assert [r.seq for r in log.links_since(T0 + timedelta(days=2))] == [3, 4]
    assert log.prune_before(T0 + timedelta(days=10), seal) == 3  # never the head
    anchor = log.checkpoint("anchor")
    assert anchor is not None
    assert (anchor.seq, anchor.hash) == (3, links[2].hash)
    assert [r.seq for r in log.links()] == [4]
