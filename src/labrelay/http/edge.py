"""The relay's edge against exhaustion: what one outsider or one enrolled party can hold, and for how long.

- **Connections** (a uvicorn protocol, ``guarded_protocol``): at most ``max_connections`` per process (never more than
  the open-file limit allows) and, on a public address, ``max_connections_per_address``; a connection must send a
  request's whole header section within ``header_timeout`` of connecting or of the request's first byte; an idle
  keep-alive connection closes after ``keep_alive_timeout``.
- **Requests** (an ASGI middleware, ``EdgeGuard``): a header section over ``max_header_bytes``, or a signature header
  longer than the signing profile can produce, is refused (431) before anything parses it; a body that stalls for
  ``body_timeout``, or is not whole by its deadline (``upload_deadline`` for an upload), is cut (408); the rest of a
  body answered before it was read is discarded as it comes, under the same timeouts (the protocol's drain);
  ``X-Forwarded-For``/``-Proto`` count only from a peer in ``trusted_proxies``, and only when they hold an address
  and a scheme.
- **Uploads** (``EdgeState.upload_slot``): at most ``max_uploads_per_party`` per party and ``max_uploads`` per process
  stream at once, on their own threads, so that stalled uploads never hold what authentication, downloads and admin
  commands run on; beyond, 429 with ``Retry-After``.
- **Cuts** (``EdgeState.cut``): locking, revoking or freezing closes the party's uploads and downloads in progress.

Every limit reached is reported through ``EdgeState.on_limit`` (throttled), which the app turns into a ``limit:hit``
audit event, and detection into a ``limits`` alert. Everything here runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import resource
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import anyio
import h11
import structlog
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from labrelay.domain.names import Network, parse_address
from labrelay.errors import HeadersTooLarge, LabrelayError, RequestTimeout, TooManyRequests, Unavailable, UsageError
from labrelay.http.problems import problem, status_for
from labrelay.relay.throttle import ReportGate, address_key
from labrelay.wire import PROBLEM_CONTENT_TYPE, SIGNATURE, SIGNATURE_INPUT, UPLOAD_PATH

log = structlog.get_logger("labrelay.http.edge")

Peer = tuple[str, int]
LimitReport = Callable[[str, "str | None", "str | None"], None]
"""``(limit, party, remote)``: a limit was reached (``party`` when the caller is proven, else ``remote``)."""

TIMED_OUT = "labrelay.body_timed_out"
PEER = "labrelay.peer"
FD_MARGIN = 64
"""File descriptors kept for the database, storage, logs and the key store beyond the connection cap."""
REPORT_EVERY = 60.0
"""One report per limit and subject per this many seconds: a flood must not become a flood of audit writes."""
MAX_REPORTS = 20
"""At most this many reports (audit writes, alerts) per ``REPORT_EVERY``, whatever the number of subjects."""
BUSY_RETRY_AFTER = 1
"""Seconds a caller waits when every upload slot of the process is taken (``upload_refusal``)."""
_SIGNATURE_INPUT = SIGNATURE_INPUT.lower().encode()
_SIGNATURE = SIGNATURE.lower().encode()


@dataclass(frozen=True)
class EdgeLimits:
    """The edge's limits, in seconds and counts (from the relay's settings; docs/configuration.md)."""

    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    body_timeout: float = 30.0
    upload_deadline: float = 900.0
    max_connections: int = 1000
    max_connections_per_address: int = 64
    max_uploads: int = 32
    max_uploads_per_party: int = 4
    trusted_proxies: tuple[Network, ...] = ()
    max_header_bytes: int = 16 * 1024
    """Every header line together. A signed labrelay request needs under 2 KiB; browsers stay well under 8 KiB."""
    max_signature_input: int = 1024
    """``Signature-Input`` of the signing profile: six components, created, expires, nonce, keyid, alg (< 400 B)."""
    max_signature: int = 256
    """``Signature``: one Ed25519 signature, base64 (< 100 B)."""

    @property
    def body_deadline(self) -> float:
        """The whole body of any request but an upload: two stalls' worth (a JSON envelope is at most 1 MiB)."""
        return 2 * self.body_timeout

    def connection_cap(self) -> int:
        """``max_connections``, lowered to what the process's open-file limit leaves after ``FD_MARGIN``."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - FD_MARGIN))


class EdgeState:
    """Connections, uploads and transfers in progress in this process, and the reports of limits reached."""

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        self.per_address = False
        """Whether ``max_connections_per_address`` applies: the relay listens on a public address (no proxy)."""
        self.on_limit: LimitReport | None = None
        self._connections: dict[Peer, asyncio.Transport] = {}
        self._by_address: Counter[str] = Counter()
        self._uploads: Counter[str] = Counter()
        self._in_flight: defaultdict[str, set[Peer]] = defaultdict(set)
        self._cut: dict[Peer, LabrelayError] = {}
        self._reports = ReportGate(REPORT_EVERY, MAX_REPORTS)
        self._cap = limits.connection_cap()
        self.refused_connections = 0
        self.closed_slow = 0

    # ------------------------------------------------------------ connections

    def is_trusted_proxy(self, host: str) -> bool:
        if not self.limits.trusted_proxies:  # the default: no address to parse on every request
            return False
        address = parse_address(host)
        if address is None:
            return False
        ip = ipaddress.ip_address(address)
        return any(ip in net for net in self.limits.trusted_proxies)

    def admit(self, peer: Peer | None, transport: asyncio.Transport) -> bool:
        """Whether a new connection may stay open; counts it if so."""
        if peer is None:
            return True
        host = address_key(peer[0])  # an IPv6 client is counted by its /64: one host holds many addresses
        if len(self._connections) >= self._cap:
            self.refused_connections += 1
            self.report("connections", None, host)
            return False
        capped = self.per_address and not self.is_trusted_proxy(peer[0])
        if capped and self._by_address[host] >= self.limits.max_connections_per_address:
            self.refused_connections += 1
            self.report("connections-per-address", None, host)
            return False
        self._connections[peer] = transport
        self._by_address[host] += 1
        return True

    def release(self, peer: Peer | None) -> None:
        if peer is None or self._connections.pop(peer, None) is None:
            return
        host = address_key(peer[0])
        self._by_address[host] -= 1
        if self._by_address[host] <= 0:
            del self._by_address[host]
        self._cut.pop(peer, None)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # ------------------------------------------------------------ uploads and downloads in progress

    def upload_refusal(self, party: str) -> TooManyRequests | None:
        """Why ``party`` may not start one more upload now (its slots, or the process's, are all taken), or None.

        Also asked with the key id a request only *claims*, before its signature is verified, so that a flood of
        excess uploads costs neither a verification nor an audit write; harmless to the real party, whose own request
        would be refused all the same while its slots are taken.

        ``Retry-After``: a party's own slots are its own uploads, which may be stalled (a slot frees within the
        body timeout): a sixth of it. The process's slots are everyone's and turn over as chunks complete, many a
        second when a burst of labs sends at once (a nightly cron at the same minute): one second. Five seconds
        there left the relay idle for most of each wait: 200 labs at once sent 10-12 transfers a second, 13-23 with
        one (decision 0024)."""
        if self._uploads[party] >= self.limits.max_uploads_per_party:
            self.report("uploads-per-party", party, None)
            return TooManyRequests(
                f"{party} already has {self._uploads[party]} uploads in progress on this relay "
                f"(at most {self.limits.max_uploads_per_party})",
                hint="upload one chunk at a time per transfer; the client retries after Retry-After",
                retry_after=max(1, int(self.limits.body_timeout // 6)),
            )
        total = sum(self._uploads.values())
        if total >= self.limits.max_uploads:
            self.report(
                "uploads", None, None
            )  # the relay's limit: naming the (perhaps only claimed) caller says nothing
            return TooManyRequests(
                f"the relay has {total} uploads in progress (at most {self.limits.max_uploads})",
                retry_after=BUSY_RETRY_AFTER,
            )
        return None

    @contextlib.contextmanager
    def upload_slot(self, party: str) -> Iterator[None]:
        """Hold one of ``party``'s upload slots (and one of the process's) while its PATCH streams; 429 if none."""
        refusal = self.upload_refusal(party)
        if refusal is not None:
            raise refusal
        self._uploads[party] += 1
        try:
            yield
        finally:
            self._uploads[party] -= 1
            if self._uploads[party] <= 0:
                del self._uploads[party]

    @property
    def uploads_in_progress(self) -> int:
        return sum(self._uploads.values())

    @contextlib.contextmanager
    def in_flight(self, party: str, peer: Peer | None) -> Iterator[None]:
        """Mark ``peer``'s connection as carrying ``party``'s upload or download, so that ``cut`` can close it."""
        if peer is None:
            yield
            return
        self._in_flight[party].add(peer)
        try:
            yield
        finally:
            peers = self._in_flight.get(party)
            if peers is not None:
                peers.discard(peer)
                if not peers:
                    del self._in_flight[party]

    def parties_in_flight(self) -> list[str]:
        return list(self._in_flight)

    def cut(self, party: str | None, why: LabrelayError) -> int:
        """Close the connections carrying ``party``'s uploads and downloads (every party's when None); how many."""
        parties = list(self._in_flight) if party is None else [party]
        n = 0
        for name in parties:
            for peer in list(self._in_flight.get(name, ())):
                transport = self._connections.get(peer)
                if transport is not None and not transport.is_closing():
                    self._cut[peer] = why
                    transport.abort()
                    n += 1
        if n:
            log.warning("transfers cut", party=party or "*", connections=n, reason=why.code)
        return n

    def cut_reason(self, peer: Peer | None) -> LabrelayError | None:
        """Why the relay closed ``peer``'s connection, if it did."""
        return self._cut.get(peer) if peer is not None else None

    # ------------------------------------------------------------ reports

    @property
    def suppressed(self) -> int:
        """Limit reports left out because ``MAX_REPORTS`` were made within ``REPORT_EVERY``."""
        return self._reports.suppressed

    def report(self, limit: str, party: str | None, remote: str | None) -> None:
        """A limit was reached: tell ``on_limit``, at most once per limit and subject per ``REPORT_EVERY`` and
        ``MAX_REPORTS`` times in all per ``REPORT_EVERY``."""
        if self._reports.admit(f"{limit}:{party or remote or '?'}", time.monotonic()) is None:
            return
        log.warning("limit reached", limit=limit, party=party, remote=remote)
        if self.on_limit is not None:
            try:
                self.on_limit(limit, party, remote)
            except Exception as exc:  # noqa: BLE001 - a report must never break the connection handling it
                log.error("limit report failed", error=type(exc).__name__)


