"""Routing policies ordered and bounded (T30): each policy's issue number and end of validity, and the authority's
signed withdrawals of policy versions.

Policies registered before keep NULL in both columns: signed without them, they are never in force again (the
authority signs the policy in force anew: ``labrelay authority publish-policy``).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("policies", sa.Column("issue", sa.BigInteger, nullable=True))
    op.add_column("policies", sa.Column("not_after", sa.BigInteger, nullable=True))
    op.create_index("ix_policies_issue", "policies", ["issue"], unique=True)
    op.create_table(
        "policy_withdrawals",
        sa.Column("serial", sa.String(36), primary_key=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("withdrawn_at", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("registered_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_policy_withdrawals_version", "policy_withdrawals", ["version"])


def downgrade() -> None:
    op.drop_index("ix_policy_withdrawals_version", "policy_withdrawals")
    op.drop_table("policy_withdrawals")
    op.drop_index("ix_policies_issue", "policies")
    with op.batch_alter_table("policies") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("not_after")
        batch.drop_column("issue")
