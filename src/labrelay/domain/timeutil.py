"""Instants and durations as labrelay writes them: RFC 3339 UTC to the second, and ``30s``/``15m``/``12h``/``7d``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from labrelay.errors import UsageError

_DURATION = re.compile(r"[ ]*([0-9]{1,9})[ ]*([smhd])[ ]*")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``"7d"`` → 7 days. Only whole seconds, minutes, hours or days; zero is refused."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise UsageError(f"invalid duration {text!r}", hint="write it as 30s, 15m, 12h or 7d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise UsageError(f"invalid duration {text!r}: must be positive")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The largest whole unit: 7 days → ``7d``, 90 minutes → ``90m``."""
    seconds = int(delta.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0 and seconds >= _UNITS[unit]:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def to_rfc3339(instant: datetime) -> str:
    """``2026-11-28T18:00:00Z``. Refuses naive datetimes: every instant in labrelay is aware and UTC."""
    if instant.tzinfo is None:
        raise ValueError("naive datetime")
    return instant.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_rfc3339(text: str) -> datetime:
    """Parse what ``to_rfc3339`` writes (and any RFC 3339 instant with an offset)."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"not an RFC 3339 instant: {text!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"instant without a time zone: {text!r}")
    return parsed.astimezone(UTC)


def to_epoch(instant: datetime) -> int:
    return int(instant.timestamp())


def from_epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)
