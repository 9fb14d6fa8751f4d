"""Routes of the console and the pages.

- ``/`` (console), ``/enrol`` (bind a passkey to a party), ``/lab`` (upload), ``/inbox`` (recipient): HTML shells
  whose text and behaviour come from the bundled script (French and English);
- ``/static/*``: the bundle, its style sheet, the reference data the lab page validates with;
- ``/console/api/*``: sign-in with a passkey, the session's metadata views, passkey-approved commands.

The console's JSON routes take no request the browser's same-origin rules would not stop: a POST must carry this
origin's ``Origin`` header, the session cookie is ``SameSite=Strict`` and ``HttpOnly``, and every response carries
a Content-Security-Policy that allows scripts, styles and connections from this origin only.

Sign-in is open to anyone, so it costs the relay nothing to hold: the challenge travels sealed in a cookie of the
same kind (``HttpOnly``, ``SameSite=Strict``, ``__Host-`` on https) and comes back with the answer; each address
may start and answer ``console_signin_limit`` sign-ins per minute, checked before anything else is read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.staticfiles import StaticFiles

from labrelay import __version__, refdata
from labrelay.crypto.passkeys import Relying
from labrelay.errors import NotFound, PermissionDenied, TooManyRequests, UsageError
from labrelay.relay.console import ConsoleService, ConsoleUser

T = TypeVar("T")
log = structlog.get_logger("labrelay.http")
Call = Callable[..., Awaitable[Any]]

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
LOCAL_HOSTS = frozenset({"localhost"})


def security_headers(response: Response) -> None:
    """On every response: the strict policy (the API's JSON included), no framing, no sniffing."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=()"


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


def add_web(  # noqa: PLR0915 - one function, the console's route table
    app: FastAPI,
    console: ConsoleService,
    *,
    public_url: str | None,
    call: Call,
    read_body: Callable[[Request], Awaitable[bytes]],
    parse_json: Callable[[bytes], dict[str, Any]],
    remote: Callable[[Request], str | None],
) -> None:
    static = resources.files("labrelay.http.web").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def page(name: str) -> Callable[[Request], Awaitable[HTMLResponse]]:
        async def render(request: Request) -> HTMLResponse:
            lang = request.query_params.get("lang", "")
            html = (
                _templates()
                .get_template("page.html")
                .render(page=name, lang=lang if lang in ("fr", "en") else "fr", asset=_asset_version())
            )
            return HTMLResponse(html)

        return render

    for path, name in PAGES.items():
        app.add_api_route(path, page(name), methods=["GET"], include_in_schema=False, response_class=HTMLResponse)

    @app.get("/data/refdata.json", include_in_schema=False)
    async def refdata_json() -> Response:
        return Response(reference_data(), media_type="application/json", headers={"Cache-Control": "max-age=3600"})

    # ------------------------------------------------------------ sessions

    async def checked(request: Request, *, post: bool) -> Relying:
        """The relying party, after the request's origin checks; a refusal is audited."""
        try:
            rp = relying_party(request, public_url)
            if post:
                _same_origin(request, rp)
            elif request.headers.get("sec-fetch-site", "same-origin") not in SAME_SITE:
                raise PermissionDenied("console requests must come from the console's own page")
        except PermissionDenied as exc:
            await call(console.refuse, exc, None, "origin", remote(request))
            raise
        return rp

    async def user_of(request: Request, rp: Relying) -> ConsoleUser:
        user: ConsoleUser = await call(console.user, request.cookies.get(_cookie_name(rp)), remote(request))
        return user

    async def json_body(request: Request) -> tuple[Relying, dict[str, Any]]:
        rp = await checked(request, post=True)
        return rp, parse_json(await read_body(request))

    def credential_of(doc: dict[str, Any]) -> dict[str, Any]:
        credential = doc.get("credential")
        if not isinstance(credential, dict):
            raise UsageError("request without a passkey credential")
        return credential

    @app.get("/console/api/me", include_in_schema=False)
    async def me(request: Request) -> dict[str, Any]:
        user = await user_of(request, await checked(request, post=False))
        return {"party": user.party, "role": user.role.value, "may_command": user.may_command}

    async def limited(request: Request, op: str) -> None:
        """Refuse a sign-in request over its address's limit (429 with Retry-After), before anything else is read
        or written; the throttle's reports are recorded as ``limit:hit``."""
        throttled = console.throttle(remote(request))
        if throttled is None:
            return
        if throttled.report is not None:
            try:
                await call(console.report_limit, throttled.report, op)
            except Exception as exc:  # noqa: BLE001 - the refusal stands even if the audit trail is unreachable
                log.error("sign-in limit not recorded", error=type(exc).__name__)
        raise TooManyRequests(
            "too many console sign-in requests from this address",
            hint=f"retry in {throttled.retry_after} s",
            retry_after=throttled.retry_after,
        )

    @app.post("/console/api/signin/options", include_in_schema=False)
    async def signin_options(request: Request) -> Response:
        await limited(request, "signin-options")
        rp = await checked(request, post=True)
        start = console.signin_options(rp)  # no I/O: the relay keeps nothing of a sign-in that starts
        response = Response(start.options, media_type="application/json")
        response.set_cookie(
            _signin_cookie_name(rp),
            start.sealed,
            max_age=start.max_age,
            httponly=True,
            samesite="strict",
            secure=rp.origin.startswith("https://"),
            path="/",
        )
        return response

    @app.post("/console/api/signin", include_in_schema=False)
    async def signin(request: Request) -> JSONResponse:
        await limited(request, "signin")
        rp, doc = await json_body(request)
        sealed = request.cookies.get(_signin_cookie_name(rp))
        new = await call(console.signin, credential_of(doc), sealed, rp, remote(request))
        response = JSONResponse({"party": new.user.party, "role": new.user.role.value})
        response.set_cookie(
            _cookie_name(rp),
            new.token,
            max_age=int(console.session_ttl.total_seconds()),
            httponly=True,
            samesite="strict",
            secure=rp.origin.startswith("https://"),
            path="/",
        )
        response.delete_cookie(
            _signin_cookie_name(rp), path="/", secure=rp.origin.startswith("https://"), httponly=True, samesite="strict"
        )
        return response

    @app.post("/console/api/signout", include_in_schema=False)
    async def signout(request: Request) -> Response:
        rp = await checked(request, post=True)
        await call(console.signout, request.cookies.get(_cookie_name(rp)))
        response = Response(status_code=204)
        response.delete_cookie(_cookie_name(rp), path="/", secure=rp.origin.startswith("https://"))
        return response

    # ------------------------------------------------------------ what a session may read

    @app.get("/console/api/overview", include_in_schema=False)
    async def overview(request: Request) -> dict[str, Any]:
        await user_of(request, await checked(request, post=False))
        result: dict[str, Any] = await call(console.overview)
        return result

    @app.get("/console/api/retention", include_in_schema=False)
    async def retention(request: Request) -> dict[str, Any]:
        await user_of(request, await checked(request, post=False))
        return dict(await call(console.retention_check))

    @app.get("/console/api/audit", include_in_schema=False)
    async def audit(request: Request) -> dict[str, Any]:
        await user_of(request, await checked(request, post=False))
        return dict(await call(console.audit_verification))

    # ------------------------------------------------------------ commands: each approved by a passkey

    @app.post("/console/api/commands/options", include_in_schema=False)
    async def command_options(request: Request) -> Response:
        rp, doc = await json_body(request)
        user = await user_of(request, rp)
        action, target, reason = doc.get("action"), doc.get("target"), doc.get("reason")
        if not isinstance(action, str) or not isinstance(target, str | None) or not isinstance(reason, str | None):
            raise UsageError("a command names an action, and a target when it needs one")
        options = await call(console.command_options, user, action, target or None, reason or None, rp, remote(request))
        return Response(options, media_type="application/json")

    @app.post("/console/api/commands", include_in_schema=False)
    async def command(request: Request) -> dict[str, Any]:
        rp, doc = await json_body(request)
        user = await user_of(request, rp)
        result = await call(console.command, user, credential_of(doc), rp, remote(request))
        out: dict[str, Any] = result.as_dict()
        return out

    @app.get("/console/api/{rest:path}", include_in_schema=False)
    async def unknown(rest: str) -> None:
        raise NotFound("no such resource")
