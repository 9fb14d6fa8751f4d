"""The audit checkpoints a client keeps: the relay's signed word on what its audit log said.

Every response to a signed request carries the relay's latest signed audit head (``Labrelay-Checkpoint``). The
client checks the signature against the relay key it pinned on first contact (trust on first use, like ssh; a key
that changes is refused), refuses a head that goes backwards (a truncated or restored log; the one exception, the
answer to a request sent while others were in flight, may carry an older head, never one older than the head the
client held when that request left, nor one that disagrees with any head it knows for the same record), and keeps
checkpoints in ``DIR/NAME/checkpoints.json``: the latest, and older ones at least an hour apart. ``labrelay audit
check`` later asks the relay for the hash of each kept record: a relay that rewrote any record up to a kept
checkpoint cannot answer with the hash it signed. The operator's ``labrelay audit verify --checkpoints FILE``
compares the same checkpoints with the database itself.
"""

from __future__ import annotations

from pathlib import Path

from labrelay.crypto.checkpoints import RelayBook
from labrelay.domain.audit import Checkpoint
from labrelay.errors import AuditTampered
from labrelay.jsonfile import read_json, write_json_atomic

CHECKPOINTS_FILE = "checkpoints.json"
SEEN = 4096  # heads remembered per relay in one run (each request's answer carries one; most repeat the latest)


class CheckpointBook:
    """Checkpoints per relay URL, in one file of a party's directory (the rules: ``crypto.checkpoints.RelayBook``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._relays: dict[str, RelayBook] = {}
        self._dirty = False
        self._seen: dict[str, dict[int, str]] = {}  # per relay URL: record -> hash of every head seen in this run
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

    def observe(self, url: str, checkpoint: Checkpoint, *, known: Checkpoint | None = None) -> None:
        """A checkpoint the relay at ``url`` just sent: verify, compare, keep.

        ``known``: the head this client held when it sent the request answered (None: the request was the only one
        in flight). The answer to a request sent alongside others may carry an older head than the answer to a
        later one: a head from ``known.seq`` up to the latest is verified with the pinned key, refused if another
        head is known for the same record (the one the request left with, one kept, or one seen in this run: the
        relay forked its log), and not kept; below ``known.seq`` it is refused as a log gone back."""
        book = self._relays.get(url)
        if book is None:  # first contact: pin the key it names
            book = self._relays[url] = RelayBook.pinned_by(checkpoint)
        hint = f"if the relay's operator announced a new key, remove {url} from {self.path}"
        latest = book.latest
        if known is not None and latest is not None and known.seq <= checkpoint.seq < latest.seq:
            RelayBook(book.relay_key).observe(checkpoint, url, hint)  # its signature, by the pinned key
            seen = self._seen.setdefault(url, {})
            heads = [(c.seq, c.hash) for c in (known, *book.all())]
            if checkpoint.seq in seen:
                heads.append((checkpoint.seq, seen[checkpoint.seq]))
            if any(seq == checkpoint.seq and digest != checkpoint.hash for seq, digest in heads):
                raise AuditTampered(
                    f"relay {url}: two different audit records {checkpoint.seq}, both signed: rewritten"
                )
        elif book.observe(checkpoint, url, hint):
            self._dirty = True
        self._remember(url, checkpoint)

    def _remember(self, url: str, checkpoint: Checkpoint) -> None:
        """Every head verified in this run (not only those kept), for comparing older heads that arrive late."""
        seen = self._seen.setdefault(url, {})
        seen[checkpoint.seq] = checkpoint.hash
        if len(seen) > SEEN:
            del seen[next(iter(seen))]

    def save(self) -> None:
        if not self._dirty:
            return
        doc = {"relays": {url: b.to_doc() for url, b in sorted(self._relays.items())}}
        write_json_atomic(self.path, doc)
        self._dirty = False
