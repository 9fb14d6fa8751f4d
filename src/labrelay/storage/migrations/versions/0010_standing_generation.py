"""The standing generation (decision 0027): one number that any change to the directory's entries, its revocations,
the relay's locks or its flags raises in the same transaction, so that a relay may keep what it read of them while
the number is unchanged (``storage/sql/standing.py``, which checks that these twelve triggers are all there). SQLite
only: a PostgreSQL relay reads them on each request.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

WATCHED = ("parties", "revocations", "locks", "relay_flags")
CHANGES = ("INSERT", "UPDATE", "DELETE")
_TRIGGER = (  # filled with this file's constants only
    "CREATE TRIGGER {name} AFTER {change} ON {table} "
    "BEGIN UPDATE standing_generation SET value = value + 1 WHERE id = 1; END"
)


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def upgrade() -> None:
    if not _sqlite():
        return
    op.create_table(
        "standing_generation",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO standing_generation (id, value) VALUES (1, 0)")
    for table in WATCHED:
        for change in CHANGES:
            op.execute(_TRIGGER.format(name=f"standing_{table}_{change.lower()}", change=change, table=table))


def downgrade() -> None:
    if not _sqlite():
        return
    for table in WATCHED:
        for change in CHANGES:
            op.execute(f"DROP TRIGGER standing_{table}_{change.lower()}")
    op.drop_table("standing_generation")
