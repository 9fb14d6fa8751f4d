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


# What the log, /health and metrics may say of a failure: a fixed text per kind, never the error's own message (a
# message is written for the operator at a terminal and may quote what the input held: a header row that was a
# patient's record, a file name). The full diagnostics go only into the lab's own failed/NAME.reason.json.
SAFE_TEXT = {
    Kind.USAGE: "not a readable results file or a bad option",
    Kind.SECURITY: "refused by a security check",
    Kind.RETRY: "the relay could not be reached or was busy",
    Kind.DATA: "nothing could be sent: see the reports",
    Kind.INTERNAL: "an unexpected error: only its type is logged",
}
SAFE_TEXT_BY_CODE = {
    "busy": "another run for this party held its lock",
    "storage-full": "no space left where labrelay writes",
    "frozen": "the relay is frozen by its administrator",
    "unreadable": "an input file could not be read",
    "stopping": "the agent is stopping: left for the next start",
}


def error_fields(exc: BaseException) -> dict[str, str | int]:
    """What the JSON log and /health say of ``exc``: ``kind`` (the error's stable code), ``class`` (retry, data,
    usage, security, internal), ``error_type`` (its class name), ``exit_code`` and a fixed ``message`` chosen by
    the class, never the error's own text (see ``detailed_error``)."""
    kind = classify(exc)
    code = exc.code if isinstance(exc, LabrelayError) else "internal"
    return {
        "kind": code,
        "error_class": kind.value,
        "error_type": type(exc).__name__,
        "exit_code": kind.exit_code,
        "message": SAFE_TEXT_BY_CODE.get(code, SAFE_TEXT[kind]),
    }


def detailed_error(exc: BaseException) -> dict[str, str | int]:
    """``error_fields`` and the error's full diagnostics (``detail``): for the lab-local failed/NAME.reason.json
    only, beside the data itself, never for the log or /health. An error labrelay did not raise on purpose still
    gets its type alone: its text could hold anything."""
    fields = error_fields(exc)
    if isinstance(exc, LabrelayError):
        fields["detail"] = exc.diagnostics().replace("\n", " ")
    return fields


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
