"""Why a transfer is held: an administrator's quarantine, a revocation, its recipient's refusal, or the relay's
stored copy failing its at-rest integrity check (which its recipient and its sender are told).

Holds recorded before keep NULL: a refused transfer's reason is read from its refusal, any other as an
administrator's.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("transfers", sa.Column("quarantine_reason", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("transfers", "quarantine_reason")
