"""SQL implementations of the relay's metadata ports (SQLAlchemy Core): SQLite (WAL) by default, PostgreSQL at scale.

One small class per port (``SqlDirectory``, ``SqlPolicies``, ``SqlNonces``, ``SqlTransfers``, ``SqlAuditLog``,
``SqlConsole``, ``SqlControl``; ``SqlTransferLocks`` and ``SqlLeader``), all sharing one ``engine.Database``;
``stores.SqlStores`` holds the stores of one database together for the composition root.

The same statements run on both databases. Where several processes share one PostgreSQL database (relay replicas
and the worker), what one process serialised with a thread lock is serialised across processes too: the audit
chain's appends under a transaction-scoped advisory lock, transfer uploads under session advisory locks
(``SqlTransferLocks``), and the worker's leadership under a session advisory lock held for its life
(``SqlLeader``). Every database failure reaches callers as ``Unavailable`` (retry later) or ``StorageFull``, never
as a driver exception: each statement runs inside ``Database.begin()`` or ``Database.connect()``, which translate
them, and the HTTP edge maps those to 503 and 507, which clients retry.
"""
