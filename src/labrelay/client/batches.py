"""The lab's record of the batches it made, by source file: what makes ``send`` idempotent.

A batch is identified by the lab and the SHA-256 of its source file. ``PARTY/batches/<sha256>.json`` lists the
batches made from that source (one, unless ``send --again`` made another on purpose), each with its id, how it was
sent (routed under the policy, unparsed, or the held shares of an earlier batch), to whom, its transfers, and how
far it got::

    sealing  payloads being sealed (nothing uploaded yet: a run killed here is started again from scratch)
    sealed   every payload sealed and its signed manifest kept in the outbox; uploads under way
    sent     every payload uploaded

Sending the same file again finds its batch here: what is unfinished is finished, nothing is sealed or uploaded a
second time. The source hash is also in every signed manifest, so that a recipient refuses a second copy that
reaches it some other way (the lab lost this directory, or sent from the lab page too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labrelay.client.files import private_dir
from labrelay.errors import UsageError
from labrelay.jsonfile import read_json, write_json_atomic

BATCHES_DIR = "batches"
SEALING, SEALED, SENT = "sealing", "sealed", "sent"
ROUTED, AS_IS, HELD = "routed", "as-is", "held"


@dataclass(frozen=True, slots=True)
class SourceDigest:
    sha256: str
    size: int
    lines: int  # newline count: the number of records to expect, to within the header and quoted newlines


def digest(path: Path, on_bytes: Callable[[int], None] | None = None) -> SourceDigest:
    """SHA-256, size and line count of ``path``, in one streaming pass."""
    sha = hashlib.sha256()
    size = lines = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
            size += len(block)
            lines += block.count(b"\n")
            if on_bytes is not None:
                on_bytes(len(block))
    return SourceDigest(sha.hexdigest(), size, lines)


@dataclass
class BatchEntry:
    batch_id: str
    source_sha256: str
    source: str  # the source file's name, for people
    mode: str  # ROUTED, AS_IS or HELD
    created: str
    state: str = SEALING
    recipients: list[str] = field(default_factory=list)  # what the send asked for (--to), empty: the policy's
    transfers: dict[str, str] = field(default_factory=dict)  # recipient → transfer id, once sealed
    again: bool = False
    held_from: str | None = None  # HELD: the batch whose held shares this one delivers
    held_sent: dict[str, str] = field(default_factory=dict)  # this batch's held shares delivered: recipient → batch
    summary: dict[str, Any] | None = None
    reports: dict[str, str] = field(default_factory=dict)  # rejections, review: paths on this machine

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> BatchEntry:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


class BatchIndex:
    """``PARTY/batches/``: the batches this lab made, by source."""

    def __init__(self, party_path: Path) -> None:
        self.path = private_dir(party_path / BATCHES_DIR)

    def _file(self, sha256: str) -> Path:
        return self.path / f"{sha256}.json"

    def of_source(self, sha256: str) -> list[BatchEntry]:
        file = self._file(sha256)
        if not file.exists():
            return []
        return [BatchEntry.from_doc(d) for d in read_json(file).get("batches", [])]

    def save(self, record: BatchEntry) -> None:
        others = [b for b in self.of_source(record.source_sha256) if b.batch_id != record.batch_id]
        write_json_atomic(
            self._file(record.source_sha256), {"batches": [*(b.to_doc() for b in others), record.to_doc()]}
        )

    def drop(self, record: BatchEntry) -> None:
        rest = [b for b in self.of_source(record.source_sha256) if b.batch_id != record.batch_id]
        if rest:
            write_json_atomic(self._file(record.source_sha256), {"batches": [b.to_doc() for b in rest]})
        else:
            self._file(record.source_sha256).unlink(missing_ok=True)

    def all(self) -> Iterator[BatchEntry]:
        for file in sorted(self.path.glob("*.json")):
            for doc in read_json(file).get("batches", []):
                yield BatchEntry.from_doc(doc)

    def by_id(self, prefix: str) -> BatchEntry:
        """The batch whose id is ``prefix`` or starts with it (8 characters at least, and only one match)."""
        if len(prefix) < 8:
            raise UsageError(f"batch id {prefix!r} is too short", hint="give at least its first 8 characters")
        found = [b for b in self.all() if b.batch_id.startswith(prefix)]
        if not found:
            raise UsageError(f"no batch {prefix} in {self.path}", hint="the batch ids are in send's output")
        if len(found) > 1:
            raise UsageError(f"several batches start with {prefix}", hint="give more of its id")
        return found[0]