def guarded_protocol(state: EdgeState) -> type[H11Protocol]:
    """uvicorn's h11 protocol, with the connection caps and the header timeout of ``state``."""

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _drain_timer: asyncio.TimerHandle | None = None
        _drain_ends = 0.0
        _admitted = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn annotates the base with BaseTransport
            super().connection_made(transport)
            if not state.admit(self.client, transport):
                transport.abort()
                return
            self._admitted = True
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._stop_drain()
            if self._admitted:
                state.release(self.client)
                self._admitted = False
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._drain_timer is not None:
                self._drain()
            if self.transport.is_closing():
                self._disarm()
            elif self.conn.their_state is h11.IDLE:
                self._arm()  # a request's header section is still incomplete: the clock runs from its first byte
            else:
                self._disarm()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(state.limits.header_timeout, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                # Answered before its body was read (a refusal): read and discard the rest, as HTTP wants (closing now
                # would reset the connection under the answer), but only while it keeps coming, and not for ever.
                self._drain_ends = self.loop.time() + state.limits.upload_deadline
                self._drain()

        def _drain(self) -> None:
            """(Re)start the wait for the next piece of a body being discarded; stop once the body is whole."""
            self._stop_drain()
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                wait = min(state.limits.body_timeout, self._drain_ends - self.loop.time())
                self._drain_timer = self.loop.call_later(max(wait, 0.0), self._drain_late)

        def _stop_drain(self) -> None:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
                self._drain_timer = None

        def _drain_late(self) -> None:
            self._drain_timer = None
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                state.closed_slow += 1
                self.transport.abort()

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                state.closed_slow += 1
                self.transport.abort()

    return GuardedH11Protocol


def disconnect_error(scope: Scope, state: EdgeState) -> LabrelayError:
    """Why a request's body ended early: the relay cut its connection (a lock, a revocation, a freeze), its body
    stalled or ran past its deadline, or the client went away."""
    why = state.cut_reason(scope.get(PEER))
    if why is not None:
        return type(why)(why.message, hint=why.hint)
    if scope.get(TIMED_OUT):
        return RequestTimeout(
            "request body stalled or too slow: cut by the relay",
            hint="the client resumes from the offset the relay holds",
        )
    return Unavailable("the connection closed before the request's body was whole")


def problem_response(exc: LabrelayError, headers: dict[str, str] | None = None) -> JSONResponse:
    status = status_for(exc)
    return JSONResponse(
        problem(exc, status),
        status_code=status,
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **(headers or {})},
        media_type=PROBLEM_CONTENT_TYPE,
    )


