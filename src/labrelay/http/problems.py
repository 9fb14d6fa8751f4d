"""``labrelay.errors`` → HTTP status, and the problem document (RFC 9457) the relay answers with.

The document carries the error's stable ``code`` so that clients rebuild the same error class (and exit code).
Details are the error's own message, which never contains payload data (the relay has none).
"""

from __future__ import annotations

from typing import Any

from labrelay import errors

STATUS: list[tuple[type[errors.LabrelayError], int]] = [
    # most specific first
    (errors.ReplayDetected, 401),
    (errors.AuthenticationFailed, 401),
    (errors.PartyRevoked, 403),
    (errors.PermissionDenied, 403),
    (errors.PayloadCorrupt, 410),  # the relay's stored copy failed its integrity check: held for good
    (errors.UntrustedEntry, 422),
    (errors.IntegrityError, 422),
    (errors.InsecureKeyFile, 400),
    (errors.InsecureTransport, 400),
    (errors.SecurityError, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.HeadersTooLarge, 431),
    (errors.TooLarge, 413),
    (errors.StorageFull, 507),
    (errors.TooManyRequests, 429),
    (errors.RequestTimeout, 408),
    (errors.Unavailable, 503),
    (errors.RelayFrozen, 503),
    (errors.OperationalError, 500),
    (errors.UsageError, 400),
    (errors.LabrelayError, 500),
]


def status_for(exc: errors.LabrelayError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500  # pragma: no cover - LabrelayError is the last row


def problem(exc: errors.LabrelayError, status: int | None = None) -> dict[str, Any]:
    """The problem document of ``exc``; ``status`` when the response's status is not the error's own."""
    status = status or status_for(exc)
    doc: dict[str, Any] = {
        "type": f"https://labrelay.invalid/problems/{exc.code}",
        "title": exc.code.replace("-", " "),
        "status": status,
        "code": exc.code,
        "detail": exc.message,
    }
    if exc.hint:
        doc["hint"] = exc.hint
    return doc
