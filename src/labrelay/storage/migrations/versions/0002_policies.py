"""Routing policies signed by the directory authority.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("registered_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("policies")
