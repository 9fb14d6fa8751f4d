"""``labrelay.ports.Witness`` in a file: the signed audit heads the worker verified, kept away from the database (on
another host, ideally), in the checkpoints format that ``labrelay audit verify --checkpoints`` reads, the format of a
party's ``checkpoints.json``: ``{"relays": {URL: {"relay_key", "latest", "history"}}}``.

The rules are a party's, from the same code (``labrelay.crypto.checkpoints.RelayBook``): the first head pins the
relay's key, every later one must verify with it, and a head never goes back nor changes hash for a record already
witnessed. Kept: the latest head, and older ones at least an hour apart.
"""

from __future__ import annotations

from pathlib import Path

from labrelay.crypto.checkpoints import RelayBook
from labrelay.domain.audit import Checkpoint
from labrelay.jsonfile import read_json, write_json_atomic


class FileWitness:
    """The heads of the relay known as ``url``, in the file ``path`` (read when made, every relay's entry checked;
    rewritten atomically, 0600, whenever a new head is kept; the entries of other relays in it are kept as they
    are)."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.url = url
        doc = read_json(path) if path.exists() else {}
        self._relays = {u: RelayBook.from_doc(e, f"{path}, relay {u}") for u, e in dict(doc.get("relays", {})).items()}

    def observe(self, checkpoint: Checkpoint) -> None:
        book = self._relays.get(self.url)
        if book is None:
            book = self._relays[self.url] = RelayBook.pinned_by(checkpoint)
        hint = f"if the relay's operator announced a new key, remove {self.url} from {self.path}"
        if book.observe(checkpoint, self.url, hint):
            write_json_atomic(self.path, {"relays": {u: b.to_doc() for u, b in sorted(self._relays.items())}})
