"""Routes of the console and the pages.

- ``/`` (console), ``/enrol`` (bind a passkey to a party), ``/lab`` (upload), ``/inbox`` (recipient): HTML shells
  whose text and behaviour come from the bundled script (French and English);
- ``/static/*``: the bundle, its style sheet, the reference data the lab page validates with;
- ``/console/api/*``: sign-in with a passkey, the session's metadata views (among them ``parties``: the directory's
  parties with the kind of their age key, post-quantum or classic), passkey-approved commands.

The console's JSON routes take no request the browser's same-origin rules would not stop: a POST must carry this
origin's ``Origin`` header, the session cookie is ``SameSite=Strict`` and ``HttpOnly``, and every response carries
a Content-Security-Policy that allows scripts, styles and connections from this origin only.

Sign-in is open to anyone, so it costs the relay nothing to hold: the challenge travels sealed in a cookie of the
same kind (``HttpOnly``, ``SameSite=Strict``, ``__Host-`` on https) and comes back with the answer; each address
may start and answer ``console_signin_limit`` sign-ins per minute, checked before anything else is read.

``add_web`` puts the static files and ``router`` on a relay that has a console. Each JSON route is given a
``ConsoleRequest`` by a dependency (``Web``): the console service, the relay's public URL, and the request's origin
checks, body and session, made of the plumbing every route shares (labrelay.http.deps).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles

from labrelay import __version__, refdata
from labrelay.crypto.passkeys import Relying
from labrelay.domain.parties import PartyEntry, Revocation, key_kind, resolve
from labrelay.errors import NotFound, PermissionDenied, TooManyRequests, UsageError
from labrelay.http.deps import Console, Services, call, parse_json, read_body, relying_party, remote
from labrelay.relay.console import ConsoleService, ConsoleUser, shown
from labrelay.relay.directory import DirectoryService
from labrelay.wire import JSON_CONTENT_TYPE

log = structlog.get_logger("labrelay.http")

SESSION_COOKIE = "labrelay_console"
SECURE_SESSION_COOKIE = "__Host-labrelay_console"  # on https: host-only, Secure, Path=/; no sibling can plant it
SIGNIN_COOKIE = "labrelay_signin"  # the sealed challenge of a sign-in in progress
SECURE_SIGNIN_COOKIE = "__Host-labrelay_signin"
SAME_SITE = frozenset({"same-origin", "none"})
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGES = {"/": "console", "/enrol": "enrol", "/lab": "lab", "/inbox": "inbox"}


def security_headers(headers: MutableHeaders) -> None:
    """On every response: the strict policy (the API's JSON included), no framing, no sniffing."""
    headers["Content-Security-Policy"] = CSP
    headers["X-Frame-Options"] = "DENY"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"


def _same_origin(request: Request, rp: Relying) -> None:
    origin = request.headers.get("origin")
    if origin != rp.origin:
        raise PermissionDenied("console requests must come from the console's own page")


def _cookie_name(rp: Relying) -> str:
    return SECURE_SESSION_COOKIE if rp.origin.startswith("https://") else SESSION_COOKIE


def _signin_cookie_name(rp: Relying) -> str:
    return SECURE_SIGNIN_COOKIE if rp.origin.startswith("https://") else SIGNIN_COOKIE


@cache
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("labrelay.http.web", "templates"), autoescape=select_autoescape(), auto_reload=False
    )


@cache
def _asset_version() -> str:
    """Cache-busting tag of the bundle (its size and the package version)."""
    bundle = resources.files("labrelay.http.web").joinpath("static/app.js")
    return f"{__version__}-{len(bundle.read_bytes()) if bundle.is_file() else 0}"


@cache
def reference_data() -> bytes:
    """What the lab page validates against, from the relay's own copy of the public bases (docs: data/README.md)."""
    return json.dumps(
        {
            "communes": sorted({c.insee for c in refdata.communes()}),
            "department_regions": refdata.department_regions(),
        },
        separators=(",", ":"),
    ).encode()


