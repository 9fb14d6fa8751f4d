"""``labrelay audit check``: does the relay's audit log still contain what it signed to this party?"""

from __future__ import annotations

from dataclasses import dataclass, field

from labrelay.client.api import RelayClient
from labrelay.client.checkpoints import CheckpointBook
from labrelay.errors import AuditTampered


@dataclass
class HistoryCheck:
    checked: int = 0
    pruned: int = 0
    current_seq: int | None = None
    problems: list[str] = field(default_factory=list)


def check_history(client: RelayClient, book: CheckpointBook) -> HistoryCheck:
    """Ask the relay for the hash of every record this party holds a checkpoint for; any difference means the
    relay's history was rewritten after the relay signed it. Raises ``AuditTampered`` naming the first one."""
    current = client.audit_checkpoint()  # also pins (or checks) the relay's key for this URL
    result = HistoryCheck()
    # Every checkpoint this party holds from this relay's key, whatever URL it was reached at then.
    for cp in sorted(book.held_for_key(current.relay_key), key=lambda c: c.seq):
        answer = client.audit_hash(cp.seq)
        pruned_through = int(answer.get("pruned_through") or 0)
        if cp.seq <= pruned_through:
            result.pruned += 1
            continue
        result.checked += 1
        if answer.get("hash") is None:
            result.problems.append(f"record {cp.seq}, signed by the relay, is gone from its log")
        elif answer["hash"] != cp.hash:
            result.problems.append(f"record {cp.seq} is not the one the relay signed: its history was rewritten")
    result.current_seq = current.seq
    if result.problems:
        raise AuditTampered(
            f"relay {client.base}: " + result.problems[0],
            hint="keep checkpoints.json as evidence and tell the relay's operator and your DPO",
        )
    return result
