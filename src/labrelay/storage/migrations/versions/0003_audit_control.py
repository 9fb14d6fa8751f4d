"""Signed audit head and anchor, party locks, the freeze flag, signed admin commands, quarantine.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("relay_key", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_table(
        "locks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("by", sa.String(80), nullable=False),
    )
    op.create_table(
        "relay_flags",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("by", sa.String(80), nullable=False),
    )
    op.create_table(
        "admin_commands",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("at", sa.BigInteger, nullable=False),
        sa.Column("signer", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("target", sa.String(64), nullable=True),
        sa.Column("envelope", sa.Text, nullable=False),
    )
    op.add_column("transfers", sa.Column("quarantined_at", sa.BigInteger, nullable=True))
    # A log written before signed heads: mark its last record as adopted, so the relay signs its first head on
    # top of it. (A log without head and without this mark, but with records, is refused as tampered.)
    op.execute(
        "INSERT INTO audit_checkpoints (kind, seq, hash, at, relay_key, signature) "
        "SELECT 'adopted', seq, hash, at, '', '' FROM audit_events ORDER BY seq DESC LIMIT 1"
    )


def downgrade() -> None:
    op.drop_column("transfers", "quarantined_at")
    for table in ("admin_commands", "relay_flags", "locks", "audit_checkpoints"):
        op.drop_table(table)
