"""Schema migrations (Alembic), run programmatically: ``labrelay server init`` and ``server upgrade``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from labrelay.errors import OperationalError

_SCRIPTS = Path(__file__).with_name("migrations")


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise OperationalError("no migrations shipped")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Bring the schema to the shipped head; return it."""
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return head_revision()


def require_head(engine: Engine) -> None:
    """Refuse to serve on a schema older (or newer) than this code's."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise OperationalError(
            f"database schema is at {current or 'nothing'}, this relay needs {head}",
            hint="run: labrelay server upgrade --data DATA_DIR",
        )
