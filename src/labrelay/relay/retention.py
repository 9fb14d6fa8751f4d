"""The retention check: proof, from the stored state alone, that nothing outlives its deadline.

``check_retention`` reads the metadata, the payload store and the key store (of a running or a stopped relay)
and changes nothing. Each check says what it looked at; the report holds only when every check does:

- no bytes on the relay for a transfer past its deadline, over (delivered, expired, cancelled, rejected) or
  unknown, and no other file in the payload store;
- no transfer still open (uploading or available) past its deadline: metadata the reaper should have closed;
- no epoch key alive past the end of its epoch, and no temporary key file;
- every open transfer's epoch key alive (else its payload is unreadable before its deadline);
- no open transfer kept longer than the relay's maximum;
and, for information, the oldest payload on the relay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from labrelay.domain.retention import epoch_end, key_due_for_destruction
from labrelay.domain.timeutil import format_duration, from_epoch, to_rfc3339
from labrelay.domain.transfers import TERMINAL_STATES, Transfer, TransferLimits
from labrelay.ports import Clock, KeyStore, PayloadStore, TransferRepository

SAMPLE = 10  # ids listed per failed check


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    items: tuple[str, ...] = ()


@dataclass
class RetentionReport:
    checked_at: datetime
    findings: list[Finding] = field(default_factory=list)
    payloads: int = 0
    oldest: dict[str, Any] | None = None
    keys_alive: list[int] = field(default_factory=list)
    keys_needed: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked_at": to_rfc3339(self.checked_at),
            "ok": self.ok,
            "payloads": self.payloads,
            "oldest_payload": self.oldest,
            "epoch_keys_alive": [to_rfc3339(from_epoch(e)) for e in self.keys_alive],
            "epoch_keys_needed": [to_rfc3339(from_epoch(e)) for e in self.keys_needed],
            "checks": [
                {"check": f.check, "ok": f.ok, "detail": f.detail, "items": list(f.items)} for f in self.findings
            ],
        }


def _finding(check: str, bad: list[str], good: str, bad_text: str) -> Finding:
    if not bad:
        return Finding(check, True, good)
    return Finding(check, False, f"{len(bad)} {bad_text}", tuple(sorted(bad)[:SAMPLE]))


def check_retention(
    repo: TransferRepository,
    store: PayloadStore,
    keys: KeyStore,
    clock: Clock,
    limits: TransferLimits,
    epoch_length: timedelta,
) -> RetentionReport:
    now = clock.now()
    report = RetentionReport(checked_at=now)
    ids = list(store.ids())
    report.payloads = len(ids)
    transfers = {i: repo.get(i) for i in ids}
    report.findings.extend(_payload_findings(transfers, store, now))

    open_past = [f"{r.transfer_id} ({r.state.value})" for r in repo.open_past(now)]
    report.findings.append(
        _finding("transfers open past their deadline", open_past, "none", "transfer(s) not closed by the reaper")
    )

    open_now = [r for r in repo.open_transfers() if r.deadline > now]
    too_long = [
        f"{r.transfer_id} ({format_duration(r.deadline - r.created_at)})"
        for r in open_now
        if r.deadline - r.created_at > limits.max_ttl + limits.clock_skew
    ]
    report.findings.append(
        _finding(
            "deadlines within the relay's maximum",
            too_long,
            f"every open transfer within {format_duration(limits.max_ttl)}",
            "transfer(s) kept longer than the maximum",
        )
    )

    alive = keys.epochs()
    needed = sorted({epoch_end(r.deadline, epoch_length) for r in open_now})
    overdue = [to_rfc3339(from_epoch(e)) for e in alive if key_due_for_destruction(e, now)]
    missing = [to_rfc3339(from_epoch(e)) for e in needed if e not in alive]
    report.keys_alive, report.keys_needed = alive, needed
    report.findings.append(
        _finding(
            "epoch keys past their epoch",
            overdue,
            f"none ({len(alive)} alive, {len(needed)} needed by open transfers)",
            "epoch key(s) alive after their epoch ended",
        )
    )
    report.findings.append(
        _finding("epoch keys of open transfers", missing, "all present", "epoch key(s) missing: payloads unreadable")
    )
    report.findings.append(
        _finding("other files in the key store", keys.strays(), "none", "unexpected file(s) in the key store")
    )
    report.oldest = _oldest([r for r in transfers.values() if r is not None], now)
    return report


def _payload_findings(transfers: dict[str, Transfer | None], store: PayloadStore, now: datetime) -> list[Finding]:
    """The payload store against the metadata: no bytes past a deadline, of a closed or unknown transfer, or stray."""
    unknown = [i for i, r in transfers.items() if r is None]
    over = [f"{i} ({r.state.value})" for i, r in transfers.items() if r is not None and r.state in TERMINAL_STATES]
    past = [
        f"{i} (deadline {to_rfc3339(r.deadline)})"
        for i, r in transfers.items()
        if r is not None and r.state not in TERMINAL_STATES and r.deadline <= now
    ]
    return [
        _finding("payloads past their deadline", past, "none on the relay", "payload(s) past their deadline"),
        _finding("payloads of closed transfers", over, "none", "payload(s) of transfers that are over"),
        _finding("orphaned payloads", unknown, "none", "payload(s) of no known transfer"),
        _finding("other files in the payload store", store.strays(), "none", "unexpected file(s) in the store"),
    ]


def _oldest(dated: list[Transfer], now: datetime) -> dict[str, Any] | None:
    """The oldest payload on the relay, for information."""
    if not dated:
        return None
    oldest = min(dated, key=lambda r: r.created_at)
    return {
        "transfer_id": oldest.transfer_id,
        "created_at": to_rfc3339(oldest.created_at),
        "age": format_duration(max(now - oldest.created_at, timedelta(seconds=1))),
        "deadline": to_rfc3339(oldest.deadline),
    }


@dataclass(frozen=True)
class RetentionCheck:
    """``check_retention`` wired to one relay's stores: what the console runs, and ``labrelay admin
    retention-check``."""

    transfers: TransferRepository
    payloads: PayloadStore
    keys: KeyStore
    clock: Clock
    limits: TransferLimits
    epoch_length: timedelta

    def run(self) -> RetentionReport:
        return check_retention(self.transfers, self.payloads, self.keys, self.clock, self.limits, self.epoch_length)
