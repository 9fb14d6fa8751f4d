"""Uploads (tus 1.0 core, with termination): a transfer's ciphertext, in signed chunks streamed to storage.

A chunk's body streams on the upload threads (``UploadThreads``) into ``UploadService.append``, which checks it
against its signed Content-Digest and makes it durable before the new offset is answered; a party holds at most
``max_uploads_per_party`` uploads at once (``EdgeState.upload_slot``), refused before anything is verified.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect

from labrelay.crypto.httpsig import HeaderLines, claimed_keyid
from labrelay.errors import AuthenticationFailed, TooLarge, UsageError
from labrelay.http.deps import (
    Edge,
    Services,
    Signed,
    UploadThreads,
    authenticate,
    call,
    edge_of,
    int_header,
    peer_of,
)
from labrelay.http.edge import disconnect_error
from labrelay.http.errors import problem_response
from labrelay.http.openapi import PROBLEMS, TUS_HEADER, TUS_PARAMETERS, UINT_HEADER
from labrelay.relay.auth import Caller
from labrelay.wire import (
    CONTENT_DIGEST,
    OFFSET_CONTENT_TYPE,
    TUS_RESUMABLE,
    TUS_VERSION,
    TUS_VERSION_HEADER,
    UPLOAD_LENGTH,
    UPLOAD_OFFSET,
    UPLOAD_SIGNED,
)

router = APIRouter(tags=["uploads"], responses=PROBLEMS)

_STATUS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The upload's offset and length (no body).",
        "headers": {
            UPLOAD_OFFSET: {"required": True, **UINT_HEADER},
            UPLOAD_LENGTH: {"required": True, **UINT_HEADER},
            TUS_RESUMABLE: {"required": True, **TUS_HEADER},
        },
    },
}
_APPENDED: dict[int | str, dict[str, Any]] = {
    204: {
        "description": "Appended; `Upload-Offset` is the new offset.",
        "headers": {
            UPLOAD_OFFSET: {"required": True, **UINT_HEADER},
            TUS_RESUMABLE: {"required": True, **TUS_HEADER},
        },
    },
}
_CHUNK = {
    "parameters": TUS_PARAMETERS,
    "requestBody": {
        "required": True,
        "content": {OFFSET_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
}


def tus_headers(**extra: str) -> dict[str, str]:
    return {TUS_RESUMABLE: TUS_VERSION, **extra}


@router.head("/v1/uploads/{transfer_id}", response_class=Response, responses=_STATUS)
async def head_upload(transfer_id: str, caller: Signed, services: Services) -> Response:
    """tus: the upload's current offset."""
    status = await call(services.uploads.upload_status, caller, transfer_id)
    return Response(
        status_code=200, headers=tus_headers(**{UPLOAD_OFFSET: str(status.uploaded), UPLOAD_LENGTH: str(status.size)})
    )


async def _chunk_signer(request: Request) -> Caller:
    """The signer of a chunk, once its party has an upload slot free (checked before verifying anything: its
    slots are taken whoever sent this)."""
    with contextlib.suppress(AuthenticationFailed):  # unsigned or malformed: authentication says so below
        claimed = claimed_keyid(HeaderLines((k, v) for k, v in request.headers.items()))
        if (busy := edge_of(request).upload_refusal(claimed)) is not None:
            raise busy
    return await authenticate(request, streamed=True, extra=UPLOAD_SIGNED)


@router.patch("/v1/uploads/{transfer_id}", status_code=204, responses=_APPENDED, openapi_extra=_CHUNK)
async def patch_upload(
    request: Request,
    transfer_id: str,
    caller: Annotated[Caller, Depends(_chunk_signer)],
    services: Services,
    edge: Edge,
    threads: UploadThreads,
) -> Response:
    """tus: append a chunk at Upload-Offset. The body is streamed to storage, checked against its digest."""
    headers = request.headers
    if (refused := _tus_refusal(headers)) is not None:
        return refused
    offset, length = int_header(headers, UPLOAD_OFFSET.lower()), int_header(headers, "content-length")
    if length > services.max_chunk_bytes:
        raise TooLarge(f"chunk over {services.max_chunk_bytes} bytes")
    with edge.upload_slot(caller.name), edge.in_flight(caller.name, peer_of(request)):
        status = await anyio.to_thread.run_sync(
            services.uploads.append,
            caller,
            transfer_id,
            offset,
            length,
            headers.get(CONTENT_DIGEST),
            _chunks(request),
            limiter=threads,
        )
    return Response(status_code=204, headers=tus_headers(**{UPLOAD_OFFSET: str(status.uploaded)}))


def _tus_refusal(headers: Headers) -> Response | None:
    """A chunk of another protocol version (412) or another content type (415), answered as tus says."""
    if headers.get(TUS_RESUMABLE) != TUS_VERSION:
        return problem_response(
            UsageError(f"{TUS_RESUMABLE}: {TUS_VERSION} required"),
            tus_headers(**{TUS_VERSION_HEADER: TUS_VERSION}),
            412,
        )
    if headers.get("content-type") != OFFSET_CONTENT_TYPE:
        return problem_response(UsageError(f"Content-Type must be {OFFSET_CONTENT_TYPE}"), tus_headers(), 415)
    return None


def _chunks(request: Request) -> Iterator[bytes]:
    """The request's body as the worker thread reads it, chunk by chunk from the event loop."""
    body: AsyncIterator[bytes] = request.stream().__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            return await body.__anext__()
        except StopAsyncIteration:
            return None
        except ClientDisconnect:
            raise disconnect_error(request.scope, edge_of(request)) from None

    def chunks() -> Iterator[bytes]:
        while (chunk := anyio.from_thread.run(next_chunk)) is not None:
            if chunk:
                yield chunk

    return chunks()


@router.delete("/v1/uploads/{transfer_id}", status_code=204)
async def delete_upload(transfer_id: str, caller: Signed, services: Services) -> Response:
    """tus termination: the sender abandons an upload; its bytes are deleted."""
    await call(services.uploads.cancel, caller, transfer_id)
    return Response(status_code=204, headers=tus_headers())
