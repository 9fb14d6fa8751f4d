"""A recipient's signed refusal of a payload, kept with its transfer (which it quarantines).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("transfers", sa.Column("refusal_envelope", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("transfers", "refusal_envelope")
