"""The relay's FastAPI application. ``create_app(services)`` builds it; ``labrelay.runtime`` supplies services.

Every route under /v1 authenticates its request (RFC 9421) before doing anything, reads at most a bounded body,
and hands over to a service in a worker thread. Upload chunks (tus 1.0 core, PATCH) and payload downloads are
streamed: a 300 MB payload never sits in the relay's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from labrelay import __version__
from labrelay.crypto.checkpoints import encode_header
from labrelay.crypto.envelopes import MAX_ENVELOPE_BYTES
from labrelay.crypto.httpsig import DigestCheck, HeaderLines, RequestView, claimed_keyid
from labrelay.domain.audit import AuditEvent, AuditRecord, Outcome
from labrelay.domain.names import is_loopback_host
from labrelay.domain.parties import EntryStatus, PartyEntry, Role
from labrelay.domain.timeutil import to_rfc3339
from labrelay.errors import (
    AuthenticationFailed,
    LabrelayError,
    NotFound,
    PartyLocked,
    PartyRevoked,
    PermissionDenied,
    RelayFrozen,
    TooLarge,
    TooManyRequests,
    UntrustedEntry,
    UsageError,
)
from labrelay.http.edge import PEER, EdgeGuard, EdgeLimits, EdgeState, Peer, disconnect_error
from labrelay.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from labrelay.http.metrics import RelayMetrics
from labrelay.http.models import (
    DirectoryOut,
    Envelope,
    Health,
    KeyHorizon,
    LimitsOut,
    PolicyRegistered,
    PolicyWithdrawals,
    PolicyWithdrawn,
    Problem,
    Registered,
    TransferList,
    TransferOut,
)
from labrelay.http.problems import problem, status_for
from labrelay.http.web.routes import add_web, relying_party, security_headers
from labrelay.ports import AuditLog, Clock
from labrelay.relay.alerts import AlertDispatcher
from labrelay.relay.auditor import Auditor
from labrelay.relay.auth import Authenticator, Caller
from labrelay.relay.console import ConsoleService
from labrelay.relay.control import ControlService
from labrelay.relay.delivery import DeliveryService
from labrelay.relay.detector import Detector
from labrelay.relay.directory import DirectoryService
from labrelay.relay.policies import PolicyService
from labrelay.relay.reaper import Reaper
from labrelay.relay.recovery import RecoveryService
from labrelay.relay.uploads import UploadService

log = structlog.get_logger("labrelay.http")
T = TypeVar("T")

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
PROBLEM_CONTENT_TYPE = "application/problem+json"
NONCE_PRUNE_SECONDS = 60
CUT_SWEEP_SECONDS = 1.0
CHECKPOINT_HEADER = "Labrelay-Checkpoint"
MAX_SEQ = 2**62


@dataclass(frozen=True)
class RelayServices:
    """Everything the HTTP edge needs, built by the composition root."""

    auth: Authenticator
    directory: DirectoryService
    uploads: UploadService
    delivery: DeliveryService
    recovery: RecoveryService
    """Expiry and repair: the reaper's work on transfers (the reaper holds it; tests call it directly)."""
    policies: PolicyService
    auditor: Auditor
    clock: Clock
    reaper: Reaper
    control: ControlService
    audit_log: AuditLog
    metrics: RelayMetrics
    detector: Detector | None = None
    alerts: AlertDispatcher | None = None
    console: ConsoleService | None = None
    """The web console (passkeys, sessions, the pages' metadata); None: no console, the API alone."""
    metrics_access: str = "loopback"
    reaper_interval: float = 60.0
    max_json_bytes: int = MAX_ENVELOPE_BYTES
    max_chunk_bytes: int = 64 * 1024 * 1024
    public_url: str | None = None
    background: bool = True
    """Run the reaper in this process (the embedded default); False when ``labrelay worker`` runs it."""
    edge: EdgeLimits = field(default_factory=EdgeLimits)
    """Connection, header, body and upload limits (labrelay.http.edge)."""


