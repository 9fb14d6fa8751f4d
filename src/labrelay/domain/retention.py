"""Retention rules that hold whatever the storage: epochs of deadlines, and when a key must be gone.

A payload's deadline falls in one epoch (of ``epoch_length``, aligned on the Unix epoch); the epoch is named by
the instant it ends. The relay wraps the payload under that epoch's key and destroys the key when the epoch
ends: at most ``epoch_length`` after the deadline, any surviving copy is unreadable. Nothing is ever served past
the deadline itself (checked at read time), so the epoch only bounds how long a *stolen copy* stays useful.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from labrelay.domain.timeutil import from_epoch


def epoch_end(deadline: datetime, length: timedelta) -> int:
    """Unix second at which the epoch holding ``deadline`` ends (a deadline on a boundary ends its epoch)."""
    seconds = int(length.total_seconds())
    if seconds <= 0:
        raise ValueError("epoch length must be positive")
    instant = math.ceil(deadline.timestamp())
    return -(-instant // seconds) * seconds


def key_due_for_destruction(epoch: int, now: datetime) -> bool:
    """An epoch key must be gone once its epoch has ended."""
    return now >= from_epoch(epoch)
