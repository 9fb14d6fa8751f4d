"""Every error labrelay raises on purpose.

The tree, with each class's ``code`` (in the relay's problem documents), the CLI's exit code and the relay's HTTP
status (a test keeps it exact)::

    class                         code                   exit HTTP  raised when
    LabrelayError                 error                  1    500   base: one line for an operator, a stable code
    ├── UsageError                usage                  2    400   the caller asked for something malformed
    │   └── NotResults            not-results            2    400   an input that is not a lab-results batch
    ├── OperationalError          operational            1    500   the request was fine, the world was not
    │   ├── Unavailable           unavailable            1    503   relay unreachable, 5xx, storage down: retry
    │   │   ├── TooManyRequests   rate-limited           1    429   over a relay limit: retry after a while
    │   │   └── RequestTimeout    request-timeout        1    408   a request body stalled or ran too long
    │   ├── Unreadable            unreadable             1    500   an input file that cannot be read at all
    │   ├── StorageFull           storage-full           1    507   no space left where the relay or client writes
    │   ├── NotFound              not-found              1    404   no such transfer or party visible to the caller
    │   │   └── EpochKeyGone      key-destroyed          1    404   a payload whose epoch key was destroyed
    │   ├── RelayFrozen           frozen                 1    503   an administrator froze the relay (kill switch)
    │   ├── Conflict              conflict               1    409   the request clashes with the current state
    │   ├── PartyBusy             busy                   1    500   another run for the same party is going on
    │   └── TooLarge              too-large              1    413   a body or payload over the configured limit
    │       └── HeadersTooLarge   headers-too-large      1    431   headers longer than any request needs
    └── SecurityError             security               3    403   refused by a security check; nothing written
        ├── AuthenticationFailed  authentication-failed  3    401   bad, missing, stale or unknown signature
        │   └── ReplayDetected    replay                 3    401   a nonce seen before within the replay window
        ├── PartyRevoked          revoked                3    403   the signer (or a named party) is revoked
        ├── PartyLocked           locked                 3    403   a detection rule or an administrator locked it
        ├── PermissionDenied      permission-denied      3    403   the signer's role may not do this
        ├── UntrustedEntry        untrusted-entry        3    422   a directory entry the authority did not sign
        ├── ClassicKeyRefused     classic-key            3    403   a classic age key where the policy requires pq
        ├── IntegrityError        integrity              3    422   a payload, manifest or receipt does not verify
        │   ├── PayloadCorrupt    payload-corrupt        3    410   the relay's stored copy failed its at-rest check
        │   └── NotCiphertext     not-ciphertext         3    422   an upload whose first bytes are not an age header
        ├── InsecureKeyFile       insecure-key-file      3    400   a private key others can reach (file, key store)
        ├── UnsafeOutput          unsafe-output          3    403   an output place others could redirect
        ├── InsecureTransport     insecure-transport     3    400   plain HTTP off loopback, or no TLS in public
        ├── RetentionViolation    retention-violation    3    403   something outlived its deadline
        └── AuditTampered         audit-tampered         3    403   the audit log or a checkpoint does not verify

Only the edges map this tree: ``labrelay.http.problems`` to HTTP statuses and ``labrelay.cli.ui`` to exit codes
(0 success, 1 operational, 2 usage, 3 security). Messages never contain payload data: the code that raises them
never holds plaintext on the relay side, and client-side messages name files, parties and transfer ids only.
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
    """The caller asked for something malformed or impossible."""

    code = "usage"


class NotResults(UsageError):
    """An input file that is not a readable lab-results batch: what was found, and how to export it instead."""

    code = "not-results"


class OperationalError(LabrelayError):
    """The request was fine, the world was not."""

    code = "operational"


class Unavailable(OperationalError):
    """The relay is unreachable or answered 5xx, or storage is down: retry later."""

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
    """An input file that cannot be read at all (not one bad record: those are findings)."""

    code = "unreadable"


class StorageFull(OperationalError):
    """No space left where the relay or the client writes."""

    code = "storage-full"


class NotFound(OperationalError):
    """No such transfer or party visible to the caller."""

    code = "not-found"


class EpochKeyGone(NotFound):
    """A stored payload's epoch key was destroyed: the payload is unreadable, by design."""

    code = "key-destroyed"


class RelayFrozen(OperationalError):
    """An administrator froze the relay: no upload, no download, until it is unfrozen."""

    code = "frozen"


class Conflict(OperationalError):
    """The request clashes with the current state (an upload's offset, for one)."""

    code = "conflict"


class PartyBusy(OperationalError):
    """Another send, fetch or resume for the same party is running (overlapping cron jobs)."""

    code = "busy"


class TooLarge(OperationalError):
    """A body or payload over the configured limit."""

    code = "too-large"


class HeadersTooLarge(TooLarge):
    """A header section, or a signature header, longer than any labrelay request needs: refused unparsed."""

    code = "headers-too-large"


class SecurityError(LabrelayError):
    """Refused by a security check; nothing was written or acknowledged."""

    code = "security"


class AuthenticationFailed(SecurityError):
    """A bad, missing, stale or unknown signature on a request."""

    code = "authentication-failed"


class ReplayDetected(AuthenticationFailed):
    """A nonce seen before within the replay window."""

    code = "replay"


class PartyRevoked(SecurityError):
    """The signer (or a named party) is revoked."""

    code = "revoked"


class PartyLocked(SecurityError):
    """A detection rule or an administrator locked this party on this relay."""

    code = "locked"


class PermissionDenied(SecurityError):
    """The signer's role may not do this."""

    code = "permission-denied"


class UntrustedEntry(SecurityError):
    """A directory entry not signed by the pinned authority, or outside its validity."""

    code = "untrusted-entry"


class ClassicKeyRefused(SecurityError):
    """A classic (X25519) age key where the routing policy requires post-quantum recipients (``require_pq``)."""

    code = "classic-key"


class IntegrityError(SecurityError):
    """A payload, manifest or receipt that does not match its signature or hash."""

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
    """A private key (a key file, the epoch key store) that others can reach: open permissions, not a regular file,
    another user's. Refused, as ssh refuses it."""

    code = "insecure-key-file"


class UnsafeOutput(SecurityError):
    """Where output would go, someone else could redirect it: a symbolic link planted in an output directory, a
    directory another user owns or may write to. Nothing is written through it."""

    code = "unsafe-output"


class InsecureTransport(SecurityError):
    """Plain HTTP off loopback, or a relay without TLS on a public address."""

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