@dataclass(frozen=True)
class ConsoleRequest:
    """What the console's routes need of the relay, for one request: the console, the relay's public URL, and the
    request's origin checks, body and signed-in user (``console_request`` builds it)."""

    request: Request
    console: ConsoleService
    public_url: str | None

    @property
    def remote(self) -> str | None:
        return remote(self.request)

    async def relying(self, *, post: bool) -> Relying:
        """The relying party, after the request's origin checks; a refusal is audited."""
        try:
            rp = relying_party(self.request, self.public_url)
            if post:
                _same_origin(self.request, rp)
            elif self.request.headers.get("sec-fetch-site", "same-origin") not in SAME_SITE:
                raise PermissionDenied("console requests must come from the console's own page")
        except PermissionDenied as exc:
            await call(self.console.refuse, exc, None, "origin", self.remote)
            raise
        return rp

    async def user(self, rp: Relying) -> ConsoleUser:
        return await call(self.console.user, self.request.cookies.get(_cookie_name(rp)), self.remote)

    async def json_body(self) -> tuple[Relying, dict[str, Any]]:
        rp = await self.relying(post=True)
        return rp, parse_json(await read_body(self.request))

    async def limited(self, op: str) -> None:
        """Refuse a sign-in request over its address's limit (429 with Retry-After), before anything else is read
        or written; the throttle's reports are recorded as ``limit:hit``."""
        throttled = self.console.throttle(self.remote)
        if throttled is None:
            return
        if throttled.report is not None:
            try:
                await call(self.console.report_limit, throttled.report, op)
            except Exception as exc:  # noqa: BLE001 - the refusal stands even if the audit trail is unreachable
                log.error("sign-in limit not recorded", error=type(exc).__name__)
        raise TooManyRequests(
            "too many console sign-in requests from this address",
            hint=f"retry in {throttled.retry_after} s",
            retry_after=throttled.retry_after,
        )


async def console_request(request: Request, console: Console, services: Services) -> ConsoleRequest:
    return ConsoleRequest(request, console, services.public_url)


Web = Annotated[ConsoleRequest, Depends(console_request)]
router = APIRouter(include_in_schema=False)


def add_web(app: FastAPI) -> None:
    """The pages, their static files and the console's JSON routes, on ``app`` (a relay with a console)."""
    static = resources.files("labrelay.http.web").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.include_router(router)


def _page(name: str) -> Callable[[Request], Awaitable[HTMLResponse]]:
    async def render(request: Request) -> HTMLResponse:
        lang = request.query_params.get("lang", "")
        html = (
            _templates()
            .get_template("page.html")
            .render(page=name, lang=lang if lang in ("fr", "en") else "fr", asset=_asset_version())
        )
        return HTMLResponse(html)

    return render


for _path, _name in PAGES.items():
    router.add_api_route(_path, _page(_name), methods=["GET"], response_class=HTMLResponse)


@router.get("/data/refdata.json")
async def refdata_json() -> Response:
    return Response(reference_data(), media_type=JSON_CONTENT_TYPE, headers={"Cache-Control": "max-age=3600"})


def _credential_of(doc: dict[str, Any]) -> dict[str, Any]:
    credential = doc.get("credential")
    if not isinstance(credential, dict):
        raise UsageError("request without a passkey credential")
    return credential


def _secure(rp: Relying) -> bool:
    return rp.origin.startswith("https://")


# ------------------------------------------------------------ sessions


@router.get("/console/api/me")
async def me(web: Web) -> dict[str, Any]:
    user = await web.user(await web.relying(post=False))
    return {"party": user.party, "role": user.role.value, "may_command": user.may_command}


@router.post("/console/api/signin/options")
async def signin_options(web: Web) -> Response:
    await web.limited("signin-options")
    rp = await web.relying(post=True)
    start = web.console.signin_options(rp)  # no I/O: the relay keeps nothing of a sign-in that starts
    response = Response(start.options, media_type=JSON_CONTENT_TYPE)
    response.set_cookie(
        _signin_cookie_name(rp),
        start.sealed,
        max_age=start.max_age,
        httponly=True,
        samesite="strict",
        secure=_secure(rp),
        path="/",
    )
    return response


