"""How the relay answers what a route lets out: a problem document (RFC 9457), and nothing else.

A ``LabrelayError`` gets its status from ``problems`` (the one map of errors to statuses); FastAPI's and
Starlette's own refusals (no such route, a method not allowed, malformed parameters) are answered the same way; an
unexpected exception becomes a bare "internal error" whose type alone goes to the log and the audit trail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.errors import LabrelayError, NotFound, TooManyRequests, UsageError
from labrelay.http.deps import services_of
from labrelay.http.problems import problem, status_for
from labrelay.wire import PROBLEM_CONTENT_TYPE

log = structlog.get_logger("labrelay.http")

INTERNAL = {
    "type": "about:blank",
    "title": "internal error",
    "status": 500,
    "code": "internal",
    "detail": "internal error; the relay's operator has the details",
}


def problem_response(
    exc: LabrelayError, headers: Mapping[str, str] | None = None, status: int | None = None
) -> JSONResponse:
    """The problem document of ``exc``, with ``status`` when the HTTP status is not the error's own (tus answers
    412 and 415, routing 405): the document's ``status`` is always the response's (RFC 9457)."""
    status = status or status_for(exc)
    if isinstance(exc, TooManyRequests):
        headers = {**(headers or {}), "Retry-After": str(exc.retry_after)}
    return JSONResponse(problem(exc, status), status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


async def labrelay_error(_request: Request, exc: LabrelayError) -> JSONResponse:
    return problem_response(exc)


async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    err: LabrelayError = NotFound("no such resource") if exc.status_code == 404 else UsageError(str(exc.detail))
    return problem_response(err, exc.headers, exc.status_code)  # a 405 keeps its Allow header (RFC 9110)


async def validation_error(_request: Request, _exc: RequestValidationError) -> JSONResponse:
    return problem_response(UsageError("malformed request parameters"))


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Never echo the exception: only its type goes to the log and the audit trail.
    log.error("unexpected error", error=type(exc).__name__, path=request.url.path)
    with contextlib.suppress(Exception):
        await run_in_threadpool(
            services_of(request).auditor.record,
            AuditEvent.REQUEST_ERROR,
            outcome=Outcome.ERROR,
            reason=type(exc).__name__[:40],
        )
    return JSONResponse(dict(INTERNAL), status_code=500, media_type=PROBLEM_CONTENT_TYPE)


def add_error_handlers(app: FastAPI) -> None:
    app.exception_handler(LabrelayError)(labrelay_error)
    app.exception_handler(StarletteHTTPException)(http_error)
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(Exception)(unexpected)