class EdgeGuard:
    """ASGI middleware: header limits, forwarded headers from trusted proxies only, body timeouts (module doc)."""

    def __init__(self, app: ASGIApp, state: EdgeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.state.limits
        client = scope.get("client")
        peer: Peer | None = (str(client[0]), int(client[1])) if client else None
        scope[PEER] = peer
        refusal = _header_refusal(scope["headers"], limits)
        if refusal is not None:
            self.state.report("headers", None, peer[0] if peer else None)
            await problem_response(refusal, {"Connection": "close"})(scope, receive, send)
            return
        framing = _framing_refusal(scope["headers"])
        if framing is not None:
            await problem_response(framing, {"Connection": "close"})(scope, receive, send)
            return
        if peer is not None and self.state.is_trusted_proxy(peer[0]):
            _apply_forwarded(scope, self.state)
        has_body = _declares_body(scope["headers"])
        deadline = time.monotonic() + (
            limits.upload_deadline if scope["path"].startswith(UPLOAD_PATH) else limits.body_deadline
        )
        body_done = not has_body

        async def guarded_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()  # after the body: waiting for a disconnect, for as long as a response streams
            if scope.get(TIMED_OUT):
                return {"type": "http.disconnect"}
            wait = min(limits.body_timeout, deadline - time.monotonic())
            message: Message | None = None
            if wait > 0:
                with anyio.move_on_after(wait):
                    message = await receive()
            if message is None:
                # Never raise from here: the app may read the body inside a task group (a middleware) that would
                # wrap the error. The app sees a disconnect and asks ``disconnect_error`` why.
                scope[TIMED_OUT] = True
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start" and scope.get(TIMED_OUT):
                # The body stalled or ran out of time: nothing more is read from this connection. (A body answered
                # before it was read otherwise is discarded as it comes: the protocol's drain, timed the same way.)
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)


