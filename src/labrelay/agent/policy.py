"""What a failure means for a unit of work, decided by the error's class (never its message), and the back-off
between attempts.

    RETRY     an operational failure (relay unreachable or frozen, 5xx, 429, a disk full, the party's lock held):
              tried again after a back-off, a bounded number of times for a file, then ``failed/``
    DATA      nothing could be sent (every record rejected, a threshold crossed, nothing for the recipients asked):
              ``failed/`` at once, the reports kept: trying again would give the same answer
    USAGE     not a results file, an option the relay refuses: ``failed/`` at once
    SECURITY  refused by a security check (the SecurityError family, exit 3): ``failed/`` at once, never retried
    INTERNAL  anything else (a bug, an OSError labrelay did not expect): treated like RETRY, so a transient local
              fault does not lose a file, but bounded like it
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from enum import Enum

from labrelay.agent.settings import Retry
from labrelay.client.send import NothingSent
from labrelay.errors import LabrelayError, OperationalError, SecurityError, UsageError


class Kind(Enum):
    RETRY = "retry"
    DATA = "data"
    USAGE = "usage"
    SECURITY = "security"
    INTERNAL = "internal"

    @property
    def retried(self) -> bool:
        return self in (Kind.RETRY, Kind.INTERNAL)

    @property
    def exit_code(self) -> int:
        """As the CLI's: 3 security, 2 usage, 1 everything else."""
        return {Kind.SECURITY: 3, Kind.USAGE: 2}.get(self, 1)


def classify(exc: BaseException) -> Kind:
    if isinstance(exc, SecurityError):
        return Kind.SECURITY
    if isinstance(exc, UsageError):
        return Kind.USAGE
    if isinstance(exc, NothingSent):
        return Kind.DATA
    if isinstance(exc, OperationalError):
        return Kind.RETRY
    return Kind.INTERNAL


def error_fields(exc: BaseException) -> dict[str, str]:
    """``kind`` (the error's stable code) and a one-line ``message`` for the log; for an error labrelay did not
    raise on purpose, only its type: its text could hold anything."""
    if isinstance(exc, LabrelayError):
        return {"kind": exc.code, "message": exc.diagnostics().replace("\n", " ")}
    return {"kind": "internal", "message": f"internal error ({type(exc).__name__})"}


def _uniform() -> float:
    return secrets.randbelow(1 << 30) / (1 << 30)


class Backoff:
    """Exponential back-off with "equal jitter": the n-th delay (n from 0) is ``d/2 + U(0, d/2)`` where
    ``d = min(cap, base * 2**n)``: growing, never zero, and agents restarted together do not retry in step."""

    def __init__(self, retry: Retry, random: Callable[[], float] = _uniform) -> None:
        self.retry = retry
        self._random = random

    def delay(self, failures: int) -> float:
        ceiling = min(self.retry.cap, self.retry.base * float(2 ** min(max(failures, 0), 32)))
        return ceiling / 2 + self._random() * ceiling / 2

    def exhausted(self, attempts: int) -> bool:
        """``attempts`` made and failed: no more."""
        return attempts >= self.retry.attempts


def jittered(interval: float, random: Callable[[], float] = _uniform) -> float:
    """A poll interval ±20 %: recipients started together spread out."""
    return interval * (0.8 + 0.4 * random())
