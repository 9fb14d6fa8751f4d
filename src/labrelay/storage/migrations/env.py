"""Alembic environment: migrations run on the connection ``labrelay.storage.migrate`` hands over."""

from __future__ import annotations

from alembic import context

from labrelay.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - we never run alembic from its own CLI
    raise RuntimeError("run migrations through `labrelay server init` or `labrelay server upgrade`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
