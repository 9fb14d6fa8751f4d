"""Per-address limits for what anyone may ask before proving who they are (the console's sign-in).

A token bucket per client address: a burst of ``per_minute`` requests, then one every ``60 / per_minute``
seconds. IPv6 addresses count by their /64 (one host usually holds a whole /64), IPv4-mapped ones as IPv4.

Memory is bounded: at most ``max_addresses`` buckets, the least recently used forgotten first. Forgetting a bucket
only gives that address a fresh burst, and an attacker needs ``max_addresses`` other addresses to get it.

A refusal says when to retry, and sometimes carries a ``LimitReport`` for the audit trail (and, through it, an
alert): at most one per address per ``report_every``, and at most ``max_reports`` in all per ``report_every``
(the addresses left out are counted in the next report), so that a flood from many addresses writes a few audit records,
not one per request. State is in memory, per process: each replica counts its own requests.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_ADDRESSES = 10_000
REPORT_EVERY = timedelta(minutes=1)
MAX_REPORTS = 10


def address_key(remote: str | None) -> str:
    """What one client is counted as: its IPv4 address, or its IPv6 /64."""
    if not remote:
        return "unknown"
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ReportGate:
    """Which limit hits become reports (audit records, then alerts): one per subject per ``every`` seconds, and at most
    ``cap`` per ``every`` in all; the subjects left out meanwhile are counted and handed to the next report. Shared
    by the console's sign-in limiter and the HTTP edge's limits (labrelay.http.edge). Not thread-safe: its owner
    holds a lock, or keeps it on one thread."""

    def __init__(self, every: float, cap: int, max_subjects: int = MAX_ADDRESSES) -> None:
        self._every, self._cap, self._max = every, cap, max_subjects
        self._last: dict[str, float] = {}
        self._reports: deque[float] = deque()
        self._left_out: set[str] = set()
        self.suppressed = 0
        """Hits left out since the start because ``cap`` reports were made within ``every``."""

    def admit(self, subject: str, t: float) -> int | None:
        """At ``t`` (seconds): None when ``subject``'s hit makes no report now; else how many other subjects were
        left out since the last report."""
        last = self._last.get(subject)
        if last is not None and t - last < self._every:
            return None
        while self._reports and self._reports[0] <= t - self._every:
            self._reports.popleft()
        if len(self._reports) >= self._cap:
            self.suppressed += 1
            if len(self._left_out) < self._max:
                self._left_out.add(subject)
            return None
        self._reports.append(t)
        self._left_out.discard(subject)
        left_out = len(self._left_out)
        self._left_out.clear()
        if len(self._last) >= self._max:
            self._last = {k: v for k, v in self._last.items() if t - v < self._every}
        self._last[subject] = t
        return left_out


@dataclass(frozen=True, slots=True)
class LimitReport:
    subject: str  # the address (or IPv6 /64) over its limit
    refused: int  # its requests refused since its last report
    suppressed: int  # other addresses over their limit but not reported, since the last report (the cap)


@dataclass(frozen=True, slots=True)
class Throttled:
    retry_after: int  # seconds until this address may ask again
    report: LimitReport | None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # seconds since the epoch, of the last refill
    refused: int = 0


class AddressLimiter:
    def __init__(
        self,
        per_minute: int,
        *,
        max_addresses: int = MAX_ADDRESSES,
        report_every: timedelta = REPORT_EVERY,
        max_reports: int = MAX_REPORTS,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self._rate = per_minute / 60.0  # tokens per second
        self._gate = ReportGate(report_every.total_seconds(), max_reports, max_addresses)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._guard = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def hit(self, remote: str | None, now: datetime) -> Throttled | None:
        """Count one request from ``remote``: None if it may go on, else how long to wait (and maybe a report)."""
        key = address_key(remote)
        t = now.timestamp()
        with self._guard:
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                bucket = _Bucket(tokens=float(self.per_minute), at=t)
            bucket.tokens = min(float(self.per_minute), bucket.tokens + max(t - bucket.at, 0.0) * self._rate)
            bucket.at = t
            self._buckets[key] = bucket  # the most recently used, last
            while len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            bucket.refused += 1
            retry_after = max(1, math.ceil((1.0 - bucket.tokens) / self._rate))
            return Throttled(retry_after, self._report(key, bucket, t))

    def _report(self, key: str, bucket: _Bucket, t: float) -> LimitReport | None:
        left_out = self._gate.admit(key, t)
        if left_out is None:
            return None
        report = LimitReport(key, bucket.refused, left_out)
        bucket.refused = 0
        return report
