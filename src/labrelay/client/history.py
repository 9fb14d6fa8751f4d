"""``labrelay audit check``: does the relay's audit log still contain what it signed to this party?"""

from __future__ import annotations

from dataclasses import dataclass, field

from labrelay.client.api import RelayClient
from labrelay.client.checkpoints import CheckpointBook
from labrelay.crypto.checkpoints import verify_checkpoint
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import MIN_AUDIT_RETENTION, Checkpoint
from labrelay.errors import AuditTampered, IntegrityError
from labrelay.ports import Clock


@dataclass
class HistoryCheck:
    checked: int = 0
    pruned: int = 0
    problems: list[str] = field(default_factory=list)


def check_history(client: RelayClient, book: CheckpointBook, clock: Clock) -> HistoryCheck:
    """Ask the relay for the hash of every record this party holds a checkpoint for; any difference means the
    relay's history was rewritten after the relay signed it. Raises ``AuditTampered`` naming the first one.

    This is a quick check through the relay's own answers: a relay that rewrote its database *and* lies here is
    caught by ``labrelay audit verify --checkpoints`` on the database itself, with this party's checkpoints.json
    (which carries the relay's signatures) as evidence."""
    current = client.audit_checkpoint()  # also pins (or checks) the relay's key for this URL
    result = HistoryCheck()
    # Every checkpoint this party holds from this relay's key, whatever URL it was reached at then.
    for cp in sorted(book.held_for_key(current.relay_key), key=lambda c: c.seq):
        answer = client.audit_hash(cp.seq)
        anchor = _anchor(answer.get("anchor"), current.relay_key)
        if anchor is not None and cp.seq <= anchor.seq:
            # Pruning is signed (the anchor) and bounded: only records older than the least retention may go.
            if cp.seq == anchor.seq and cp.hash != anchor.hash:
                result.problems.append(f"record {cp.seq} is not the one the relay signed: its history was rewritten")
            elif cp.at > clock.now() - MIN_AUDIT_RETENTION:
                result.problems.append(f"record {cp.seq}, signed to this party recently, is said to be pruned")
            else:
                result.pruned += 1
            continue
        result.checked += 1
        if answer.get("hash") is None:
            result.problems.append(f"record {cp.seq}, signed by the relay, is gone from its log")
        elif answer["hash"] != cp.hash:
            result.problems.append(f"record {cp.seq} is not the one the relay signed: its history was rewritten")
    if result.problems:
        raise AuditTampered(
            f"relay {client.base}: " + result.problems[0],
            hint="keep checkpoints.json as evidence and tell the relay's operator and your DPO",
        )
    return result


def _anchor(doc: object, relay_key: str) -> Checkpoint | None:
    if doc is None:
        return None
    try:
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        return verify_checkpoint(Checkpoint.from_doc(doc), VerifyKey.from_b64(relay_key))
    except (ValueError, IntegrityError) as exc:
        raise AuditTampered(f"the relay's audit anchor does not verify: {exc}") from None
