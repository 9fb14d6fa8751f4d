"""The audit log cannot be rewritten unnoticed: ``audit verify`` finds any single-row change made directly in the
database and names the first bad record; a client holding a checkpoint catches even an operator who rewrote the
history and re-signed it with the relay's own key. Export is NDJSON that re-verifies on its own."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from labrelay.clock import SystemClock
from labrelay.config import load_settings
from labrelay.crypto.checkpoints import sign_checkpoint
from labrelay.crypto.keys import SigningKey
from labrelay.domain.audit import GENESIS, AuditEntry, AuditEvent, Outcome, chain_hash
from labrelay.domain.parties import Role
from labrelay.domain.timeutil import from_rfc3339
from labrelay.errors import AuditTampered, OperationalError
from labrelay.operations import audit_verify
from labrelay.runtime import engine_for, open_relay
from labrelay.storage.sql.audit import SqlAuditLog
from labrelay.storage.sql.engine import Database
from tests.support.world import World, sent_ids

COLUMNS = ("at", "event", "outcome", "actor", "transfer_id", "reason", "details", "prev_hash", "hash", "seq")


def busy_world(world: World, cli, batch: Path) -> None:
    result = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam")
    assert result.code == 0, str(result)
    assert sent_ids(result.out)
    fetched = cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", world.root / "in")
    assert fetched.code == 0, str(fetched)


def mutated(value: object, column: str) -> object:  # noqa: PLR0911 - one way to spoil each column
    if column == "seq":
        return int(value) + 1_000_000  # type: ignore[call-overload] - moved out of place
    if column == "at":
        return int(value) + 1  # type: ignore[call-overload]
    if column == "details":
        return json.dumps({**json.loads(str(value)), "extra": 1}, sort_keys=True, separators=(",", ":"))
    if column == "event":
        return "download:serve" if value != "download:serve" else "upload:chunk"
    if column == "outcome":
        return "refused" if value != "refused" else "ok"
    if column in ("prev_hash", "hash"):
        return "f" * 64
    return "someone-else" if value is None else str(value)[:-1] + "x"


@pytest.mark.threat("T11")
def test_verify_finds_every_single_row_change(world: World, cli, batch: Path, tmp_path: Path) -> None:
    busy_world(world, cli, batch)
    world.relay.stop()
    assert cli("audit", "verify", "--data", world.relay.data).code == 0
    db = world.relay.data / "relay.db"
    with sqlite3.connect(db) as conn:
        last = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0]
    assert last > 20
    cases: list[tuple[str, int | None]] = []
    for seq in (1, last // 2, last):
        cases += [(f"UPDATE {column} @{seq}", seq) for column in COLUMNS]
        cases.append((f"DELETE @{seq}", seq))
    cases += [("INSERT after head", last + 1), ("SWAP 3 4", 3)]
    cases += [(f"HEAD {column}", None) for column in ("seq", "hash", "signature", "delete")]
    cases += [("TAIL 3", last - 2), ("EMPTY all", 1)]
    for n, (case, expected) in enumerate(cases):
        copy = tmp_path / f"c{n}"
        shutil.copytree(world.relay.data, copy)
        with sqlite3.connect(copy / "relay.db") as conn:
            apply(conn, case)
        report = audit_verify(copy, SystemClock())
        assert not report.ok, case
        if expected is not None:
            assert report.first_bad_seq is not None, case
            assert report.first_bad_seq <= expected, (case, report.as_dict())
            if case.startswith("UPDATE") and not case.startswith(("UPDATE seq", "UPDATE prev_hash")):
                assert report.first_bad_seq == expected, (case, report.as_dict())
    # A relay never appends to a log cut behind its back: it stops instead of burying the evidence.
    cut = tmp_path / "cut"
    shutil.copytree(world.relay.data, cut)
    with sqlite3.connect(cut / "relay.db") as conn:
        apply(conn, "TAIL 3")
    relay = open_relay(load_settings(cut), SystemClock())
    try:
        with pytest.raises(AuditTampered, match="no signed head"):
            relay.services.auditor.record(AuditEvent.RELAY_START)
    finally:
        relay.close()
    # A mangled row is named, not a crash.
    mangled = tmp_path / "mangled"
    shutil.copytree(world.relay.data, mangled)
    with sqlite3.connect(mangled / "relay.db") as conn:
        conn.execute("UPDATE audit_events SET details = '{bad' WHERE seq = 7")
        conn.execute("UPDATE audit_events SET event = 'bogus' WHERE seq = 9")
    report = audit_verify(mangled, SystemClock())
    assert report.first_bad_seq == 7
    assert {seq for seq, _ in report.problems} >= {7, 9}
    # Through the command line: exit 3 and the first bad record named.
    broken = tmp_path / "cli"
    shutil.copytree(world.relay.data, broken)
    with sqlite3.connect(broken / "relay.db") as conn:
        apply(conn, "UPDATE actor @5")
    result = cli("audit", "verify", "--data", broken)
    assert result.code == 3, str(result)
    assert "first bad record: 5" in result.err


def apply(conn: sqlite3.Connection, case: str) -> None:
    words = case.split()
    if words[0] == "UPDATE":
        column, seq = words[1], int(words[2][1:])
        value = conn.execute(f"SELECT {column} FROM audit_events WHERE seq = ?", (seq,)).fetchone()[0]  # noqa: S608
        conn.execute(f"UPDATE audit_events SET {column} = ? WHERE seq = ?", (mutated(value, column), seq))  # noqa: S608
    elif words[0] == "DELETE":
        conn.execute("DELETE FROM audit_events WHERE seq = ?", (int(words[1][1:]),))
    elif words[0] == "INSERT":
        seq, prev = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        entry = AuditEntry(at=from_rfc3339("2026-11-28T12:00:00Z"), event=AuditEvent.AUTH_SUCCESS, actor="cnam")
        conn.execute(
            "INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, NULL, NULL, '{}', ?, ?)",
            (seq + 1, 0, "auth:success", "ok", "cnam", prev, chain_hash(entry, seq + 1, prev)),
        )
    elif words[0] == "SWAP":
        a, b = int(words[1]), int(words[2])
        conn.execute("UPDATE audit_events SET seq = -1 WHERE seq = ?", (a,))
        conn.execute("UPDATE audit_events SET seq = ? WHERE seq = ?", (a, b))
        conn.execute("UPDATE audit_events SET seq = ? WHERE seq = -1", (b,))
    elif words[0] == "TAIL":  # the last records and the signed head with them
        conn.execute("DELETE FROM audit_events WHERE seq > (SELECT max(seq) FROM audit_events) - ?", (int(words[1]),))
        conn.execute("DELETE FROM audit_checkpoints")
    elif words[0] == "EMPTY":  # everything, signed head included
        conn.execute("DELETE FROM audit_events")
        conn.execute("DELETE FROM audit_checkpoints")
    elif words[0] == "HEAD":
        if words[1] == "delete":
            conn.execute("DELETE FROM audit_checkpoints WHERE kind = 'head'")
        else:
            value = conn.execute(f"SELECT {words[1]} FROM audit_checkpoints WHERE kind = 'head'").fetchone()[0]  # noqa: S608
            new = int(value) - 1 if words[1] == "seq" else ("A" * len(value) if words[1] == "signature" else "e" * 64)
            conn.execute(f"UPDATE audit_checkpoints SET {words[1]} = ? WHERE kind = 'head'", (new,))  # noqa: S608
    conn.commit()


def rewrite_history(data: Path, seq: int, key: SigningKey | None = None) -> None:
    """What an operator with full access (database and the relay's key) can do: edit one record, recompute every
    hash after it, and sign a new head. On whichever database the relay uses."""
    engine = engine_for(load_settings(data))
    store = SqlAuditLog(Database(engine))
    links = list(store.links())
    key = key or SigningKey.load(data / "relay-signing.key")
    prev = GENESIS
    with engine.begin() as conn:
        for rec in links:
            entry = rec.entry
            if rec.seq == seq:
                entry = dataclasses.replace(entry, outcome=Outcome.REFUSED, reason="rewritten")
                conn.execute(
                    text("UPDATE audit_events SET outcome = 'refused', reason = 'rewritten' WHERE seq = :s"), {"s": seq}
                )
            digest = chain_hash(entry, rec.seq, prev)
            conn.execute(
                text("UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": prev, "h": digest, "s": rec.seq},
            )
            prev = digest
        head = sign_checkpoint(key, key.public, links[-1].seq, prev, links[-1].entry.at)
        conn.execute(
            text("UPDATE audit_checkpoints SET hash = :h, signature = :g, relay_key = :k WHERE kind = 'head'"),
            {"h": head.hash, "g": head.signature, "k": head.relay_key},
        )
    engine.dispose()


@pytest.mark.threat("T11")
def test_a_client_checkpoint_catches_a_rewritten_history(world: World, cli, batch: Path, relay_factory) -> None:
    busy_world(world, cli, batch)
    book = world.party_dir("cnam") / "checkpoints.json"
    held = json.loads(book.read_text())["relays"][world.url]
    assert held["latest"]["seq"] > 10
    assert cli("audit", "check", "--as", world.party_dir("cnam"), "--server", world.url).code == 0
    world.relay.stop()
    rewrite_history(world.relay.data, seq=3)
    # The operator's rewrite is consistent on its own: the chain and the re-signed head verify...
    assert cli("audit", "verify", "--data", world.relay.data).code == 0
    # ...but not against what the relay signed to a client before.
    against = cli("audit", "verify", "--data", world.relay.data, "--checkpoints", book)
    assert against.code == 3, str(against)
    assert "history" in against.out or "rewritten" in against.out
    relay = relay_factory(world.relay.data)
    check = cli("audit", "check", "--as", world.party_dir("cnam"), "--server", relay.url)
    assert check.code == 3, str(check)
    assert "rewritten" in check.err


@pytest.mark.threat("T11")
def test_replacing_the_relay_key_does_not_launder_a_rewritten_history(world: World, cli, batch: Path) -> None:
    busy_world(world, cli, batch)
    book = world.party_dir("cnam") / "checkpoints.json"
    published = world.root / "relay.pub"
    shutil.copy(world.relay.data / "relay.pub", published)
    world.relay.stop()
    # The operator deletes the relay's key and re-signs a rewritten log with a new one.
    (world.relay.data / "relay-signing.key").unlink()
    (world.relay.data / "relay.pub").unlink()
    with pytest.raises(OperationalError, match="missing"):
        open_relay(load_settings(world.relay.data), SystemClock())  # never a silent new key
    new_key = SigningKey.generate()
    new_key.save(world.relay.data / "relay-signing.key")
    (world.relay.data / "relay.pub").write_bytes(new_key.public.to_pem())
    rewrite_history(world.relay.data, seq=3, key=new_key)
    assert cli("audit", "verify", "--data", world.relay.data).code == 0  # consistent with the new key...
    with_pin = cli("audit", "verify", "--data", world.relay.data, "--relay-key", published)
    assert with_pin.code == 3, str(with_pin)  # ...but not with the key the relay published
    with_book = cli("audit", "verify", "--data", world.relay.data, "--checkpoints", book)
    assert with_book.code == 3, str(with_book)  # nor with what clients kept
    assert "another relay key" in with_book.out


@pytest.mark.scaled("the audit chain that two replicas and the worker append to in PostgreSQL")
def test_export_is_ndjson_that_re_verifies(world: World, cli, batch: Path) -> None:
    busy_world(world, cli, batch)
    out = world.root / "audit.ndjson"
    assert cli("audit", "export", "--data", world.relay.data, "--out", out).code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [doc["seq"] for doc in lines] == list(range(1, len(lines) + 1))
    prev = GENESIS
    for doc in lines:
        entry = AuditEntry(
            at=from_rfc3339(doc["at"]),
            event=AuditEvent(doc["event"]),
            outcome=Outcome(doc["outcome"]),
            actor=doc["actor"],
            transfer_id=doc["transfer_id"],
            reason=doc["reason"],
            details=doc["details"],
        )
        assert doc["prev"] == prev
        assert chain_hash(entry, doc["seq"], prev) == doc["hash"]
        prev = doc["hash"]
    # No payload data and no identifier of a person in the log: no NIR, name, phone or e-mail from the batch.
    text = out.read_text()
    with batch.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for column in ("nir", "nom", "telephone", "email", "prescripteur_rpps"):
            assert f'"{row[column]}"' not in text, column
    # Through the API, for an administrator only.
    admin = world.add("admin-1", Role.ADMIN)
    via_api = world.root / "api.ndjson"
    assert cli("audit", "export", "--as", admin.path, "--server", world.url, "--out", via_api).code == 0
    assert via_api.read_text().splitlines()[: len(lines)] == out.read_text().splitlines()
    denied = cli("audit", "export", "--as", world.party_dir("cnam"), "--server", world.url, "--out", world.root / "x")
    assert denied.code == 3