def _header_refusal(headers: list[tuple[bytes, bytes]], limits: EdgeLimits) -> LabrelayError | None:
    """Why this header section is refused before anything parses it, or None."""
    total = 0
    signature_inputs = signatures = 0
    for name, value in headers:
        total += len(name) + len(value) + 4
        if name == _SIGNATURE_INPUT:
            signature_inputs += 1
            if len(value) > limits.max_signature_input:
                return HeadersTooLarge(f"Signature-Input over {limits.max_signature_input} bytes")
        elif name == _SIGNATURE:
            signatures += 1
            if len(value) > limits.max_signature:
                return HeadersTooLarge(f"Signature over {limits.max_signature} bytes")
    if total > limits.max_header_bytes:
        return HeadersTooLarge(f"request headers over {limits.max_header_bytes} bytes")
    if signature_inputs > 1 or signatures > 1:
        return HeadersTooLarge("one Signature-Input and one Signature header at most")
    return None


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request has a body: any ``Transfer-Encoding``, or any ``Content-Length`` but 0."""
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b""))
        for name, value in headers
    )


def _framing_refusal(headers: list[tuple[bytes, bytes]]) -> LabrelayError | None:
    """``Content-Length`` with ``Transfer-Encoding`` (RFC 9112 6.3: a request smuggling sign): refused."""
    names = {name for name, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        return UsageError("Content-Length and Transfer-Encoding together")
    return None


def _apply_forwarded(scope: Scope, state: EdgeState) -> None:
    """From a trusted proxy: the client is the right-most ``X-Forwarded-For`` address that is not itself a trusted
    proxy; the scheme is ``X-Forwarded-Proto`` if it is http or https. A value that is not an address is ignored
    whole (the peer stays the client), never written anywhere."""
    forwarded_for: list[bytes] = []
    proto: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded_for.append(value)
        elif name == b"x-forwarded-proto":
            proto = value
    if forwarded_for:
        hops = [h for h in b",".join(forwarded_for).decode("latin-1").split(",") if h.strip()]
        addresses = [parse_address(h) for h in hops]
        if hops and all(a is not None for a in addresses):
            client = next((a for a in reversed(addresses) if a and not state.is_trusted_proxy(a)), addresses[0])
            if client is not None:
                scope["client"] = (client, 0)
    if proto is not None and proto.strip().lower() in (b"http", b"https"):
        scope["scheme"] = proto.strip().lower().decode("ascii")
