"""The relay's database schema (SQLAlchemy Core). Migrations in ``migrations/`` must produce exactly this.

Instants are Unix seconds (BIGINT), so that SQLite and PostgreSQL compare them the same way. No column holds
payload data: the relay never has any.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

parties = Table(
    "parties",
    metadata,
    Column("serial", String(36), primary_key=True),
    Column("name", String(64), nullable=False, index=True),
    Column("role", String(16), nullable=False),
    Column("region", String(2), nullable=True),
    Column("age_recipient", String(2048), nullable=False),  # a hybrid recipient has 1,959 characters (0008)
    Column("signing_key", String(64), nullable=False),
    Column("not_before", BigInteger, nullable=False),
    Column("not_after", BigInteger, nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("envelope", Text, nullable=False),
    Column("registered_at", BigInteger, nullable=False),
)

revocations = Table(
    "revocations",
    metadata,
    Column("serial", String(36), primary_key=True),
    Column("name", String(64), nullable=False, index=True),
    Column("revoked_at", BigInteger, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("envelope", Text, nullable=False),
    Column("registered_at", BigInteger, nullable=False),
)

nonces = Table(
    "nonces",
    metadata,
    Column("keyid", String(80), primary_key=True),
    Column("nonce", String(128), primary_key=True),
    Column("created", BigInteger, nullable=False, index=True),
)

transfers = Table(
    "transfers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("batch_id", String(36), nullable=False, index=True),
    Column("sender", String(64), nullable=False, index=True),
    Column("recipient", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("uploaded", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("deadline", BigInteger, nullable=False, index=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("receipt", Text, nullable=True),
    Column("quarantined_at", BigInteger, nullable=True),
    Column("refusal_envelope", Text, nullable=True),  # the recipient's signed refusal (migration 0005)
    Column("quarantine_reason", String(16), nullable=True),  # why it is held: admin, revoked, refused, corrupt (0007)
    Column("upload_mark", String(32), nullable=True),  # a random token, new on every offset write (0009)
    Index("ix_transfers_recipient_state", "recipient", "state"),
)

# The S3 payload store's ledger (migration 0009, decision 0021): every object it wrote for a transfer, the upload's
# at-rest header (the data key wrapped under its epoch key: no payload byte) and the publication (the index of the
# published chunks), so that uploads and downloads never list the bucket. Empty on the local directory store.
payload_objects = Table(
    "payload_objects",
    metadata,
    Column("transfer_id", String(36), primary_key=True),
    Column("name", String(40), primary_key=True),  # "header", "published", or a chunk's <start:016d>-<end:016d>
    Column("state", String(10), nullable=False),  # pending (PUT under way), stored, dropped (off the chain)
    Column("start", BigInteger, nullable=True),
    Column("end", BigInteger, nullable=True),
    Column("stored", BigInteger, nullable=True),  # bytes of the object
    Column("etag", String(80), nullable=True),
    Column("version", String(1024), nullable=True),  # the object version the PUT created (versioned buckets)
    Column("attempts", BigInteger, nullable=False),  # PUTs of this key (1: every version of it is known)
    Column("body", Text, nullable=True),  # the header (base64) or the published index (JSON)
)

policies = Table(
    "policies",
    metadata,
    Column("version", String(64), primary_key=True),
    Column("envelope", Text, nullable=False),  # the latest issue of this version (a renewal replaces it)
    Column("registered_at", BigInteger, nullable=False),
    # What orders and bounds a policy (migration 0006); NULL for a policy signed before: never in force again.
    Column("issue", BigInteger, nullable=True),
    Column("not_after", BigInteger, nullable=True),
    Index("ix_policies_issue", "issue", unique=True),
)

policy_withdrawals = Table(
    "policy_withdrawals",
    metadata,
    Column("serial", String(36), primary_key=True),
    Column("version", String(64), nullable=False, index=True),
    Column("withdrawn_at", BigInteger, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("envelope", Text, nullable=False),
    Column("registered_at", BigInteger, nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", BigInteger, nullable=False, index=True),
    Column("event", String(40), nullable=False, index=True),
    Column("outcome", String(10), nullable=False),
    Column("actor", String(80), nullable=True, index=True),
    Column("transfer_id", String(36), nullable=True),
    Column("reason", String(40), nullable=True),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("kind", String(8), primary_key=True),  # "head": the signed head; "anchor": last record pruned
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("relay_key", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

locks = Table(
    "locks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(8), nullable=False),  # "lock" (a detection rule or an admin) or "revoke" (an admin)
    Column("reason", String(40), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("by", String(80), nullable=False),
)

relay_flags = Table(
    "relay_flags",
    metadata,
    Column("name", String(32), primary_key=True),  # "frozen"
    Column("at", BigInteger, nullable=False),
    Column("by", String(80), nullable=False),
)

SQLITE_ONLY = frozenset({"standing_generation"})
"""Tables migration 0010 makes on SQLite alone."""

# SQLite only (migration 0010): one number, raised by triggers on parties, revocations, locks and relay_flags.
standing_generation = Table(
    "standing_generation",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

admin_commands = Table(
    "admin_commands",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("at", BigInteger, nullable=False),
    Column("signer", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("target", String(64), nullable=True),
    Column("envelope", Text, nullable=False),
)

# The web console (docs/web.md): passkeys bound to directory parties, sign-in sessions, one-use WebAuthn challenges.
# Sessions are kept by the SHA-256 of their token (a copy of the database yields no usable session).
passkeys = Table(
    "passkeys",
    metadata,
    Column("credential_id", String(1400), primary_key=True),  # base64url
    Column("party", String(64), nullable=False, index=True),
    Column("signing_key", String(64), nullable=False),  # the party's key in force when the passkey was bound
    Column("public_key", Text, nullable=False),  # COSE key, base64url
    Column("sign_count", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("party", String(64), nullable=False),
    Column("credential_id", String(1400), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
)

console_challenges = Table(
    "console_challenges",
    metadata,
    Column("challenge", String(64), primary_key=True),  # base64url of 32 random bytes, or of a command's hash
    Column("purpose", String(16), nullable=False),  # register, signin, command
    Column("party", String(64), nullable=True),
    Column("payload", Text, nullable=True),  # the command a "command" challenge approves
    Column("expires_at", BigInteger, nullable=False),
)