def _problem_response(
    exc: LabrelayError, headers: Mapping[str, str] | None = None, status: int | None = None
) -> JSONResponse:
    """The problem document of ``exc``, with ``status`` when the HTTP status is not the error's own (tus answers
    412 and 415, routing 405): the document's ``status`` is always the response's (RFC 9457)."""
    status = status or status_for(exc)
    if isinstance(exc, TooManyRequests):
        headers = {**(headers or {}), "Retry-After": str(exc.retry_after)}
    return JSONResponse(problem(exc, status), status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


# Errors are served as application/problem+json (never application/json, which FastAPI would document for a
# `model`): the schema is given inline under the media type actually sent.
_PROBLEM_CONTENT = {PROBLEM_CONTENT_TYPE: {"schema": Problem.model_json_schema()}}
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    "4XX": {"content": _PROBLEM_CONTENT, "description": "Refused; `code` says why (docs/protocol.md, Errors)."},
    "5XX": {
        "content": _PROBLEM_CONTENT,
        "description": "`frozen` or `unavailable` (503), `storage-full` (507); `internal` (500) is a bug.",
    },
}
_SIGNED = {"description": "Signed request (RFC 9421, Ed25519; see docs/protocol.md)."}
# The tus 1.0 headers (docs/protocol.md, HTTP API): without them in the document, a client generated from it
# could not upload (every PATCH would be refused with 412).
_MAX_UINT = 10**15 - 1  # the relay reads at most 15 ASCII digits (``_is_uint``)
_UINT_HEADER = {"schema": {"type": "integer", "minimum": 0, "maximum": _MAX_UINT}}
_TUS_HEADER = {"schema": {"type": "string", "enum": [TUS_VERSION]}, "description": "tus protocol version."}
_TUS_PARAMETERS = [
    {"name": "Tus-Resumable", "in": "header", "required": True, **_TUS_HEADER},
    {
        "name": "Upload-Offset",
        "in": "header",
        "required": True,
        "description": "Where this chunk starts: the offset the relay holds (signed, with `content-digest`).",
        **_UINT_HEADER,
    },
]
_RANGE_PARAMETER = {
    "name": "Range",
    "in": "header",
    "required": False,
    "description": "`bytes=N-`: resume from byte N (signed, when present).",
    "schema": {"type": "string", "pattern": "^bytes=[0-9]{1,15}-$"},
}
_ENVELOPE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": Envelope.model_json_schema()}},
    }
}


