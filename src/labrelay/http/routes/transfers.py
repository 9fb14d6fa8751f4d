"""Transfers: created from the sender's signed manifest, listed, served to their recipient, closed by its receipt
or refusal; the relay's terms and a key's horizon. The bytes go up through the uploads routes (tus)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from labrelay.domain.horizon import KeyHorizon as Horizon
from labrelay.errors import UsageError
from labrelay.http.deps import Edge, Services, Signed, SignedJson, authenticate, call, peer_of, range_start
from labrelay.http.edge import EdgeState, Peer
from labrelay.http.models import KeyHorizon, LimitsOut, TransferList, TransferOut
from labrelay.http.openapi import ENVELOPE_BODY, PROBLEMS, RANGE_PARAMETER, SIGNED, TUS_HEADER
from labrelay.relay.delivery import PayloadStream
from labrelay.wire import OCTET_STREAM, PAYLOAD_SIGNED, TUS_RESUMABLE, TUS_VERSION, UPLOAD_PATH

router = APIRouter(tags=["transfers"], responses=PROBLEMS)

_CREATED: dict[int | str, dict[str, Any]] = {
    201: {
        "description": "Created; upload the ciphertext at `Location` (tus).",
        "headers": {
            "Location": {"required": True, "schema": {"type": "string"}, "description": "The upload URL."},
            TUS_RESUMABLE: {"required": True, **TUS_HEADER},
        },
    },
}
_PAYLOAD: dict[int | str, dict[str, Any]] = {
    200: {"content": {OCTET_STREAM: {}}, "description": "The age ciphertext."},
    206: {
        "content": {OCTET_STREAM: {}},
        "description": "From the requested offset (Range: bytes=N-).",
        "headers": {"Content-Range": {"required": True, "schema": {"type": "string"}}},
    },
}


@router.get("/v1/limits", response_model=LimitsOut, description=SIGNED)
async def get_limits(_caller: Signed, services: Services) -> LimitsOut:
    """The relay's terms: the longest time to live, the largest payload, the clock skew it tolerates."""
    return LimitsOut.of(services.uploads.limits)


@router.post(
    "/v1/transfers", response_model=TransferOut, status_code=201, responses=_CREATED, openapi_extra=ENVELOPE_BODY
)
async def create_transfer(signed: SignedJson, services: Services, response: Response) -> TransferOut:
    """Create a transfer from the sender's signed manifest; upload its bytes at the returned Location."""
    transfer, _new = await call(services.uploads.create, signed.caller, signed.json())
    response.headers.update({TUS_RESUMABLE: TUS_VERSION, "Location": UPLOAD_PATH + transfer.transfer_id})
    return TransferOut.of(transfer)


@router.get("/v1/transfers", response_model=TransferList)
async def list_transfers(caller: Signed, services: Services, box: str = "inbox") -> TransferList:
    """``inbox``: payloads waiting for the caller. ``outbox``: what the caller sent, with receipts."""
    if box == "inbox":
        transfers = await call(services.delivery.inbox, caller)
    elif box == "outbox":
        transfers = await call(services.delivery.outbox, caller)
    else:
        raise UsageError("box must be inbox or outbox")
    return TransferList(transfers=[TransferOut.of(r) for r in transfers])


@router.get("/v1/keys/{age_recipient}/horizon", response_model=KeyHorizon)
async def key_horizon(age_recipient: str, caller: Signed, services: Services) -> KeyHorizon:
    """The caller's open transfers sealed to one of its keys, and the latest deadline among them: a
    recipient that rotated its key destroys the old one once that deadline has passed."""
    transfers = await call(services.delivery.horizon, caller, age_recipient)
    return KeyHorizon.of(Horizon.of(age_recipient, transfers))


@router.get("/v1/transfers/{transfer_id}", response_model=TransferOut)
async def get_transfer(transfer_id: str, caller: Signed, services: Services) -> TransferOut:
    return TransferOut.of(await call(services.delivery.describe, caller, transfer_id))


@router.get("/v1/transfers/{transfer_id}/payload", responses=_PAYLOAD, openapi_extra={"parameters": [RANGE_PARAMETER]})
async def get_payload(request: Request, transfer_id: str, services: Services, edge: Edge) -> StreamingResponse:
    """The payload's age ciphertext, for its recipient, before its deadline. Resumable with Range."""
    caller = await authenticate(request, extra=PAYLOAD_SIGNED)
    ranged = request.headers.get("range")
    start = range_start(ranged)
    stream = await call(services.delivery.open_payload, caller, transfer_id, start)
    headers = {
        "Content-Length": str(stream.size - start),
        "Accept-Ranges": "bytes",
        "ETag": f'"{stream.transfer.manifest.sha256}"',
    }
    if ranged is not None:
        headers["Content-Range"] = (
            f"bytes {start}-{stream.size - 1}/{stream.size}" if stream.size else f"bytes */{stream.size}"
        )
    return StreamingResponse(
        _streamed(stream, edge, caller.name, peer_of(request)),
        status_code=200 if ranged is None else 206,
        headers=headers,
        media_type=OCTET_STREAM,
    )


SEND_BLOCK = 1 << 18
"""The payload goes out in pieces of about this size: its 64 KiB segments (each checked as it is read) are read on a
worker thread four at a time, not one thread hop and one write per segment (decision 0018); small enough that twenty
downloads at once hold a few megabytes."""


async def _streamed(stream: PayloadStream, edge: EdgeState, party: str, peer: Peer | None) -> AsyncIterator[bytes]:
    """The payload's chunks, read on worker threads, counted in flight (a lock or a revocation cuts them)."""
    chunks = _closing(stream.chunks)
    try:
        with edge.in_flight(party, peer):
            async for block in iterate_in_threadpool(_blocks(chunks)):
                yield block
    finally:
        chunks.close()


def _blocks(chunks: Iterator[bytes], size: int = SEND_BLOCK) -> Iterator[bytes]:
    """CHUNKS joined into blocks of at least SIZE bytes (the last one shorter): an error while reading a segment
    stops the stream as before, after the segments already checked."""
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


def _closing(chunks: Iterator[bytes]) -> Generator[bytes, None, None]:
    try:
        yield from chunks
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()


@router.post("/v1/transfers/{transfer_id}/receipt", response_model=TransferOut, openapi_extra=ENVELOPE_BODY)
async def post_receipt(transfer_id: str, signed: SignedJson, services: Services) -> TransferOut:
    """The recipient's signed receipt. The relay deletes the payload at once."""
    return TransferOut.of(await call(services.delivery.accept_receipt, signed.caller, transfer_id, signed.json()))


@router.post("/v1/transfers/{transfer_id}/refusal", response_model=TransferOut, openapi_extra=ENVELOPE_BODY)
async def post_refusal(transfer_id: str, signed: SignedJson, services: Services) -> TransferOut:
    """The recipient's signed refusal of a payload its client would not accept. The relay keeps it for the
    sender, holds the transfer (never offered again; deleted at its deadline) and alerts its operators."""
    return TransferOut.of(await call(services.delivery.refuse, signed.caller, transfer_id, signed.json()))
