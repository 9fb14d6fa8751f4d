"""Every error labrelay raises on purpose.

The tree::

    LabrelayError                     base: one line for an operator, a stable ``code``
    ├── UsageError                    the caller asked for something malformed or impossible
    │   └── NotResults                an input that is not a lab-results batch (a workbook, UTF-16, other columns…)
    ├── OperationalError              the request was fine, the world was not
    │   ├── Unavailable               relay unreachable, 5xx, storage down: retry later
    │   │   ├── TooManyRequests       over a relay limit (uploads in progress, sign-ins per address): retry after
    │   │   └── RequestTimeout        a request body that stalled or took longer than the relay allows: resume
    │   ├── Unreadable                an input file that cannot be read at all (not one bad record: those are findings)
    │   ├── StorageFull               no space left where the relay or client writes
    │   ├── RelayFrozen               an administrator froze the relay (kill switch)
    │   ├── NotFound                  no such transfer / party visible to the caller
    │   ├── Conflict                  the request clashes with the current state (e.g. upload offset)
    │   ├── PartyBusy                 another send, fetch or resume for the same party is running
    │   └── TooLarge                  a body or payload over the configured limit
    │       └── HeadersTooLarge       a header section, or a signature header, longer than any request needs
    └── SecurityError                 refused by a security check; nothing was written or acknowledged
        ├── AuthenticationFailed      bad, missing, stale or unknown signature on a request
        │   └── ReplayDetected        a nonce seen before within the replay window
        ├── PartyRevoked              the signer (or a named party) is revoked
        ├── PartyLocked               a detection rule or an administrator locked the signer
        ├── PermissionDenied          the signer's role may not do this
        ├── UntrustedEntry            a directory entry not signed by the pinned authority, or outside its validity
        ├── IntegrityError            a payload, manifest or receipt that does not match its signature or hash
        │   ├── PayloadCorrupt        the relay's stored copy of a payload failed its at-rest check: held, never served
        │   └── NotCiphertext         an upload that does not begin as an age file does: refused, nothing kept
        ├── InsecureKeyFile           a private key file others can read (as ssh refuses)
        ├── UnsafeOutput              an output place others could redirect: a planted link, a directory others write
        ├── AuditTampered             the audit log or a client's checkpoint does not verify
        ├── RetentionViolation        something outlived its deadline (admin retention-check)
        └── InsecureTransport         plain HTTP off loopback, or a relay without TLS on a public address

Only the edges map this tree: ``labrelay.http.problems`` to HTTP statuses and ``labrelay.cli.main`` to exit
codes (0 success, 1 operational, 2 usage, 3 security). Messages never contain payload data: the code that
raises them never holds plaintext on the relay side, and client-side messages name files, parties and
transfer ids only.
"""

from __future__ import annotations

from typing import ClassVar


class LabrelayError(Exception):
    """Base class. ``str(err)`` is one line an operator can act on."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """The message and, when there is one, what to do about it."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(LabrelayError):
    code = "usage"


class NotResults(UsageError):
    """An input file that is not a readable lab-results batch: what was found, and how to export it instead."""

    code = "not-results"


class OperationalError(LabrelayError):
    code = "operational"


class Unavailable(OperationalError):
    code = "unavailable"


class TooManyRequests(Unavailable):
    """Over one of the relay's limits (concurrent uploads of a party or of the relay, sign-ins from one address):
    answered 429 with ``Retry-After``; clients wait that long and try again."""

    code = "rate-limited"

    def __init__(self, message: str, *, hint: str | None = None, retry_after: int = 5) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class RequestTimeout(Unavailable):
    """A request body stalled (no byte within ``body_timeout``) or took longer than its deadline; the upload's client
    resumes from the offset the relay holds."""

    code = "request-timeout"


class Unreadable(OperationalError):
    code = "unreadable"


class StorageFull(OperationalError):
    code = "storage-full"


class NotFound(OperationalError):
    code = "not-found"


class EpochKeyGone(NotFound):
    """A stored payload's epoch key was destroyed: the payload is unreadable, by design."""

    code = "key-destroyed"


class RelayFrozen(OperationalError):
    """An administrator froze the relay: no upload, no download, until it is unfrozen."""

    code = "frozen"


class Conflict(OperationalError):
    code = "conflict"


class PartyBusy(OperationalError):
    """Another send, fetch or resume for the same party is running (overlapping cron jobs)."""

    code = "busy"


class TooLarge(OperationalError):
    code = "too-large"


class HeadersTooLarge(TooLarge):
    """A header section, or a signature header, longer than any labrelay request needs: refused unparsed."""

    code = "headers-too-large"


class SecurityError(LabrelayError):
    code = "security"


class AuthenticationFailed(SecurityError):
    code = "authentication-failed"


class ReplayDetected(AuthenticationFailed):
    code = "replay"


class PartyRevoked(SecurityError):
    code = "revoked"


class PartyLocked(SecurityError):
    """A detection rule or an administrator locked this party on this relay."""

    code = "locked"


class PermissionDenied(SecurityError):
    code = "permission-denied"


class UntrustedEntry(SecurityError):
    code = "untrusted-entry"


class IntegrityError(SecurityError):
    code = "integrity"


class PayloadCorrupt(IntegrityError):
    """The relay's stored copy of a payload failed its at-rest integrity check (someone altered the relay's storage,
    or it is damaged): the relay quarantined the transfer at the first failure and answers this for it from then on
    (410); the recipient's client reports it, exit 3, and its sender sees it in ``labrelay receipts``."""

    code = "payload-corrupt"


class NotCiphertext(IntegrityError):
    """An upload whose first bytes are not the age header (``age-encryption.org/v1``): the relay keeps age ciphertext
    and nothing else, so a plaintext sent by mistake (or by a client that skipped encryption) is refused at its first
    chunk and no byte of it is kept (SecureDrop's "refuse what is not ciphertext")."""

    code = "not-ciphertext"


class InsecureKeyFile(SecurityError):
    code = "insecure-key-file"


class UnsafeOutput(SecurityError):
    """Where output would go, someone else could redirect it: a symbolic link planted in an output directory, a
    directory another user owns or may write to. Nothing is written through it."""

    code = "unsafe-output"


class InsecureTransport(SecurityError):
    code = "insecure-transport"


class RetentionViolation(SecurityError):
    """Something outlived its deadline, or a key its epoch (``labrelay admin retention-check``)."""

    code = "retention-violation"


class AuditTampered(SecurityError):
    """The audit log does not verify: an edited, deleted, reordered or truncated record, or a rewritten history."""

    code = "audit-tampered"


def _all_subclasses(cls: type[LabrelayError]) -> list[type[LabrelayError]]:
    out: list[type[LabrelayError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


ERRORS_BY_CODE: dict[str, type[LabrelayError]] = {cls.code: cls for cls in _all_subclasses(LabrelayError)}
"""``code`` → class, so that a client can rebuild the relay's error from a problem document."""


def error_from_code(code: str, message: str, hint: str | None = None) -> LabrelayError:
    """The error a relay reported, rebuilt on the client. Unknown codes become plain operational errors."""
    cls = ERRORS_BY_CODE.get(code, OperationalError)
    return cls(message, hint=hint)