@router.post("/console/api/signin")
async def signin(web: Web) -> JSONResponse:
    await web.limited("signin")
    rp, doc = await web.json_body()
    sealed = web.request.cookies.get(_signin_cookie_name(rp))
    new = await call(web.console.signin, _credential_of(doc), sealed, rp, web.remote)
    response = JSONResponse({"party": new.user.party, "role": new.user.role.value})
    response.set_cookie(
        _cookie_name(rp),
        new.token,
        max_age=int(web.console.session_ttl.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=_secure(rp),
        path="/",
    )
    response.delete_cookie(_signin_cookie_name(rp), path="/", secure=_secure(rp), httponly=True, samesite="strict")
    return response


@router.post("/console/api/signout")
async def signout(web: Web) -> Response:
    rp = await web.relying(post=True)
    await call(web.console.signout, web.request.cookies.get(_cookie_name(rp)))
    response = Response(status_code=204)
    response.delete_cookie(_cookie_name(rp), path="/", secure=_secure(rp))
    return response


# ------------------------------------------------------------ what a session may read


@router.get("/console/api/overview")
async def overview(web: Web) -> dict[str, Any]:
    await web.user(await web.relying(post=False))
    result: dict[str, Any] = await call(web.console.overview)
    return result


@router.get("/console/api/retention")
async def retention(web: Web) -> dict[str, Any]:
    await web.user(await web.relying(post=False))
    return dict(await call(web.console.retention_check))


@router.get("/console/api/audit")
async def audit(web: Web) -> dict[str, Any]:
    await web.user(await web.relying(post=False))
    return dict(await call(web.console.audit_verification))


@router.get("/console/api/parties")
async def parties(web: Web, services: Services) -> dict[str, Any]:
    await web.user(await web.relying(post=False))
    return await call(directory_view, services.directory, services.clock.now())


def directory_view(directory: DirectoryService, now: datetime) -> dict[str, Any]:
    """Every party the relay's directory names, as the console lists it: its role, its standing now (active,
    revoked, expired, not yet valid) and the kind of its age key, ``post-quantum`` (hybrid, ``age1pq1…``) or
    ``classic`` (X25519: a party still to move with ``labrelay party rotate --pq``). Metadata only: no key itself."""
    exported = directory.export()
    entries = [PartyEntry.from_payload(env["payload"]) for env in exported["entries"]]
    revocations = [Revocation.from_payload(env["payload"]) for env in exported["revocations"]]
    rows = []
    for name in sorted({e.name for e in entries}):
        res = resolve(name, entries, revocations, now)
        entry = res.entry
        if entry is None:  # never: a name with an entry resolves to one (domain.parties.resolve)
            continue
        rows.append(
            {
                "name": name,
                "role": entry.role.value,
                "region": entry.region,
                "status": res.status.value,
                "key": key_kind(entry.age_recipient),
            }
        )
    return shown({"parties": rows})


# ------------------------------------------------------------ commands: each approved by a passkey


@router.post("/console/api/commands/options")
async def command_options(web: Web) -> Response:
    rp, doc = await web.json_body()
    user = await web.user(rp)
    action, target, reason = doc.get("action"), doc.get("target"), doc.get("reason")
    if not isinstance(action, str) or not isinstance(target, str | None) or not isinstance(reason, str | None):
        raise UsageError("a command names an action, and a target when it needs one")
    options = await call(web.console.command_options, user, action, target or None, reason or None, rp, web.remote)
    return Response(options, media_type=JSON_CONTENT_TYPE)


@router.post("/console/api/commands")
async def command(web: Web) -> dict[str, Any]:
    rp, doc = await web.json_body()
    user = await web.user(rp)
    result = await call(web.console.command, user, _credential_of(doc), rp, web.remote)
    out: dict[str, Any] = result.as_dict()
    return out


@router.get("/console/api/{rest:path}")
async def unknown(rest: str) -> None:
    raise NotFound("no such resource")
