"""Initial schema: directory, revocations, nonces, transfers, audit chain.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "parties",
        sa.Column("serial", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("region", sa.String(2), nullable=True),
        sa.Column("age_recipient", sa.String(80), nullable=False),
        sa.Column("signing_key", sa.String(64), nullable=False),
        sa.Column("not_before", sa.BigInteger, nullable=False),
        sa.Column("not_after", sa.BigInteger, nullable=False),
        sa.Column("issued_at", sa.BigInteger, nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("registered_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_parties_name", "parties", ["name"])
    op.create_table(
        "revocations",
        sa.Column("serial", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("registered_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_revocations_name", "revocations", ["name"])
    op.create_table(
        "nonces",
        sa.Column("keyid", sa.String(80), primary_key=True),
        sa.Column("nonce", sa.String(128), primary_key=True),
        sa.Column("created", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_nonces_created", "nonces", ["created"])
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("batch_id", sa.String(36), nullable=False),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("uploaded", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("deadline", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("receipt", sa.Text, nullable=True),
    )
    op.create_index("ix_transfers_batch_id", "transfers", ["batch_id"])
    op.create_index("ix_transfers_sender", "transfers", ["sender"])
    op.create_index("ix_transfers_deadline", "transfers", ["deadline"])
    op.create_index("ix_transfers_recipient_state", "transfers", ["recipient", "state"])
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("outcome", sa.String(10), nullable=False),
        sa.Column("actor", sa.String(80), nullable=True),
        sa.Column("transfer_id", sa.String(36), nullable=True),
        sa.Column("reason", sa.String(40), nullable=True),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_event", "audit_events", ["event"])
    op.create_index("ix_audit_events_actor", "audit_events", ["actor"])


def downgrade() -> None:
    for table in ("audit_events", "transfers", "nonces", "revocations", "parties"):
        op.drop_table(table)