def create_app(services: RelayServices) -> FastAPI:  # noqa: PLR0915 - one function, one route table
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        services.metrics.frozen.set(1 if await run_in_threadpool(services.control.frozen) else 0)
        uploads.append(anyio.CapacityLimiter(services.edge.max_uploads))
        edge.on_limit = report_limit
        tasks = [asyncio.create_task(_prune_nonces(services)), asyncio.create_task(_cut_sweep(services, edge))]
        if services.background:
            reaped = await run_in_threadpool(services.reaper.run_once)  # before the first request is served
            await run_in_threadpool(
                services.auditor.record,
                AuditEvent.RELAY_START,
                version=__version__,
                recovered=reaped.repaired,
                expired=reaped.expired,
            )
            tasks.append(asyncio.create_task(_reap(services)))
        else:  # a replica: the leading worker recovers, reaps and detects for every replica
            await run_in_threadpool(services.auditor.record, AuditEvent.RELAY_START, version=__version__, replica=True)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await run_in_threadpool(services.auditor.record, AuditEvent.RELAY_STOP)
            if services.alerts is not None:
                await run_in_threadpool(services.alerts.close)

    app = FastAPI(
        title="labrelay",
        version=__version__,
        summary="End-to-end encrypted relay for lab results. Every /v1 request is signed (RFC 9421).",
        docs_url=None,  # Swagger UI would load scripts from a CDN; the console (issue 8) ships its own
        redoc_url=None,
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would be built from the Host header; clients use the exact paths
    )
    edge = EdgeState(services.edge)
    app.state.edge = edge
    services.metrics.watch_edge(edge)
    uploads: list[anyio.CapacityLimiter] = []
    """The threads upload bodies stream on: their own, so stalled uploads never hold the default pool's."""
    reports: set[asyncio.Task[Any]] = set()

    def report_limit(limit: str, party: str | None, remote_address: str | None) -> None:
        """A limit was reached (on the event loop): a ``limit:hit`` audit event, written on a worker thread."""
        task = asyncio.get_running_loop().create_task(
            run_in_threadpool(
                services.auditor.record,
                AuditEvent.LIMIT_HIT,
                outcome=Outcome.REFUSED,
                actor=party,
                reason=TooManyRequests.code,
                limit=limit,
                remote=remote_address,
            )
        )
        reports.add(task)
        task.add_done_callback(reports.discard)

    # ------------------------------------------------------------ edges

    @app.exception_handler(LabrelayError)
    async def _labrelay_error(_request: Request, exc: LabrelayError) -> JSONResponse:
        return _problem_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err: LabrelayError = NotFound("no such resource") if exc.status_code == 404 else UsageError(str(exc.detail))
        return _problem_response(err, exc.headers, exc.status_code)  # a 405 keeps its Allow header (RFC 9110)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem_response(UsageError("malformed request parameters"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never echo the exception: only its type goes to the log and the audit trail.
        log.error("unexpected error", error=type(exc).__name__, path=request.url.path)
        with contextlib.suppress(Exception):
            await run_in_threadpool(
                services.auditor.record,
                AuditEvent.REQUEST_ERROR,
                outcome=Outcome.ERROR,
                reason=type(exc).__name__[:40],
            )
        return JSONResponse(
            {
                "type": "about:blank",
                "title": "internal error",
                "status": 500,
                "code": "internal",
                "detail": "internal error; the relay's operator has the details",
            },
            status_code=500,
            media_type="application/problem+json",
        )

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        security_headers(response)
        latest = services.auditor.latest
        if latest is not None and getattr(request.state, "authenticated", False):
            # The relay's latest signed audit head: clients keep it, and can later prove what the log said.
            response.headers[CHECKPOINT_HEADER] = encode_header(latest)
        elapsed = time.perf_counter() - started
        route = getattr(request.scope.get("route"), "path", "unmatched")
        services.metrics.observe_request(request.method, route, response.status_code, elapsed)
        log.info(
            "request",
            method=request.method,
            path=route,
            status=response.status_code,
            ms=round(elapsed * 1000, 1),
        )
        return response

    # ------------------------------------------------------------ helpers

    def view(request: Request) -> RequestView:
        scope = request.scope
        if services.public_url:
            origin = services.public_url.rstrip("/")
        else:
            host = request.headers.get("host")
            if not host:
                raise AuthenticationFailed("request without a Host header")
            origin = f"{scope['scheme']}://{host}"
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        url = origin + path + (f"?{query}" if query else "")
        lines = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        return RequestView(request.method, url, HeaderLines(lines))

    def remote(request: Request) -> str | None:
        """The client's address: the peer's, or what a trusted proxy forwarded (validated; labrelay.http.edge)."""
        return request.client.host if request.client else None

    def peer_of(request: Request) -> Peer | None:
        peer: Peer | None = request.scope.get(PEER)
        return peer

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not _is_uint(declared) or int(declared) > services.max_json_bytes):
            raise TooLarge(f"request body over {services.max_json_bytes} bytes")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > services.max_json_bytes:
                    raise TooLarge(f"request body over {services.max_json_bytes} bytes")
        except ClientDisconnect:
            raise disconnect_error(request.scope, edge) from None
        return bytes(body)

    def parse_json(body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly nested arrays
            raise UsageError("request body is not JSON") from None
        if not isinstance(doc, dict):
            raise UsageError("request body must be a JSON object")
        return doc

    def check_digest(request: Request, body: bytes) -> None:
        digest = DigestCheck(request.headers.get("content-digest"))
        digest.update(body)
        digest.verify()

    async def authenticate(
        request: Request,
        *,
        body: bytes | None = None,
        streamed: bool = False,
        extra: tuple[str, ...] = (),
        enrolling: PartyEntry | None = None,
        while_frozen: bool = False,
    ) -> Caller:
        """Authenticate the request. A request with a body (read, or ``streamed`` to storage) must sign its
        Content-Digest; a JSON body must also sign its Content-Type. While the relay is frozen, only routes marked
        ``while_frozen`` (audit reads, admin commands, revocations) go further."""
        has_body = body is not None or streamed
        if body is not None:
            extra = (*extra, "content-type")
        route = getattr(request.scope.get("route"), "path", None)
        caller = await run_in_threadpool(
            services.auth.authenticate,
            view(request),
            has_body=has_body,
            extra_components=extra,
            enrolling=enrolling,
            remote=remote(request),
            route=route,
        )
        request.state.authenticated = True  # responses to a proven signer carry the audit checkpoint
        if not while_frozen:
            await run_in_threadpool(services.control.check_open, caller.name, route or "?")
        if body is not None:
            check_digest(request, body)
        return caller

    async def require_admin(caller: Caller, what: str) -> None:
        if not (caller.is_authority or caller.role is Role.ADMIN):
            await call(
                services.auditor.record,
                AuditEvent.ADMIN_REFUSE,
                outcome=Outcome.REFUSED,
                actor=caller.name,
                reason=PermissionDenied.code,
                via="api",
                op=what,
            )
            raise PermissionDenied("only an administrator (or the directory authority) may do this")

    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(fn, *args, **kwargs)

    def tus_headers(**extra: str) -> dict[str, str]:
        return {"Tus-Resumable": TUS_VERSION, **extra}

    # ------------------------------------------------------------ public

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """Liveness, for load balancers. Unauthenticated; reveals nothing but the version."""
        return Health(status="ok", version=__version__)

    # ------------------------------------------------------------ directory

    @app.get(
        "/v1/directory",
        response_model=DirectoryOut,
        responses=_PROBLEMS,
        tags=["directory"],
        description=_SIGNED["description"],
    )
    async def get_directory(request: Request) -> DirectoryOut:
        """Every authority-signed entry and revocation, verbatim: clients verify them against their pin."""
        caller = await authenticate(request)
        await call(services.auditor.record, AuditEvent.DIRECTORY_READ, actor=caller.name)
        exported = await call(services.directory.export)
        return DirectoryOut(
            entries=[dict(e) for e in exported["entries"]], revocations=[dict(r) for r in exported["revocations"]]
        )

    @app.post(
        "/v1/directory/entries",
        response_model=Registered,
        status_code=201,
        responses=_PROBLEMS,
        tags=["directory"],
        openapi_extra=_ENVELOPE_BODY,
    )
    async def register_entry(request: Request) -> Registered:
        """Register an authority-signed entry; the request is signed by the entry's own key (possession)."""
        body = await read_body(request)
        # The entry names the key that must have signed this request (proof of possession). Nothing about the
        # body is judged before authentication: a request that does not authenticate is refused (and audited)
        # as such, whatever it carries.
        envelope: dict[str, Any] | None = None
        entry: PartyEntry | None = None
        with contextlib.suppress(UsageError, UntrustedEntry):
            envelope = parse_json(body)
            entry = await call(services.directory.verify_entry, envelope)
        caller = await authenticate(request, body=body, enrolling=entry)
        if envelope is None:
            envelope = parse_json(body)  # raises: not JSON
        if entry is None:
            entry = await call(services.directory.verify_entry, envelope)  # raises: the authority did not sign
        if caller.name != entry.name:
            raise PermissionDenied("a party registers its own entry, signed with its own key")
        registered, new = await call(services.directory.register, envelope, caller.name)
        return Registered(name=registered.name, serial=registered.serial, new=new)

    @app.post(
        "/v1/directory/revocations",
        response_model=Registered,
        status_code=201,
        responses=_PROBLEMS,
        tags=["directory"],
        openapi_extra=_ENVELOPE_BODY,
    )
    async def register_revocation(request: Request) -> Registered:
        """Register an authority-signed revocation; takes effect on the revoked party's next request."""
        body = await read_body(request)
        caller = await authenticate(request, body=body, while_frozen=True)
        if not caller.is_authority:
            raise PermissionDenied("only the directory authority registers revocations")
        revocation, new = await call(services.directory.revoke, parse_json(body), caller.name)
        if (await call(services.directory.resolve, revocation.name)).status is EntryStatus.REVOKED:
            edge.cut(revocation.name, PartyRevoked(f"{revocation.name} is revoked in the directory"))
        return Registered(name=revocation.name, serial=revocation.serial, new=new)

    # ------------------------------------------------------------ routing policies

    @app.post(
        "/v1/policies",
        response_model=PolicyRegistered,
        status_code=201,
        responses=_PROBLEMS,
        tags=["policies"],
        openapi_extra=_ENVELOPE_BODY,
    )
    async def register_policy(request: Request) -> PolicyRegistered:
        """Register a routing policy the authority signed (the authority's own request)."""
        body = await read_body(request)
        caller = await authenticate(request, body=body)
        if not caller.is_authority:
            raise PermissionDenied("only the directory authority registers routing policies")
        policy, new = await call(services.policies.register, parse_json(body), caller.name)
        return PolicyRegistered(version=policy.version, new=new)

    @app.get("/v1/policies/current", response_model=Envelope, responses=_PROBLEMS, tags=["policies"])
    async def current_policy(request: Request) -> dict[str, Any]:
        """The routing policy with the highest issue, as the authority signed it: clients verify it against their
        pin, its validity and the withdrawals, and refuse one older than any they verified before."""
        caller = await authenticate(request)
        return dict(await call(services.policies.envelope, caller.name))

    @app.post(
        "/v1/policies/withdrawals",
        response_model=PolicyWithdrawn,
        status_code=201,
        responses=_PROBLEMS,
        tags=["policies"],
        openapi_extra=_ENVELOPE_BODY,
    )
    async def withdraw_policy(request: Request) -> PolicyWithdrawn:
        """Register the authority's signed withdrawal of a policy version: no new transfer is routed under it."""
        body = await read_body(request)
        caller = await authenticate(request, body=body, while_frozen=True)
        if not caller.is_authority:
            raise PermissionDenied("only the directory authority withdraws routing policies")
        withdrawal, new = await call(services.policies.withdraw, parse_json(body), caller.name)
        return PolicyWithdrawn(version=withdrawal.version, serial=withdrawal.serial, new=new)

    @app.get("/v1/policies/withdrawals", response_model=PolicyWithdrawals, responses=_PROBLEMS, tags=["policies"])
    async def policy_withdrawals(request: Request) -> PolicyWithdrawals:
        """Every policy withdrawal the authority signed, verbatim: clients verify them against their pin."""
        caller = await authenticate(request)
        return PolicyWithdrawals(withdrawals=[dict(w) for w in await call(services.policies.withdrawals, caller.name)])

    @app.get("/v1/policies/{version}", response_model=Envelope, responses=_PROBLEMS, tags=["policies"])
    async def policy_version(request: Request, version: str) -> dict[str, Any]:
        caller = await authenticate(request)
        return dict(await call(services.policies.envelope, caller.name, version))

    # ------------------------------------------------------------ transfers

    @app.get(
        "/v1/limits",
        response_model=LimitsOut,
        responses=_PROBLEMS,
        tags=["transfers"],
        description=_SIGNED["description"],
    )
    async def get_limits(request: Request) -> LimitsOut:
        """The relay's terms: the longest time to live, the largest payload, the clock skew it tolerates."""
        await authenticate(request)
        return LimitsOut.of(services.uploads.limits)

    @app.post(
        "/v1/transfers",
        response_model=TransferOut,
        status_code=201,
        responses={
            201: {
                "description": "Created; upload the ciphertext at `Location` (tus).",
                "headers": {
                    "Location": {"required": True, "schema": {"type": "string"}, "description": "The upload URL."},
                    "Tus-Resumable": {"required": True, **_TUS_HEADER},
                },
            },
            **_PROBLEMS,
        },
        tags=["transfers"],
        openapi_extra=_ENVELOPE_BODY,
    )
    async def create_transfer(request: Request, response: Response) -> TransferOut:
        """Create a transfer from the sender's signed manifest; upload its bytes at the returned Location."""
        body = await read_body(request)
        caller = await authenticate(request, body=body)
        record, _new = await call(services.uploads.create, caller, parse_json(body))
        response.headers.update(tus_headers(Location=f"/v1/uploads/{record.transfer_id}"))
        return TransferOut.of(record)

    @app.get("/v1/transfers", response_model=TransferList, responses=_PROBLEMS, tags=["transfers"])
    async def list_transfers(request: Request, box: str = "inbox") -> TransferList:
        """``inbox``: payloads waiting for the caller. ``outbox``: what the caller sent, with receipts."""
        caller = await authenticate(request)
        if box == "inbox":
            records = await call(services.delivery.inbox, caller)
        elif box == "outbox":
            records = await call(services.delivery.outbox, caller)
        else:
            raise UsageError("box must be inbox or outbox")
        return TransferList(transfers=[TransferOut.of(r) for r in records])

    @app.get("/v1/keys/{age_recipient}/horizon", response_model=KeyHorizon, responses=_PROBLEMS, tags=["transfers"])
    async def key_horizon(request: Request, age_recipient: str) -> KeyHorizon:
        """The caller's open transfers sealed to one of its keys, and the latest deadline among them: a
        recipient that rotated its key destroys the old one once that deadline has passed."""
        caller = await authenticate(request)
        records = await call(services.delivery.horizon, caller, age_recipient)
        latest = max((r.deadline for r in records), default=None)
        return KeyHorizon(key=age_recipient, open=len(records), latest_deadline=to_rfc3339(latest) if latest else None)

    @app.get("/v1/transfers/{transfer_id}", response_model=TransferOut, responses=_PROBLEMS, tags=["transfers"])
    async def get_transfer(request: Request, transfer_id: str) -> TransferOut:
        caller = await authenticate(request)
        return TransferOut.of(await call(services.delivery.describe, caller, transfer_id))

    @app.get(
        "/v1/transfers/{transfer_id}/payload",
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "The age ciphertext."},
            206: {
                "content": {"application/octet-stream": {}},
                "description": "From the requested offset (Range: bytes=N-).",
                "headers": {"Content-Range": {"required": True, "schema": {"type": "string"}}},
            },
            **_PROBLEMS,
        },
        tags=["transfers"],
        openapi_extra={"parameters": [_RANGE_PARAMETER]},
    )
    async def get_payload(request: Request, transfer_id: str) -> StreamingResponse:
        """The payload's age ciphertext, for its recipient, before its deadline. Resumable with Range."""
        caller = await authenticate(request, extra=("range",))
        start = _range_start(request.headers.get("range"))
        stream = await call(services.delivery.open_payload, caller, transfer_id, start)
        headers = {
            "Content-Length": str(stream.size - start),
            "Accept-Ranges": "bytes",
            "ETag": f'"{stream.record.manifest.sha256}"',
        }
        status = 200
        if request.headers.get("range") is not None:
            status = 206
            headers["Content-Range"] = (
                f"bytes {start}-{stream.size - 1}/{stream.size}" if stream.size else f"bytes */{stream.size}"
            )
        peer = peer_of(request)

        async def streamed() -> AsyncIterator[bytes]:
            chunks = _closing(stream.chunks)
            try:
                with edge.in_flight(caller.name, peer):
                    async for chunk in iterate_in_threadpool(chunks):
                        yield chunk
            finally:
                chunks.close()

        return StreamingResponse(
            streamed(),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )

    @app.post(
        "/v1/transfers/{transfer_id}/receipt",
        response_model=TransferOut,
        responses=_PROBLEMS,
        tags=["transfers"],
        openapi_extra=_ENVELOPE_BODY,
    )
    async def post_receipt(request: Request, transfer_id: str) -> TransferOut:
        """The recipient's signed receipt. The relay deletes the payload at once."""
        body = await read_body(request)
        caller = await authenticate(request, body=body)
        return TransferOut.of(await call(services.delivery.accept_receipt, caller, transfer_id, parse_json(body)))

    @app.post(
        "/v1/transfers/{transfer_id}/refusal",
        response_model=TransferOut,
        responses=_PROBLEMS,
        tags=["transfers"],
        openapi_extra=_ENVELOPE_BODY,
    )
    async def post_refusal(request: Request, transfer_id: str) -> TransferOut:
        """The recipient's signed refusal of a payload its client would not accept. The relay keeps it for the
        sender, holds the transfer (never offered again; deleted at its deadline) and alerts its operators."""
        body = await read_body(request)
        caller = await authenticate(request, body=body)
        return TransferOut.of(await call(services.delivery.refuse, caller, transfer_id, parse_json(body)))

    # ------------------------------------------------------------ tus 1.0 core (+ termination)

    @app.head(
        "/v1/uploads/{transfer_id}",
        response_class=Response,
        responses={
            200: {
                "description": "The upload's offset and length (no body).",
                "headers": {
                    "Upload-Offset": {"required": True, **_UINT_HEADER},
                    "Upload-Length": {"required": True, **_UINT_HEADER},
                    "Tus-Resumable": {"required": True, **_TUS_HEADER},
                },
            },
            **_PROBLEMS,
        },
        tags=["uploads"],
    )
    async def head_upload(request: Request, transfer_id: str) -> Response:
        """tus: the upload's current offset."""
        caller = await authenticate(request)
        status = await call(services.uploads.upload_status, caller, transfer_id)
        return Response(
            status_code=200,
            headers=tus_headers(**{"Upload-Offset": str(status.uploaded), "Upload-Length": str(status.size)}),
        )

    @app.patch(
        "/v1/uploads/{transfer_id}",
        status_code=204,
        responses={
            204: {
                "description": "Appended; `Upload-Offset` is the new offset.",
                "headers": {
                    "Upload-Offset": {"required": True, **_UINT_HEADER},
                    "Tus-Resumable": {"required": True, **_TUS_HEADER},
                },
            },
            **_PROBLEMS,
        },
        tags=["uploads"],
        openapi_extra={
            "parameters": _TUS_PARAMETERS,
            "requestBody": {
                "required": True,
                "content": {OFFSET_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            },
        },
    )
    async def patch_upload(request: Request, transfer_id: str) -> Response:
        """tus: append a chunk at Upload-Offset. The body is streamed to storage, checked against its digest."""
        with contextlib.suppress(AuthenticationFailed):  # unsigned or malformed: authentication says so below
            claimed = claimed_keyid(HeaderLines((k, v) for k, v in request.headers.items()))
            if (busy := edge.upload_refusal(claimed)) is not None:
                raise busy  # before verifying anything: its slots are taken whoever sent this
        caller = await authenticate(request, streamed=True, extra=("upload-offset", "content-type"))
        headers = request.headers
        if headers.get("tus-resumable") != TUS_VERSION:
            return _problem_response(
                UsageError("Tus-Resumable: 1.0.0 required"), tus_headers(**{"Tus-Version": TUS_VERSION}), 412
            )
        if headers.get("content-type") != OFFSET_CONTENT_TYPE:
            return _problem_response(UsageError(f"Content-Type must be {OFFSET_CONTENT_TYPE}"), tus_headers(), 415)
        offset, length = _int_header(headers, "upload-offset"), _int_header(headers, "content-length")
        if length > services.max_chunk_bytes:
            raise TooLarge(f"chunk over {services.max_chunk_bytes} bytes")
        body = request.stream().__aiter__()
        peer = peer_of(request)

        async def next_chunk() -> bytes | None:
            try:
                return await body.__anext__()
            except StopAsyncIteration:
                return None
            except ClientDisconnect:
                raise disconnect_error(request.scope, edge) from None

        def chunks() -> Iterator[bytes]:
            while (chunk := anyio.from_thread.run(next_chunk)) is not None:
                if chunk:
                    yield chunk

        with edge.upload_slot(caller.name), edge.in_flight(caller.name, peer):
            status = await anyio.to_thread.run_sync(
                services.uploads.append,
                caller,
                transfer_id,
                offset,
                length,
                headers.get("content-digest"),
                chunks(),
                limiter=uploads[0],
            )
        return Response(status_code=204, headers=tus_headers(**{"Upload-Offset": str(status.uploaded)}))

    @app.delete("/v1/uploads/{transfer_id}", status_code=204, responses=_PROBLEMS, tags=["uploads"])
    async def delete_upload(request: Request, transfer_id: str) -> Response:
        """tus termination: the sender abandons an upload; its bytes are deleted."""
        caller = await authenticate(request)
        await call(services.uploads.cancel, caller, transfer_id)
        return Response(status_code=204, headers=tus_headers())

    # ------------------------------------------------------------ audit: checkpoints, proofs, export

    @app.get("/v1/audit/checkpoint", responses=_PROBLEMS, tags=["audit"])
    async def audit_checkpoint(request: Request) -> dict[str, Any]:
        """The relay's latest signed audit head (also sent with every response, in ``Labrelay-Checkpoint``)."""
        await authenticate(request, while_frozen=True)
        latest = services.auditor.latest
        if latest is None:
            raise NotFound("the audit log is empty")
        return {"checkpoint": latest.to_doc()}

    @app.get("/v1/audit/records/{seq}", responses=_PROBLEMS, tags=["audit"])
    async def audit_record_hash(request: Request, seq: int) -> dict[str, Any]:
        """The hash of audit record ``seq``, for a client to compare with a checkpoint it holds (no content:
        other parties' records are not the caller's to read)."""
        caller = await authenticate(request, while_frozen=True)
        if not 1 <= seq <= MAX_SEQ:
            raise UsageError("audit records are numbered from 1")
        digest = await call(services.audit_log.hash_at, seq)
        anchor = await call(services.audit_log.checkpoint, "anchor")
        await call(services.auditor.record, AuditEvent.AUDIT_READ, actor=caller.name, seq=seq, found=digest is not None)
        # The anchor is signed: a relay cannot claim a record was pruned without signing where pruning stopped.
        return {"seq": seq, "hash": digest, "anchor": anchor.to_doc() if anchor else None}

    @app.get(
        "/v1/audit/export",
        responses={200: {"content": {"application/x-ndjson": {}}}, **_PROBLEMS},
        tags=["audit"],
    )
    async def audit_export(request: Request, after: int = 0, limit: int = 10_000) -> Response:
        """Audit records after ``after``, as NDJSON for a SIEM (administrators and the authority only)."""
        caller = await authenticate(request, while_frozen=True)
        await require_admin(caller, "export")
        if not 0 <= after <= MAX_SEQ or not 1 <= limit <= 100_000:
            raise UsageError("after must be >= 0 and limit between 1 and 100000")

        def lines() -> bytes:
            out = []
            for rec in services.audit_log.records(after):
                out.append(json.dumps(record_doc(rec), sort_keys=True, separators=(",", ":")))
                if len(out) >= limit:
                    break
            return ("\n".join(out) + "\n").encode() if out else b""

        body = await call(lines)
        await call(services.auditor.record, AuditEvent.AUDIT_READ, actor=caller.name, after=after, export=True)
        return Response(body, media_type="application/x-ndjson")

    # ------------------------------------------------------------ kill switch

    @app.post("/v1/admin/commands", responses=_PROBLEMS, tags=["admin"], openapi_extra=_ENVELOPE_BODY)
    async def admin_command(request: Request) -> dict[str, Any]:
        """Run a signed admin command (freeze, unfreeze, lock, unlock, revoke, quarantine). Takes effect on the
        next request, is audited, and runs once."""
        body = await read_body(request)
        caller = await authenticate(request, body=body, while_frozen=True)
        await require_admin(caller, "command")
        result = await call(services.control.execute, parse_json(body), caller=caller.name, via="api")
        if result.action in ("freeze", "unfreeze"):
            services.metrics.frozen.set(1 if result.action == "freeze" else 0)
        if result.action == "freeze":
            edge.cut(None, RelayFrozen("the relay was frozen by its administrator"))
        elif result.action in ("lock", "revoke") and result.target is not None:
            why = await call(services.control.refusal, result.target)
            if why is not None:
                edge.cut(result.target, why)
        return result.as_dict()

    @app.get("/v1/admin/status", responses=_PROBLEMS, tags=["admin"])
    async def admin_status(request: Request) -> dict[str, Any]:
        """Frozen or not, locked and revoked parties, quarantined transfers, recent alerts."""
        caller = await authenticate(request, while_frozen=True)
        await require_admin(caller, "status")
        status = await call(services.control.status)
        recent = services.detector.raised[-20:] if services.detector else []
        return {**status, "alerts": [a.as_doc() for a in recent]}

    # ------------------------------------------------------------ console passkeys (signed by the party's own key)

    def console_of() -> ConsoleService:
        if services.console is None:
            raise NotFound("no such resource")
        return services.console

    @app.post("/v1/console/passkeys/options", responses=_PROBLEMS, tags=["console"])
    async def passkey_options(request: Request) -> Response:
        """WebAuthn creation options to bind a new passkey to the signer (an admin, DPO or auditor in force)."""
        console = console_of()
        body = await read_body(request)
        caller = await authenticate(request, body=body)
        if caller.is_authority:
            raise PermissionDenied("the directory authority does not sign in to the console")
        rp = relying_party(request, services.public_url)
        options = await call(console.registration_options, caller.name, rp, remote(request))
        return Response(options, media_type="application/json")

    @app.post("/v1/console/passkeys", responses=_PROBLEMS, tags=["console"])
    async def passkey_register(request: Request) -> dict[str, Any]:
        """Bind the passkey the browser just made (``{"credential": PublicKeyCredential JSON}``) to the signer."""
        console = console_of()
        body = await read_body(request)
        caller = await authenticate(request, body=body)
        if caller.is_authority:
            raise PermissionDenied("the directory authority does not sign in to the console")
        credential = parse_json(body).get("credential")
        if not isinstance(credential, dict):
            raise UsageError("request without a passkey credential")
        rp = relying_party(request, services.public_url)
        credential_id = await call(console.register, caller.name, credential, rp, remote(request))
        return {"party": caller.name, "credential_id": credential_id}

    if services.console is not None:
        add_web(
            app,
            services.console,
            public_url=services.public_url,
            call=call,
            read_body=read_body,
            parse_json=parse_json,
            remote=remote,
        )

    # ------------------------------------------------------------ metrics

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics. By default only to the relay's own host (``metrics`` setting)."""
        access = services.metrics_access
        client = remote(request)
        if access == "off" or (access == "loopback" and not (client and is_loopback_host(client))):
            raise NotFound("no such resource")
        return Response(services.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    app.add_middleware(EdgeGuard, state=edge)  # added last: outermost, before anything parses the request
    return app


def record_doc(rec: AuditRecord) -> dict[str, Any]:
    """One audit record as an NDJSON line: every hashed field, so a SIEM can re-verify the chain."""
    e = rec.entry
    return {
        "seq": rec.seq,
        "at": to_rfc3339(e.at),
        "event": e.event.value,
        "outcome": e.outcome.value,
        "actor": e.actor,
        "transfer_id": e.transfer_id,
        "reason": e.reason,
        "details": dict(e.details),
        "prev": rec.prev_hash,
        "hash": rec.hash,
    }


_UINT = re.compile(r"[0-9]{1,15}")


def _is_uint(value: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts "²", which ``int`` then rejects)."""
    return bool(_UINT.fullmatch(value))


def _int_header(headers: Any, name: str) -> int:
    value = headers.get(name)
    if value is None or not _is_uint(value):
        raise UsageError(f"{name} header missing or not a non-negative integer")
    return int(value)


def _range_start(value: str | None) -> int:
    """Only ``bytes=N-`` (resume from N) is supported."""
    if value is None:
        return 0
    if not value.startswith("bytes=") or not value.endswith("-") or not _is_uint(value[6:-1]):
        raise UsageError("only Range: bytes=N- is supported")
    return int(value[6:-1])


def _closing(chunks: Iterator[bytes]) -> Generator[bytes, None, None]:
    try:
        yield from chunks
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()


async def _reap(services: RelayServices) -> None:
    while True:
        await asyncio.sleep(services.reaper_interval)
        try:
            await run_in_threadpool(services.reaper.run_once)
        except Exception as exc:  # noqa: BLE001 - the reaper outlives any one failure; the next pass retries
            log.error("reaper pass failed", error=type(exc).__name__)
            with contextlib.suppress(Exception):
                await run_in_threadpool(
                    services.auditor.record, AuditEvent.REAPER_RUN, outcome=Outcome.ERROR, reason=type(exc).__name__
                )


async def _cut_sweep(services: RelayServices, edge: EdgeState) -> None:
    """Every second, close the uploads and downloads of parties that may no longer act: locked or revoked by any
    replica, the worker's detection, the console or ``admin`` on the data directory; all of them when frozen."""
    while True:
        await asyncio.sleep(CUT_SWEEP_SECONDS)
        parties = edge.parties_in_flight()
        if not parties:
            continue
        try:
            if await run_in_threadpool(services.control.frozen):
                edge.cut(None, RelayFrozen("the relay was frozen by its administrator"))
                continue
            for party in parties:
                why = await run_in_threadpool(_refusal, services, party)
                if why is not None:
                    edge.cut(party, why)
        except Exception as exc:  # noqa: BLE001 - the sweep outlives any one failure (the database away, a bug)
            log.error("cut sweep failed", error=type(exc).__name__)


def _refusal(services: RelayServices, party: str) -> LabrelayError | None:
    held = services.control.refusal(party)
    if held is not None:
        return held
    status = services.directory.resolve(party).status
    if status is EntryStatus.REVOKED:
        return PartyRevoked(f"{party} is revoked in the directory")
    if status is not EntryStatus.ACTIVE:
        return PartyLocked(f"{party} has no directory entry in force ({status.value})")
    return None


async def _prune_nonces(services: RelayServices) -> None:
    while True:
        await asyncio.sleep(NONCE_PRUNE_SECONDS)
        with contextlib.suppress(LabrelayError):
            await run_in_threadpool(services.auth.prune_nonces)
