"""Hybrid post-quantum age recipients (``age1pq1…``, 1,959 characters) in the directory: the parties' age recipient
column widens from 80 characters (a classic X25519 recipient has 62) to 2,048.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("parties") as batch:  # SQLite alters a column by copying the table
        batch.alter_column("age_recipient", existing_type=sa.String(80), type_=sa.String(2048), existing_nullable=False)


def downgrade() -> None:
    longest = op.get_bind().execute(sa.text("SELECT MAX(LENGTH(age_recipient)) FROM parties")).scalar()
    if longest is not None and longest > 80:
        raise RuntimeError(
            "the directory holds hybrid post-quantum recipients (longer than 80 characters): a relay before migration "
            "0008 cannot hold them; revoke or rotate those parties before downgrading"
        )
    with op.batch_alter_table("parties") as batch:
        batch.alter_column("age_recipient", existing_type=sa.String(2048), type_=sa.String(80), existing_nullable=False)
