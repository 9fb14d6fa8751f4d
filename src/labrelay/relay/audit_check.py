"""``labrelay audit verify``: does the audit log still say what the relay wrote, and what clients were told?

Four checks, each naming the first link that fails:
1. the chain: every link points to the one before and matches its own hash, from the signed anchor (or the
   first link) on — an edited, deleted, inserted or reordered link breaks it;
2. the signed head: the last link is the one the relay's key last signed — a truncated log, or links
   added behind the relay's back, no longer match it;
3. the anchor: where pruning (the log's retention) left the chain, signed by the relay's key;
4. checkpoints held by clients: each names a link and its hash, signed by the relay; a relay (or operator)
   that rewrote history and re-signed a new head still contradicts every checkpoint a client kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from labrelay.crypto.checkpoints import verify_checkpoint
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import (
    GENESIS,
    MIN_AUDIT_RETENTION,
    AuditLink,
    Checkpoint,
    MalformedLink,
    verify_chain,
)
from labrelay.errors import IntegrityError
from labrelay.ports import AuditLog, Clock


@dataclass
class AuditReport:
    links: int = 0  # verified
    first_seq: int | None = None
    last_seq: int | None = None
    head: dict[str, Any] | None = None
    checkpoints_checked: int = 0
    checkpoints_foreign: int = 0  # held checkpoints that name another relay's key: not this log's
    problems: list[tuple[int | None, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        seqs = [seq for seq, _ in self.problems if seq is not None]
        return min(seqs) if seqs else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.links,  # the report's key, as operators' scripts read it
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head": self.head,
            "checkpoints_checked": self.checkpoints_checked,
            "checkpoints_foreign": self.checkpoints_foreign,
            "first_bad_seq": self.first_bad_seq,
            "problems": [{"seq": seq, "problem": text} for seq, text in self.problems],
        }


def _signed(checkpoint: Checkpoint, key: VerifyKey, what: str, report: AuditReport) -> bool:
    try:
        verify_checkpoint(checkpoint, key)
    except IntegrityError as exc:
        report.problems.append((checkpoint.seq, f"{what}: {exc.message}"))
        return False
    return True


def verify_audit(
    log: AuditLog,
    relay_key: VerifyKey,
    held: Sequence[Checkpoint] = (),
    *,
    now: datetime,
    activity: int = 0,
) -> AuditReport:
    """Verify ``log`` against ``relay_key``. ``held``: checkpoints clients kept. ``activity``: parties and transfers
    the relay holds (a relay that has them cannot have an empty log)."""
    report = AuditReport()
    head_before = log.checkpoint("head")  # read first: a running relay appends while the walk goes on
    anchor = log.checkpoint("anchor")
    start_prev, start_seq = GENESIS, 1
    if anchor is not None and _signed(anchor, relay_key, "anchor", report):
        start_prev, start_seq = anchor.hash, anchor.seq + 1
        if anchor.at > now - MIN_AUDIT_RETENTION:
            report.problems.append(
                (anchor.seq, f"records up to {anchor.seq} were pruned before the minimum retention of the log")
            )
    wanted = {cp.seq for cp in held} | ({head_before.seq} if head_before else set())
    seen: dict[int, str] = {}

    def walk() -> Iterator[AuditLink]:
        after = 0
        while True:
            try:
                for rec in log.links(after):
                    if rec.seq in wanted:
                        seen[rec.seq] = rec.hash
                    if report.first_seq is None:
                        report.first_seq = rec.seq
                    report.last_seq = rec.seq
                    after = rec.seq
                    yield rec
                return
            except MalformedLink as exc:  # report it, and read on past it
                report.problems.append((exc.seq, str(exc)))
                after = exc.seq

    links = walk()
    chain = verify_chain(links, start_prev=start_prev, start_seq=start_seq)
    report.links = chain.links
    if not chain.ok:
        report.problems.append((chain.first_bad_seq, f"chain broken: {chain.problem}"))
        for _ in links:  # finish the walk: the checkpoints are compared with every link
            pass
    if report.last_seq is None and anchor is None and activity:
        report.problems.append((1, f"the audit log is empty, yet the relay holds {activity} parties and transfers"))

    last = start_seq - 1 + chain.links if chain.ok else None
    _check_head(head_before, log.checkpoint("head"), relay_key, chain.head, last, seen, report)
    _check_held(held, anchor, seen, relay_key, now, report)
    report.problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
    return report


def _check_head(
    before: Checkpoint | None,
    after: Checkpoint | None,
    key: VerifyKey,
    chain_head: str,
    last: int | None,
    seen: dict[int, str],
    report: AuditReport,
) -> None:
    """The chain must reach the head signed when the walk began, and end no later than the head signed when it
    ended (a running relay appends meanwhile; a stopped one has ``before == after``). ``last`` is None if the chain
    broke (already reported)."""
    if after is None:
        if report.last_seq is not None:
            report.problems.append((report.first_seq, "no signed head: the log cannot be checked for truncation"))
        return
    report.head = {"seq": after.seq, "hash": after.hash}
    signed = _signed(after, key, "signed head", report)
    if before is not None and before != after:
        signed = _signed(before, key, "signed head", report) and signed
    if not signed or last is None:
        return
    first = before or after
    if last < first.seq:
        report.problems.append(
            (last + 1, f"the log ends at record {last}, before its signed head {first.seq}: truncated")
        )
    elif seen.get(first.seq) != first.hash:
        report.problems.append((first.seq, f"record {first.seq} is not the one the relay signed as its head"))
    elif last > after.seq:
        report.problems.append((after.seq + 1, f"records after the signed head {after.seq}: added behind the relay"))
    elif last == after.seq and chain_head != after.hash:
        report.problems.append((after.seq, "the last record is not the one the relay signed"))


def _check_held(
    held: Sequence[Checkpoint],
    anchor: Checkpoint | None,
    seen: dict[int, str],
    key: VerifyKey,
    now: datetime,
    report: AuditReport,
) -> None:
    """Every checkpoint a client kept must still be in the log, with the same hash; only what the log's retention
    allows may have been pruned. A checkpoint signed by another key is a problem too: either the file is another
    relay's, or this relay's key was replaced (which would let its operator sign a rewritten history)."""
    for cp in held:
        if cp.relay_key != key.b64:
            report.checkpoints_foreign += 1
            report.problems.append(
                (None, f"a client checkpoint ({cp.seq}) names another relay key: another relay's, or a replaced key")
            )
            continue
        if not _signed(cp, key, "client checkpoint", report):
            continue
        report.checkpoints_checked += 1
        if anchor is not None and cp.seq <= anchor.seq:
            if cp.seq == anchor.seq and cp.hash != anchor.hash:
                report.problems.append((cp.seq, "the anchor differs from the checkpoint a client holds: rewritten"))
            elif cp.at > now - MIN_AUDIT_RETENTION:
                report.problems.append((cp.seq, f"record {cp.seq}, signed to a client recently, was pruned"))
            continue  # pruned under the retention rule: nothing left to compare
        stored = seen.get(cp.seq)
        if stored is None:
            report.problems.append((cp.seq, f"a client holds checkpoint {cp.seq}, which the log no longer has"))
        elif stored != cp.hash:
            report.problems.append((cp.seq, f"record {cp.seq} differs from a checkpoint a client holds: rewritten"))


@dataclass(frozen=True)
class AuditCheck:
    """``verify_audit`` wired to one relay's log and key: what the console runs, and ``labrelay audit verify``."""

    log: AuditLog
    relay_key: VerifyKey
    clock: Clock

    def run(self, held: Sequence[Checkpoint] = ()) -> AuditReport:
        """The report on the log now; ``held``: checkpoints clients kept."""
        return verify_audit(self.log, self.relay_key, held, now=self.clock.now(), activity=self.log.activity())
