"""``labrelay.ports.ConsoleStore`` in SQL: the console's passkeys, sessions (by token hash) and one-use challenges."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update

from labrelay.domain.timeutil import to_epoch
from labrelay.storage import schema
from labrelay.storage.sql.engine import Database
from labrelay.storage.sql.rows import insert_new


class SqlConsole:
    """Passkeys bound to parties, sessions kept by the hash of their token, challenges deleted when taken."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_passkey(
        self, credential_id: str, party: str, signing_key: str, public_key: str, sign_count: int, at: datetime
    ) -> bool:
        row = {
            "credential_id": credential_id,
            "party": party,
            "signing_key": signing_key,
            "public_key": public_key,
            "sign_count": sign_count,
            "created_at": to_epoch(at),
        }
        return insert_new(self._db, schema.passkeys, row)

    def passkey(self, credential_id: str) -> tuple[str, str, str, int] | None:
        t = schema.passkeys
        with self._db.connect() as conn:
            row = conn.execute(
                select(t.c.party, t.c.signing_key, t.c.public_key, t.c.sign_count).where(
                    t.c.credential_id == credential_id
                )
            ).first()
        return (str(row.party), str(row.signing_key), str(row.public_key), int(row.sign_count)) if row else None

    def passkeys_of(self, party: str) -> list[str]:
        t = schema.passkeys
        with self._db.connect() as conn:
            q = select(t.c.credential_id).where(t.c.party == party).order_by(t.c.created_at)
            return [str(r.credential_id) for r in conn.execute(q)]

    def use_passkey(self, credential_id: str, sign_count: int, at: datetime) -> None:
        t = schema.passkeys
        with self._db.begin() as conn:
            # Never lower a counter: of two concurrent sign-ins, the later count stays.
            conn.execute(
                update(t)
                .where(t.c.credential_id == credential_id, t.c.sign_count <= sign_count)
                .values(sign_count=sign_count, used_at=to_epoch(at))
            )

    def remove_passkeys(self, party: str) -> int:
        with self._db.begin() as conn:
            return int(conn.execute(schema.passkeys.delete().where(schema.passkeys.c.party == party)).rowcount)

    def add_challenge(
        self, challenge: str, purpose: str, party: str | None, payload: str | None, expires: datetime
    ) -> None:
        with self._db.begin() as conn:
            conn.execute(
                insert(schema.console_challenges).values(
                    challenge=challenge, purpose=purpose, party=party, payload=payload, expires_at=to_epoch(expires)
                )
            )

    def take_challenge(self, challenge: str, purpose: str, now: datetime) -> tuple[str | None, str | None] | None:
        t = schema.console_challenges
        with self._db.begin() as conn:
            row = conn.execute(
                select(t.c.party, t.c.payload, t.c.expires_at).where(t.c.challenge == challenge, t.c.purpose == purpose)
            ).first()
            if row is None:
                return None
            # Deleting is what makes it one-use: of two concurrent takers, one deletes the row, the other none.
            gone = conn.execute(t.delete().where(t.c.challenge == challenge, t.c.purpose == purpose)).rowcount
            if gone != 1 or row.expires_at <= to_epoch(now):
                return None
            return (row.party, row.payload)

    def spend_challenge(self, challenge: str, purpose: str, expires: datetime) -> bool:
        # The primary key makes it once only, across replicas: of two concurrent spenders, one inserts.
        row = {"challenge": challenge, "purpose": purpose, "party": None, "payload": None}
        return insert_new(self._db, schema.console_challenges, {**row, "expires_at": to_epoch(expires)})

    def add_session(self, token_hash: str, party: str, credential_id: str, at: datetime, expires: datetime) -> None:
        with self._db.begin() as conn:
            conn.execute(
                insert(schema.console_sessions).values(
                    token_hash=token_hash,
                    party=party,
                    credential_id=credential_id,
                    created_at=to_epoch(at),
                    expires_at=to_epoch(expires),
                )
            )

    def session(self, token_hash: str, now: datetime) -> tuple[str, str] | None:
        t = schema.console_sessions
        with self._db.connect() as conn:
            row = conn.execute(
                select(t.c.party, t.c.credential_id).where(t.c.token_hash == token_hash, t.c.expires_at > to_epoch(now))
            ).first()
        return (str(row.party), str(row.credential_id)) if row else None

    def end_session(self, token_hash: str) -> bool:
        t = schema.console_sessions
        with self._db.begin() as conn:
            return bool(conn.execute(t.delete().where(t.c.token_hash == token_hash)).rowcount)

    def end_sessions_of(self, party: str) -> int:
        t = schema.console_sessions
        with self._db.begin() as conn:
            return int(conn.execute(t.delete().where(t.c.party == party)).rowcount)

    def prune_console(self, now: datetime) -> int:
        cutoff = to_epoch(now)
        with self._db.begin() as conn:
            sessions = conn.execute(
                schema.console_sessions.delete().where(schema.console_sessions.c.expires_at <= cutoff)
            ).rowcount
            challenges = conn.execute(
                schema.console_challenges.delete().where(schema.console_challenges.c.expires_at <= cutoff)
            ).rowcount
        return int(sessions) + int(challenges)
