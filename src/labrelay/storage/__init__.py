"""Adapters implementing ``labrelay.ports`` on real storage.

- ``sql``: metadata, directory, nonces and the audit chain through SQLAlchemy Core, one class per port (SQLite in
  WAL mode by default; the same schema and migrations serve PostgreSQL);
- ``files``: ciphertext payloads in a local directory, written through a temporary name and fsync'd, published
  by an atomic rename;
- ``witness``: the signed audit heads the worker verified, in a checkpoints file away from the database.
"""
