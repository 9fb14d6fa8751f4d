"""The S3 payload store's ledger (decision 0021): what the relay wrote to the bucket for each transfer, so that
uploads and downloads need no listing. One row per upload header, per chunk object and per publication. And
``transfers.upload_mark``: a random token written with every change of an upload's offset, so that a replica's
running hash of an upload is used only if nobody else moved the upload since (``RunningHashes``).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("transfers", sa.Column("upload_mark", sa.String(32), nullable=True))
    op.create_table(
        "payload_objects",
        sa.Column("transfer_id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("start", sa.BigInteger, nullable=True),
        sa.Column("end", sa.BigInteger, nullable=True),
        sa.Column("stored", sa.BigInteger, nullable=True),
        sa.Column("etag", sa.String(80), nullable=True),
        sa.Column("version", sa.String(1024), nullable=True),
        sa.Column("attempts", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=True),
    )


def downgrade() -> None:
    held = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM payload_objects")).scalar()
    if held:
        raise RuntimeError(
            "the S3 payload store's ledger holds uploads or payloads: a relay before migration 0009 could neither read "
            "nor delete them (their headers and indexes are in this table, not in the bucket); let them be delivered "
            "or expire (the reaper empties the table) before downgrading"
        )
    op.drop_table("payload_objects")
    with op.batch_alter_table("transfers") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("upload_mark")
