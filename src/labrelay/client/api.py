"""The relay's HTTP API, as a client calls it: every request signed, every error rebuilt as a labrelay error.

Fail closed on transport: plain ``http://`` is accepted only to a loopback address; anything else must be
``https://`` (with the system trust store, or ``--cacert``).
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

if "httpx" not in sys.modules:
    # httpx imports its own command line (click, pygments, rich's syntax highlighting) if it can: a tenth of a small
    # fetch's start-up, for a tool labrelay never runs. Marked absent, httpx falls back to a stub (decision 0018).
    sys.modules["httpx._main"] = None  # type: ignore[assignment]  # None marks a module as absent

import httpx

from labrelay.client.checkpoints import CheckpointBook
from labrelay.crypto.checkpoints import decode_header, verify_checkpoint
from labrelay.crypto.httpsig import content_digest_of, sign_request
from labrelay.crypto.keys import SigningKey
from labrelay.domain.audit import Checkpoint
from labrelay.domain.names import is_loopback_host
from labrelay.errors import (
    Conflict,
    InsecureTransport,
    IntegrityError,
    LabrelayError,
    OperationalError,
    StorageFull,
    TooManyRequests,
    Unavailable,
    UsageError,
    error_from_code,
)
from labrelay.ports import Clock
from labrelay.wire import (
    CHECKPOINT_HEADER,
    JSON_CONTENT_TYPE,
    OFFSET_CONTENT_TYPE,
    PAYLOAD_SIGNED,
    TUS_RESUMABLE,
    TUS_VERSION,
    UPLOAD_OFFSET,
    UPLOAD_PATH,
    UPLOAD_SIGNED,
)

T = TypeVar("T")


def check_server_url(url: str) -> str:
    """A relay URL without trailing slash; refuses plain HTTP off loopback and anything but http(s)."""
    if any(c.isspace() or ord(c) < 0x20 for c in url):  # a pasted space, a CR from a file
        raise UsageError(f"invalid relay URL {url!r}: it holds a space or a control character")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"invalid relay URL {url!r}", hint="e.g. https://relay.example.org or http://127.0.0.1:8000")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise InsecureTransport(
            f"refusing plain HTTP to {parts.hostname}: use https:// (plain HTTP is for loopback only)"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError("a relay URL has no query, fragment or credentials")
    return url.rstrip("/")


def _transport(base: str, ca_bundle: Path | None) -> httpx.HTTPTransport:
    """One connection for a run's requests, without Nagle's delay (TCP_NODELAY: a request's headers and body are
    two writes, and the second would wait for the relay's delayed ACK, about 40 ms). The system's CA store (or
    ``ca_bundle``) is loaded only for an https relay; plain HTTP (loopback only, ``check_server_url``) gets a
    strict context that trusts no certificate at all, so that nothing could ever be verified with it."""
    verify: ssl.SSLContext | bool
    if ca_bundle is not None:
        try:
            verify = ssl.create_default_context(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"cannot use {ca_bundle} as the relay's CA (--cacert): {getattr(exc, 'strerror', None) or exc}",
                hint="give a PEM file with the certificate of the CA that signed the relay's",
            ) from None
    elif base.startswith("https:"):
        verify = True
    else:
        verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names, trusts none
    return httpx.HTTPTransport(verify=verify, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the client retries what a relay may do a moment later (a relay restarting, storage briefly unreachable,
    a request refused as too many): ``retries`` more attempts after the first, waiting ``backoff`` seconds, doubled
    after each failure, or longer when the relay asks (``Retry-After``, at most ``MAX_RETRY_AFTER``).

    A relay that answers "too many" (429) is up and busy, and says when to come back (one second when every upload
    slot of a process is taken, during a burst of labs): the client waits what it asks, plus up to half again at
    random (so that a burst's refused labs do not come back as one wave), not doubled: a doubling wait left the
    relay idle at the end of a burst while the labs it had refused most slept for 8 or 16 s (decision 0028). It
    keeps asking for as long as the doubling schedule of twice the retries would have waited in all (its
    ``patience``: 1 + 1 + 2 + 4 + 8 + 16 + 32 + 60 s, about two minutes with the defaults), so that a nightly job
    still waits out a busy minute or two. No single wait is longer than ``MAX_RETRY_AFTER``."""

    retries: int = 4
    backoff: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    """How to wait (a test records the waits instead)."""
    jitter: Callable[[], float] = secrets.SystemRandom().random
    """A number in [0, 1): the share of half a busy relay's ``Retry-After`` added to it (a test fixes it)."""

    @property
    def patience(self) -> float:
        """Seconds a busy relay (429) is waited for in all before the client gives up."""
        return float(sum(min(MAX_RETRY_AFTER, max(self.backoff * 2.0**k, 1.0)) for k in range(2 * self.retries)))

    def pause(self, failures: int, error: BaseException, waited: float = 0.0) -> float | None:
        """After ``failures`` consecutive failures (the last one ``error``), ``waited`` seconds spent waiting on them
        so far: wait, and return how long, if another attempt is allowed; None, at once, when the retries (or, on a
        busy relay, the patience) are spent."""
        if isinstance(error, TooManyRequests):
            if waited >= self.patience:
                return None
            asked = max(1.0, min(MAX_RETRY_AFTER, float(error.retry_after)))
            wait = min(MAX_RETRY_AFTER, asked * (1 + self.jitter() / 2))
        elif failures > self.retries:
            return None
        else:
            # Each wait at most MAX_RETRY_AFTER: more retries (``--retries``) wait longer in all, never hours at once.
            wait = min(MAX_RETRY_AFTER, max(self.backoff * 2 ** (failures - 1), getattr(error, "retry_after", 0)))
        self.sleep(wait)
        return wait

    def run(self, operation: Callable[[], T]) -> T:
        """``operation`` (idempotent), retried while it fails with ``Unavailable``; its last failure raised."""
        failures, waited = 0, 0.0
        while True:
            try:
                return operation()
            except Unavailable as exc:
                failures += 1
                wait = self.pause(failures, exc, waited)
                if wait is None:
                    raise
                waited += wait


class RelayClient:
    """Signed requests to one relay, as one party (or the authority)."""

    def __init__(
        self,
        server: str,
        keyid: str,
        key: SigningKey,
        clock: Clock,
        *,
        ca_bundle: Path | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        checkpoints: CheckpointBook | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``transport`` and ``sleep`` are seams for tests: another transport than the network (httpx's
        ``MockTransport``), another way to wait between retries."""
        self.base = check_server_url(server)
        self.checkpoints = checkpoints
        self.checkpoint: Checkpoint | None = None
        self._observing = threading.Lock()  # uploads run on several threads (client/send.upload_all)
        self.keyid = keyid
        self._key = key
        self._clock = clock
        self.retry = RetryPolicy(retries, backoff, sleep)
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
            trust_env=False,
            transport=transport or _transport(self.base, ca_bundle),
        )

    def close(self) -> None:
        self._http.close()
        if self.checkpoints is not None:
            self.checkpoints.save()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Sequence[str] = (),
        stream: bool = False,
        streamed_body: tuple[Iterator[bytes], int, str] | None = None,
    ) -> httpx.Response:
        """One signed request. ``streamed_body`` is (pieces, length, Content-Digest) for a body read from disk."""
        url = self.base + path
        signed = dict(headers or {})
        content: bytes | Iterator[bytes] | None = body
        digest = None
        if streamed_body is not None:
            content, length, digest = streamed_body
            signed["Content-Length"] = str(length)
        sign_request(
            method,
            url,
            signed,
            body,
            keyid=self.keyid,
            key=self._key,
            now=self._clock.now(),
            extra_components=extra,
            digest=digest,
        )
        request = self._http.build_request(method, url, content=content, headers=signed)
        known = self.checkpoint  # what the relay had said by now
        try:
            response = self._http.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise Unavailable(f"relay {self.base} did not answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            if _tls_refused(exc):
                raise InsecureTransport(
                    f"the TLS certificate of {self.base} is not trusted: {_root_cause(exc)}",
                    hint="pass --cacert with the CA that signed it (or LABRELAY_CA_BUNDLE)",
                ) from exc
            if "WRONG_VERSION_NUMBER" in str(_root_cause(exc)):  # TLS spoken to a plain-HTTP server: for good
                raise UsageError(
                    f"{self.base} does not speak TLS (it answered in plain HTTP)",
                    hint="check --server: http:// for a relay on loopback without TLS, or its https:// port",
                ) from exc
            closed = isinstance(exc, httpx.RemoteProtocolError) and self.base.startswith("http:")
            hint = "a TLS server closes plain HTTP so: if the relay speaks TLS, use https://" if closed else None
            raise Unavailable(f"relay {self.base} unreachable: {exc}", hint=hint) from exc
        self._observe(response, known)
        if response.status_code >= 400:
            if stream:
                response.read()
            raise self._error(response)
        return response

    def _observe(self, response: httpx.Response, known: Checkpoint | None) -> None:
        """Keep the relay's signed audit head, if it sent one (every response to a signed request does); ``known``:
        the head this client held when it sent the request (requests may overlap: uploads), the floor below which
        an answer's head is a log gone back, and a head its answer must agree with if it names the same record."""
        value = response.headers.get(CHECKPOINT_HEADER)
        if value is None:
            return
        checkpoint = decode_header(value)
        with self._observing:
            if self.checkpoints is not None:
                self.checkpoints.observe(self.base, checkpoint, known=known)
            else:
                verify_checkpoint(checkpoint)
            if self.checkpoint is None or checkpoint.seq >= self.checkpoint.seq:
                self.checkpoint = checkpoint

    def _error(self, response: httpx.Response) -> LabrelayError:
        hint = None
        try:
            doc = response.json()
            code, detail = str(doc.get("code")), str(doc.get("detail"))[:500]
            if isinstance(doc.get("hint"), str):
                hint = doc["hint"][:300]
        except (ValueError, AttributeError):
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            code, detail = "", f"({kind}; not shown)"  # another server's page: nothing of it is repeated
            if response.status_code in (400, 401, 403, 404, 405):  # a labrelay relay says these in JSON
                return UsageError(
                    f"{self.base} answered {response.status_code} ({kind}), not as a labrelay relay does",
                    hint="check --server: the relay's own URL, https://HOST[:PORT]",
                )
        if response.status_code == 507:
            return StorageFull(f"relay: {detail}")
        if response.status_code >= 500 and code in ("", "internal", "unavailable", "operational"):
            return Unavailable(f"relay error {response.status_code}: {detail}")
        if not code:
            return OperationalError(f"relay answered {response.status_code}: {detail}")
        error = error_from_code(code, f"relay refused: {detail}", hint)
        if isinstance(error, TooManyRequests):
            error.retry_after = _retry_after(response.headers.get("retry-after"))
        return error

    def _json(self, method: str, path: str, doc: Mapping[str, Any] | None = None) -> Any:
        def go() -> Any:
            body = json.dumps(doc, sort_keys=True).encode() if doc is not None else None
            headers = {"Content-Type": JSON_CONTENT_TYPE} if doc is not None else {}
            response = self._request(method, path, body=body, headers=headers, extra=("content-type",))
            try:
                return response.json()
            except ValueError as exc:
                raise OperationalError(f"relay sent malformed JSON for {method} {path}") from exc

        return self.retry.run(go)

    # ------------------------------------------------------------ API

    def directory(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/v1/directory")
        return result

    def register_entry(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/v1/directory/entries", envelope)
        return result

    def key_horizon(self, age_recipient: str) -> dict[str, Any]:
        """The caller's open transfers sealed to one of its keys: ``{key, open, latest_deadline}``."""
        result: dict[str, Any] = self._json("GET", f"/v1/keys/{age_recipient}/horizon")
        return result

    def register_revocation(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/v1/directory/revocations", envelope)
        return result

    def register_policy(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/v1/policies", envelope)
        return result

    def policy(self, version: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/policies/{version or 'current'}")
        return result

    def register_policy_withdrawal(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/v1/policies/withdrawals", envelope)
        return result

    def policy_withdrawals(self) -> list[dict[str, Any]]:
        """The authority-signed policy withdrawals the relay holds, unverified (``client.policy`` verifies them)."""
        result = self._json("GET", "/v1/policies/withdrawals")
        withdrawals = result.get("withdrawals") if isinstance(result, dict) else None
        if not isinstance(withdrawals, list):
            raise OperationalError("relay sent a malformed list of policy withdrawals")
        return withdrawals

    def create_transfer(self, manifest_envelope: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/v1/transfers", manifest_envelope)
        return result

    def transfers(self, box: str) -> list[dict[str, Any]]:
        doc = self._json("GET", f"/v1/transfers?box={box}")
        items = doc.get("transfers") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise OperationalError("relay sent a malformed transfer list")
        return items

    def transfer(self, transfer_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/transfers/{transfer_id}")
        return result

    def send_receipt(self, transfer_id: str, envelope: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/v1/transfers/{transfer_id}/receipt", envelope)
        return result

    def send_refusal(self, transfer_id: str, envelope: Mapping[str, Any]) -> dict[str, Any]:
        """The recipient's signed refusal of a payload it will not accept: never offered again, its sender told."""
        result: dict[str, Any] = self._json("POST", f"/v1/transfers/{transfer_id}/refusal", envelope)
        return result

    def limits(self) -> dict[str, Any]:
        """The relay's terms: ``{max_ttl_seconds, max_payload_bytes, clock_skew_seconds}``, each a non-negative
        integer (anything else is refused: a client must not check a send against terms it cannot read)."""
        result = self._json("GET", "/v1/limits")
        names = ("max_ttl_seconds", "max_payload_bytes", "clock_skew_seconds")
        if not isinstance(result, dict) or not all(
            isinstance(result.get(n), int) and not isinstance(result.get(n), bool) and result[n] >= 0 for n in names
        ):
            raise OperationalError("relay sent malformed limits")
        return result

    def upload_offset(self, transfer_id: str) -> int:
        def go() -> int:
            response = self._request("HEAD", f"{UPLOAD_PATH}{transfer_id}", headers={TUS_RESUMABLE: TUS_VERSION})
            return _offset(response)

        return self.retry.run(go)

    def upload_region(self, transfer_id: str, source: BinaryIO, offset: int, length: int) -> int:
        """PATCH ``length`` bytes of ``source`` from ``offset``, streamed from disk: the chunk is read twice (its
        digest, then the body) and never held whole, so memory does not grow with the chunk size."""
        source.seek(offset)
        digest = content_digest_of(source, length)
        headers = {TUS_RESUMABLE: TUS_VERSION, "Content-Type": OFFSET_CONTENT_TYPE, UPLOAD_OFFSET: str(offset)}
        response = self._request(
            "PATCH",
            f"{UPLOAD_PATH}{transfer_id}",
            headers=headers,
            extra=UPLOAD_SIGNED,
            streamed_body=(_region(source, offset, length), length, digest),
        )
        response.close()
        return _offset(response)

    def upload(
        self,
        transfer_id: str,
        source: BinaryIO,
        size: int,
        chunk_size: int,
        on_progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
        offset: int | None = None,
    ) -> None:
        """Upload ``source`` resumably: start from the relay's offset (``offset`` if the caller was just told it,
        else asked with a HEAD); after a failure, ask it again and go on, except after a 429: the relay refused the
        chunk before reading any of it. A wrong offset costs one 409, after which the relay is asked. ``stop``, once
        set, ends the upload before its next chunk (``OperationalError``; the relay keeps what it has, for a later
        resume)."""
        if offset is None:
            offset = self.upload_offset(transfer_id)
        if on_progress:
            on_progress(offset)
        failures, waited = 0, 0.0
        while offset < size:
            if stop is not None and stop.is_set():
                raise OperationalError(
                    f"upload of transfer {transfer_id} stopped at byte {offset} of {size}",
                    hint="labrelay resume uploads the rest",
                )
            try:
                new_offset = self.upload_region(transfer_id, source, offset, min(chunk_size, size - offset))
            except (Unavailable, Conflict) as exc:
                failures += 1
                wait = self.retry.pause(failures, exc, waited)
                if wait is None:
                    raise
                waited += wait
                new_offset = offset if isinstance(exc, TooManyRequests) else self.upload_offset(transfer_id)
            else:
                failures, waited = 0, 0.0
            if on_progress:
                on_progress(new_offset - offset)
            offset = new_offset

    def cancel_upload(self, transfer_id: str) -> None:
        self._request("DELETE", f"{UPLOAD_PATH}{transfer_id}", headers={TUS_RESUMABLE: TUS_VERSION})

    def audit_checkpoint(self) -> Checkpoint:
        """The relay's current signed audit head, verified (and compared with what this party kept)."""
        doc = self._json("GET", "/v1/audit/checkpoint")
        try:
            checkpoint = Checkpoint.from_doc(doc["checkpoint"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"relay sent a malformed checkpoint: {exc}") from None
        if self.checkpoints is not None:
            self.checkpoints.observe(self.base, checkpoint)
        return verify_checkpoint(checkpoint)

    def audit_hash(self, seq: int) -> dict[str, Any]:
        """The relay's current hash of audit record ``seq`` (to compare with a checkpoint held)."""
        result: dict[str, Any] = self._json("GET", f"/v1/audit/records/{seq}")
        return result

    def audit_export(self, after: int = 0, limit: int = 10_000) -> bytes:
        """Audit records after ``after`` as NDJSON (administrators only)."""
        return self.retry.run(lambda: self._request("GET", f"/v1/audit/export?after={after}&limit={limit}").content)

    def admin_command(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/v1/admin/commands", envelope)
        return result

    def admin_status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/v1/admin/status")
        return result

    def download(self, transfer_id: str, start: int = 0) -> Iterator[bytes]:
        """The payload's bytes from ``start`` (resuming a partial download)."""
        headers = {"Range": f"bytes={start}-"} if start else {}
        response = self._request(
            "GET", f"/v1/transfers/{transfer_id}/payload", headers=headers, extra=PAYLOAD_SIGNED, stream=True
        )
        if start and response.status_code != 206:
            response.close()
            raise IntegrityError("relay ignored the resume offset")
        return _iterate(response)


def _root_cause(exc: BaseException) -> BaseException:
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]  # the loop condition guarantees one is not None
    return seen


def _tls_refused(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _region(source: BinaryIO, offset: int, length: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """The bytes ``offset .. offset+length`` of ``source``, a piece at a time, read as httpx sends them."""
    source.seek(offset)
    left = length
    while left > 0:
        block = source.read(min(piece, left))
        if not block:
            raise IntegrityError("spooled payload shrank while uploading")
        left -= len(block)
        yield block


def _offset(response: httpx.Response) -> int:
    value = response.headers.get(UPLOAD_OFFSET, "")
    if not (value.isascii() and value.isdigit()):
        raise OperationalError("relay sent no Upload-Offset")
    return int(value)


def _iterate(response: httpx.Response) -> Iterator[bytes]:
    try:
        yield from response.iter_bytes(1 << 20)
    except httpx.TransportError as exc:
        raise Unavailable(f"download interrupted: {exc}") from exc
    finally:
        response.close()


MAX_RETRY_AFTER = 60
"""The longest a client waits on one ``Retry-After``, whatever the relay asks (a relay cannot stall a nightly job)."""


def _retry_after(value: str | None) -> int:
    """Seconds to wait from a ``Retry-After`` in seconds (RFC 9110); anything else, or nothing: 1 s."""
    if value is None or not value.isascii() or not value.isdigit():
        return 1
    return min(int(value), MAX_RETRY_AFTER)
