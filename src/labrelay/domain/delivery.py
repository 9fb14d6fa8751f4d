"""Delivery monitoring's value objects: what waits for a recipient (its backlog), and how a batch fared ("n of m
delivered"). Pure: the relay fills them from its metadata (transfer states, the batch id of each signed manifest),
the sender's ``labrelay receipts --batch`` from its verified outbox; both classify a transfer with
``delivery_outcome``, so the console and the CLI count alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from labrelay.domain.timeutil import to_rfc3339

OUTCOMES = ("delivered", "waiting", "refused", "expired", "held", "failed")
"""What became of one transfer, from its sender's side:

- ``delivered``: its recipient's signed receipt was accepted;
- ``waiting``: not over and not held (uploading, or available to its recipient);
- ``refused``: its recipient signed a refusal (the relay holds it until its deadline);
- ``expired``: its deadline passed before its recipient received it;
- ``held``: not over, held by the relay (an administrator's quarantine, a revocation, a corrupt stored copy);
- ``failed``: its upload never completed (cancelled by its sender, or the bytes did not match the manifest)."""


def delivery_outcome(state: str, *, refused: bool, held: bool) -> str:
    """The outcome (one of ``OUTCOMES``) of a transfer in ``state`` (a ``TransferState`` value), refused by its
    recipient or not, held by the relay or not."""
    if state == "delivered":
        return "delivered"
    if refused:
        return "refused"
    if state == "expired":
        return "expired"
    if state in ("cancelled", "rejected"):
        return "failed"
    return "held" if held else "waiting"


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits for one recipient now: payloads available to it (whole, not held, before their deadline), their
    ciphertext bytes, and since when the oldest of them has been available (None when nothing waits)."""

    recipient: str
    waiting: int
    bytes: int
    oldest: datetime | None


@dataclass(frozen=True, slots=True)
class BatchTally:
    """One batch of one sender (one ``send``: a transfer per recipient, sharing the manifests' ``batch_id``): how
    many of its ``total`` transfers ended in each outcome."""

    batch_id: str
    sender: str
    created: datetime  # the earliest of its transfers
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def delivered(self) -> int:
        return self.counts.get("delivered", 0)

    def line(self) -> str:
        others = [f"{self.counts[o]} {o}" for o in OUTCOMES[1:] if self.counts.get(o)]
        rest = f" ({', '.join(others)})" if others else ""
        return f"batch {self.batch_id[:8]} {to_rfc3339(self.created)}: {self.delivered} of {self.total} delivered{rest}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "sender": self.sender,
            "created": to_rfc3339(self.created),
            "total": self.total,
        } | {outcome: self.counts.get(outcome, 0) for outcome in OUTCOMES}


def tally(rows: Iterable[tuple[str, str, datetime, str, int]]) -> list[BatchTally]:
    """Batches from (batch_id, sender, created, outcome, how many) rows (one per transfer, or already grouped):
    newest batch first."""
    found: dict[tuple[str, str], tuple[datetime, dict[str, int]]] = {}
    for batch_id, sender, created, outcome, n in rows:
        first, counts = found.setdefault((batch_id, sender), (created, {}))
        counts[outcome] = counts.get(outcome, 0) + n
        if created < first:
            found[(batch_id, sender)] = (created, counts)
    batches = [BatchTally(b, s, created, counts) for (b, s), (created, counts) in found.items()]
    return sorted(batches, key=lambda t: (t.created, t.batch_id), reverse=True)
