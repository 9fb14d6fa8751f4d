"""``labrelay.ports.Witness`` in a file: the signed audit heads the worker verified, kept away from the database (on
another host, ideally), in the checkpoints format that ``labrelay audit verify --checkpoints`` reads, the format of a
party's ``checkpoints.json``: ``{"relays": {URL: {"relay_key", "latest", "history"}}}``.

The rules are those a party applies to the heads it is sent: the first head pins the relay's key, every later one
must verify with it, and a head never goes back nor changes hash for a record already witnessed. Kept: the latest
head, and older ones at least an hour apart.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from labrelay.crypto.checkpoints import verify_checkpoint
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import Checkpoint
from labrelay.errors import AuditTampered, IntegrityError

KEEP = 48  # older heads kept
SPACING = timedelta(hours=1)  # between two older heads kept


class FileWitness:
    """The heads of the relay known as ``url``, in the file ``path`` (read when made, rewritten atomically, 0600,
    whenever a new head is kept; the entries of other relays in it are kept as they are)."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.url = url
        self._relays: dict[str, Any] = dict(_read(path).get("relays", {})) if path.exists() else {}
        self._key: str | None = None
        self._latest: Checkpoint | None = None
        self._history: list[Checkpoint] = []
        entry = self._relays.get(url)
        if entry is not None:
            try:
                self._key = str(entry["relay_key"])
                self._latest = Checkpoint.from_doc(entry["latest"]) if entry.get("latest") else None
                self._history = [Checkpoint.from_doc(d) for d in entry.get("history", [])]
            except (KeyError, TypeError, ValueError) as exc:
                raise IntegrityError(f"{path}: unreadable checkpoint record for {url}: {exc}") from None

    def observe(self, checkpoint: Checkpoint) -> None:
        self._verify(checkpoint)
        latest = self._latest
        if latest is not None:
            if checkpoint.seq < latest.seq:
                raise AuditTampered(
                    f"relay {self.url}: its audit log went back from record {latest.seq} to {checkpoint.seq} "
                    "(truncated, or restored from an older copy)"
                )
            if checkpoint.seq == latest.seq and checkpoint.hash != latest.hash:
                raise AuditTampered(
                    f"relay {self.url}: two different audit records {latest.seq}, both signed: rewritten"
                )
            if checkpoint.seq == latest.seq:
                return
            if not self._history or latest.at - self._history[-1].at >= SPACING:
                self._history.append(latest)
                del self._history[:-KEEP]
        self._latest = checkpoint
        self._save()

    def _verify(self, checkpoint: Checkpoint) -> None:
        """The first head pins the key it names; every later one verifies with that key."""
        if self._key is None:
            verify_checkpoint(checkpoint)
            self._key = checkpoint.relay_key
            return
        try:
            verify_checkpoint(checkpoint, VerifyKey.from_b64(self._key))
        except IntegrityError as exc:
            raise AuditTampered(
                f"relay {self.url}: {exc.message}",
                hint=f"if the relay's operator announced a new key, remove {self.url} from {self.path}",
            ) from None

    def _save(self) -> None:
        self._relays[self.url] = {
            "relay_key": self._key,
            "latest": self._latest.to_doc() if self._latest else None,
            "history": [c.to_doc() for c in self._history],
        }
        _write_atomic(self.path, {"relays": dict(sorted(self._relays.items()))})


def _read(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    return doc


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write through a temporary name (0600, fsync'd), then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
