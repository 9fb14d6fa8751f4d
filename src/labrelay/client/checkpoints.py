"""The audit checkpoints a client keeps: the relay's signed word on what its audit log said.

Every response to a signed request carries the relay's latest signed audit head (``Labrelay-Checkpoint``). The
client checks the signature against the relay key it pinned on first contact (trust on first use, like ssh; a key
that changes is refused), refuses a head that goes backwards (a truncated or restored log), and keeps checkpoints in
``DIR/NAME/checkpoints.json``: the latest, and older ones at least an hour apart. ``labrelay audit check`` later
asks the relay for the hash of each kept record: a relay that rewrote any record up to a kept checkpoint cannot
answer with the hash it signed. The operator's ``labrelay audit verify --checkpoints FILE`` compares the same
checkpoints with the database itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from labrelay.client.files import read_json, write_json_atomic
from labrelay.crypto.checkpoints import verify_checkpoint
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import Checkpoint
from labrelay.errors import AuditTampered, IntegrityError

CHECKPOINTS_FILE = "checkpoints.json"
KEEP = 48
SPACING = timedelta(hours=1)


@dataclass
class RelayBook:
    relay_key: str
    latest: Checkpoint | None = None
    history: list[Checkpoint] = field(default_factory=list)

    def all(self) -> list[Checkpoint]:
        return [*self.history, *([self.latest] if self.latest else [])]


class CheckpointBook:
    """Checkpoints per relay URL, in one file of a party's directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._relays: dict[str, RelayBook] = {}
        self._dirty = False
        if path.exists():
            doc = read_json(path)
            for url, entry in dict(doc.get("relays", {})).items():
                try:
                    book = RelayBook(str(entry["relay_key"]))
                    if entry.get("latest"):
                        book.latest = Checkpoint.from_doc(entry["latest"])
                    book.history = [Checkpoint.from_doc(d) for d in entry.get("history", [])]
                except (KeyError, TypeError, ValueError) as exc:
                    raise IntegrityError(f"{path}: unreadable checkpoint record for {url}: {exc}") from None
                self._relays[url] = book

    def urls(self) -> list[str]:
        return sorted(self._relays)

    def held_for_key(self, relay_key: str) -> list[Checkpoint]:
        """Every checkpoint kept from relays with this key (a relay may move to another URL)."""
        return [cp for b in self._relays.values() if b.relay_key == relay_key for cp in b.all()]

    def book(self, url: str) -> RelayBook | None:
        return self._relays.get(url)

    def observe(self, url: str, checkpoint: Checkpoint) -> None:
        """A checkpoint the relay at ``url`` just sent: verify, compare, keep."""
        book = self._relays.get(url)
        if book is None:
            verify_checkpoint(checkpoint)  # first contact: pin the key it names
            book = self._relays[url] = RelayBook(checkpoint.relay_key)
        else:
            try:
                verify_checkpoint(checkpoint, VerifyKey.from_b64(book.relay_key))
            except IntegrityError as exc:
                raise AuditTampered(
                    f"relay {url}: {exc.message}",
                    hint=f"if the relay's operator announced a new key, remove {url} from {self.path}",
                ) from None
        latest = book.latest
        if latest is not None:
            if checkpoint.seq < latest.seq:
                raise AuditTampered(
                    f"relay {url}: its audit log went back from record {latest.seq} to {checkpoint.seq} "
                    "(truncated, or restored from an older copy)"
                )
            if checkpoint.seq == latest.seq and checkpoint.hash != latest.hash:
                raise AuditTampered(f"relay {url}: two different audit records {latest.seq}, both signed: rewritten")
            if checkpoint.seq == latest.seq:
                return
            if not book.history or latest.at - book.history[-1].at >= SPACING:
                book.history.append(latest)
                del book.history[:-KEEP]
        book.latest = checkpoint
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        doc: dict[str, Any] = {
            "relays": {
                url: {
                    "relay_key": b.relay_key,
                    "latest": b.latest.to_doc() if b.latest else None,
                    "history": [c.to_doc() for c in b.history],
                }
                for url, b in sorted(self._relays.items())
            }
        }
        write_json_atomic(self.path, doc)
        self._dirty = False
