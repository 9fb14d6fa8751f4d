"""The SQL stores of one database, made together: what the composition root and the operator commands open."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from labrelay.storage.sql.audit import SqlAuditLog
from labrelay.storage.sql.console import SqlConsole
from labrelay.storage.sql.control import SqlControl
from labrelay.storage.sql.directory import SqlDirectory
from labrelay.storage.sql.engine import Database
from labrelay.storage.sql.nonces import SqlNonces
from labrelay.storage.sql.policies import SqlPolicies
from labrelay.storage.sql.transfers import SqlTransfers


@dataclass(frozen=True)
class SqlStores:
    """One store per port, sharing ``db``."""

    db: Database
    directory: SqlDirectory
    policies: SqlPolicies
    nonces: SqlNonces
    transfers: SqlTransfers
    audit: SqlAuditLog
    console: SqlConsole
    control: SqlControl

    @classmethod
    def on(cls, engine: Engine) -> SqlStores:
        db = Database(engine)
        transfers = SqlTransfers(db)
        return cls(
            db=db,
            directory=SqlDirectory(db),
            policies=SqlPolicies(db),
            nonces=SqlNonces(db),
            transfers=transfers,
            audit=SqlAuditLog(db),
            console=SqlConsole(db),
            control=SqlControl(db, transfers),
        )
