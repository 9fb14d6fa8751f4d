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

from pathlib import Path

from labrelay.crypto.checkpoints import RelayBook
from labrelay.domain.audit import Checkpoint
from labrelay.jsonfile import read_json, write_json_atomic

CHECKPOINTS_FILE = "checkpoints.json"


class CheckpointBook:
    """Checkpoints per relay URL, in one file of a party's directory (the rules: ``crypto.checkpoints.RelayBook``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._relays: dict[str, RelayBook] = {}
        self._dirty = False
        if path.exists():
            doc = read_json(path)
            for url, entry in dict(doc.get("relays", {})).items():
                self._relays[url] = RelayBook.from_doc(entry, f"{path}, relay {url}")

    def urls(self) -> list[str]:
        return sorted(self._relays)

    def held_for_key(self, relay_key: str) -> list[Checkpoint]:
        """Every checkpoint kept from relays with this key (a relay may move to another URL)."""
        return [cp for b in self._relays.values() if b.relay_key == relay_key for cp in b.all()]

    def book(self, url: str) -> RelayBook | None:
        return self._relays.get(url)

    def observe(self, url: str, checkpoint: Checkpoint, *, floor: int | None = None) -> None:
        """A checkpoint the relay at ``url`` just sent: verify, compare, keep.

        ``floor``: the latest record this client had seen when it sent the request answered (None: the request was
        the only one in flight). The answer to a request sent alongside others may carry an older head than the
        answer to a later one: it is verified with the pinned key and refused below ``floor``, not kept."""
        book = self._relays.get(url)
        if book is None:  # first contact: pin the key it names
            book = self._relays[url] = RelayBook.pinned_by(checkpoint)
        hint = f"if the relay's operator announced a new key, remove {url} from {self.path}"
        latest = book.latest
        if floor is not None and latest is not None and floor <= checkpoint.seq < latest.seq:
            RelayBook(book.relay_key).observe(checkpoint, url, hint)  # its signature, by the pinned key
            return
        if book.observe(checkpoint, url, hint):
            self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        doc = {"relays": {url: b.to_doc() for url, b in sorted(self._relays.items())}}
        write_json_atomic(self.path, doc)
        self._dirty = False
