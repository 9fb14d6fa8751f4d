"""The request plumbing of the relay's routes: FastAPI dependencies and the helpers they are made of.

- ``Services``, ``Edge``, ``Console``: the relay's services, its edge state and the console, from ``app.state``
  (``create_app``); ``UploadThreads``: the threads upload bodies stream on (made by the lifespan).
- ``Signed``, ``SignedJson`` (and their ``…WhileFrozen`` forms): the caller proven by the request's signature
  (RFC 9421), with the body read within ``max_json_bytes`` and checked against its signed Content-Digest.
- ``authenticate``: the same, for the routes whose request needs more (an upload, an enrolment, a signed Range).
- header parsing: ASCII digits only (``str.isdigit`` accepts "²"), only the forms the relay supports.

FastAPI solves a route's dependencies before it validates the route's own parameters: a route that takes a typed
parameter (an integer) calls ``authenticate`` in its body instead, so that a malformed parameter is refused before
anything is verified, audited or spent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import anyio
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from labrelay.crypto.httpsig import DigestCheck, HeaderLines, RequestView
from labrelay.crypto.passkeys import Relying
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.parties import PartyEntry, Role
from labrelay.errors import AuthenticationFailed, NotFound, PermissionDenied, TooLarge, UsageError
from labrelay.http.edge import PEER, EdgeState, Peer, disconnect_error
from labrelay.http.services import RelayServices
from labrelay.relay.auth import Caller
from labrelay.relay.console import ConsoleService
from labrelay.wire import CONTENT_DIGEST

T = TypeVar("T")


# ------------------------------------------------------------ what the app holds
# The dependencies are coroutines: FastAPI runs a plain function on a worker thread, which these never need.


def services_of(request: Request) -> RelayServices:
    services: RelayServices = request.app.state.services
    return services


def edge_of(request: Request) -> EdgeState:
    edge: EdgeState = request.app.state.edge
    return edge


async def _services(request: Request) -> RelayServices:
    return services_of(request)


async def _edge(request: Request) -> EdgeState:
    return edge_of(request)


async def _upload_threads(request: Request) -> anyio.CapacityLimiter:
    """The threads upload bodies stream on: their own, so stalled uploads never hold the default pool's."""
    limiter: anyio.CapacityLimiter = request.app.state.uploads
    return limiter


async def _console(request: Request) -> ConsoleService:
    """The console; without one, its routes do not exist (404)."""
    console = services_of(request).console
    if console is None:
        raise NotFound("no such resource")
    return console


Services = Annotated[RelayServices, Depends(_services)]
Edge = Annotated[EdgeState, Depends(_edge)]
UploadThreads = Annotated[anyio.CapacityLimiter, Depends(_upload_threads)]
Console = Annotated[ConsoleService, Depends(_console)]


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn`` on a worker thread: services block (the database, storage), the event loop must not."""
    return await run_in_threadpool(fn, *args, **kwargs)


# ------------------------------------------------------------ the request


def remote(request: Request) -> str | None:
    """The client's address: the peer's, or what a trusted proxy forwarded (validated; labrelay.http.edge)."""
    return request.client.host if request.client else None


def peer_of(request: Request) -> Peer | None:
    peer: Peer | None = request.scope.get(PEER)
    return peer


def view(request: Request, public_url: str | None) -> RequestView:
    """The request as its signature covers it: the target URI on the relay's public origin when it has one."""
    scope = request.scope
    if public_url:
        origin = public_url.rstrip("/")
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


async def read_body(request: Request) -> bytes:
    """The whole body, refused (413) as soon as it is over ``max_json_bytes``, declared or sent."""
    limit = services_of(request).max_json_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not is_uint(declared) or int(declared) > limit):
        raise TooLarge(f"request body over {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise TooLarge(f"request body over {limit} bytes")
    except ClientDisconnect:
        raise disconnect_error(request.scope, edge_of(request)) from None
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
    digest = DigestCheck(request.headers.get(CONTENT_DIGEST))
    digest.update(body)
    digest.verify()


# ------------------------------------------------------------ the signer


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
    services = services_of(request)
    has_body = body is not None or streamed
    if body is not None:
        extra = (*extra, "content-type")
    route = getattr(request.scope.get("route"), "path", None)
    caller = await run_in_threadpool(
        services.auth.authenticate,
        view(request, services.public_url),
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


async def require_admin(services: RelayServices, caller: Caller, what: str) -> None:
    """Only an administrator or the directory authority goes further; anyone else's attempt is audited."""
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


@dataclass(frozen=True)
class SignedBody:
    """A request's body, read within the limit, and its proven signer (the body matched its signed digest)."""

    caller: Caller
    body: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (``UsageError`` otherwise): parsed only when the route gets that far."""
        return parse_json(self.body)


async def signed(request: Request) -> Caller:
    return await authenticate(request)


async def signed_while_frozen(request: Request) -> Caller:
    return await authenticate(request, while_frozen=True)


async def signed_json(request: Request) -> SignedBody:
    body = await read_body(request)
    return SignedBody(await authenticate(request, body=body), body)


async def signed_json_while_frozen(request: Request) -> SignedBody:
    body = await read_body(request)
    return SignedBody(await authenticate(request, body=body, while_frozen=True), body)


Signed = Annotated[Caller, Depends(signed)]
SignedWhileFrozen = Annotated[Caller, Depends(signed_while_frozen)]
SignedJson = Annotated[SignedBody, Depends(signed_json)]
SignedJsonWhileFrozen = Annotated[SignedBody, Depends(signed_json_while_frozen)]


# ------------------------------------------------------------ headers

_UINT = re.compile(r"[0-9]{1,15}")
MAX_UINT = 10**15 - 1
"""The largest number the relay reads: 15 ASCII digits (``is_uint``)."""


def is_uint(value: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts "²", which ``int`` then rejects)."""
    return bool(_UINT.fullmatch(value))


def int_header(headers: Any, name: str) -> int:
    value = headers.get(name)
    if value is None or not is_uint(value):
        raise UsageError(f"{name} header missing or not a non-negative integer")
    return int(value)


def range_start(value: str | None) -> int:
    """Only ``bytes=N-`` (resume from N) is supported."""
    if value is None:
        return 0
    if not value.startswith("bytes=") or not value.endswith("-") or not is_uint(value[6:-1]):
        raise UsageError("only Range: bytes=N- is supported")
    return int(value[6:-1])


LOCAL_HOSTS = frozenset({"localhost"})


def relying_party(request: Request, public_url: str | None) -> Relying:
    """The console's WebAuthn identity. With ``public_url`` set, that origin and no other; without it, only a
    ``localhost`` origin (a browser on the relay's own machine): an address anyone can point at the relay is not
    an identity a passkey should be bound to."""
    if public_url:
        origin = public_url.rstrip("/")
    else:
        host = request.headers.get("host", "")
        origin = f"{request.url.scheme}://{host}"
    parts = urlsplit(origin)
    hostname = parts.hostname or ""
    if not public_url and hostname not in LOCAL_HOSTS:
        raise PermissionDenied(
            "the console answers on localhost only", hint="set public_url to the console's https address"
        )
    return Relying(rp_id=hostname, origin=f"{parts.scheme}://{parts.netloc}")
