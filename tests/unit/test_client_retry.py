"""The client's one retry policy, driven through its transport seam (httpx's MockTransport) with its waits recorded:
what it retries, how long it waits, when it stops, and what it never retries. No relay, no sleeping."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import httpx
import pytest

from labrelay.client.api import MAX_RETRY_AFTER, RelayClient
from labrelay.clock import SystemClock
from labrelay.crypto.keys import SigningKey
from labrelay.errors import OperationalError, PermissionDenied, TooManyRequests, Unavailable

LIMITS = {"max_ttl_seconds": 86400, "max_payload_bytes": 1 << 30, "clock_skew_seconds": 300}


def _relay(*answers: httpx.Response) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    """A relay that gives ``answers`` in turn and keeps the requests it was sent."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return handler, seen


def _problem(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "detail": "busy"}, headers=headers)


def _client(handler: Callable[[httpx.Request], httpx.Response], waits: list[float], retries: int) -> RelayClient:
    return RelayClient(
        "http://127.0.0.1:9",
        "lab-a",
        SigningKey.generate(),
        SystemClock(),
        retries=retries,
        backoff=0.5,
        transport=httpx.MockTransport(handler),
        sleep=waits.append,
    )


def test_a_busy_relay_is_waited_for_as_long_as_it_asks_then_answered() -> None:
    handler, seen = _relay(
        _problem(429, "rate-limited", {"Retry-After": "7"}),
        _problem(503, "unavailable"),
        _problem(429, "rate-limited", {"Retry-After": "3600"}),
        httpx.Response(200, json=LIMITS),
    )
    waits: list[float] = []
    with _client(handler, waits, retries=3) as client:
        assert client.limits() == LIMITS
    assert len(seen) == 4
    assert all("signature" in r.headers for r in seen)  # every attempt signed afresh
    # a 429: what the relay asks, plus up to half again; a 503: the doubling backoff; the relay's ask capped: a
    # hostile relay cannot park a nightly job
    assert 7 <= waits[0] <= 10.5
    assert waits[1:] == [1.0, MAX_RETRY_AFTER]


def test_retries_stop_when_spent_and_the_last_failure_is_raised() -> None:
    handler, seen = _relay(*[_problem(503, "unavailable") for _ in range(3)], httpx.Response(200, json=LIMITS))
    waits: list[float] = []
    with _client(handler, waits, retries=2) as client, pytest.raises(Unavailable):
        client.limits()
    assert len(seen) == 3
    assert waits == [0.5, 1.0]


def test_a_busy_relay_is_asked_again_when_it_says_until_the_patience_is_spent() -> None:
    """429: the relay is up and asks for a short wait (one second when every upload slot is taken). The client
    comes back when asked, each wait spread by up to half again (a burst's labs do not return as one wave) and never
    doubled (the doubling left the relay idle while the labs it refused most slept), for as long as twice the
    retries' doubling schedule would have waited: 1 + 1 + 2 + 4 = 8 s with 2 retries."""
    handler, seen = _relay(*[_problem(429, "rate-limited", {"Retry-After": "1"}) for _ in range(20)])
    waits: list[float] = []
    with _client(handler, waits, retries=2) as client:
        client.retry = dataclasses.replace(client.retry, jitter=lambda: 0.0)
        with pytest.raises(TooManyRequests):
            client.limits()
    assert client.retry.patience == 8.0
    assert len(seen) == 9  # the first attempt, then one a second for 8 s
    assert waits == [1.0] * 8

    handler, seen = _relay(*[_problem(429, "rate-limited", {"Retry-After": "1"}) for _ in range(20)])
    waits = []
    with _client(handler, waits, retries=2) as client, pytest.raises(TooManyRequests):
        client.limits()
    assert all(1.0 <= w <= 1.5 for w in waits)
    assert len(set(waits)) > 1  # spread, not one wave
    assert 8.0 <= sum(waits) < 9.5  # the patience, and at most one wait past it
    assert len(seen) == len(waits) + 1

    handler, seen = _relay(
        *[_problem(429, "rate-limited", {"Retry-After": "1"}) for _ in range(8)], httpx.Response(200, json=LIMITS)
    )
    with _client(handler, [], retries=2) as client:
        client.retry = dataclasses.replace(client.retry, jitter=lambda: 0.0)
        assert client.limits() == LIMITS  # answered on the ninth attempt
    handler, seen = _relay(*[_problem(429, "rate-limited", {"Retry-After": "4"}) for _ in range(20)])
    waits = []
    with _client(handler, waits, retries=2) as client, pytest.raises(TooManyRequests):
        client.limits()
    assert 2 <= len(waits) <= 3  # a longer ask, fewer attempts in the same patience
    assert all(4.0 <= w <= 6.0 for w in waits)


def test_a_refusal_is_never_retried() -> None:
    handler, seen = _relay(_problem(403, "permission-denied"), httpx.Response(200, json=LIMITS))
    waits: list[float] = []
    with _client(handler, waits, retries=4) as client, pytest.raises(PermissionDenied):
        client.limits()
    assert len(seen) == 1
    assert waits == []


def test_an_unreachable_relay_is_retried_then_reported_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    waits: list[float] = []
    with _client(handler, waits, retries=3) as client, pytest.raises(Unavailable, match="unreachable"):
        client.limits()
    assert waits == [0.5, 1.0, 2.0]


def test_each_wait_is_at_most_a_minute_whatever_the_retries() -> None:
    """``--retries 8`` on an unavailable relay: eight retries, each wait doubling up to a minute, never hours; on a
    busy one, the relay's ask capped at a minute too."""
    handler, seen = _relay(*[_problem(503, "unavailable") for _ in range(9)])
    waits: list[float] = []
    with _client(handler, waits, retries=8) as client, pytest.raises(Unavailable):
        client.limits()
    assert len(seen) == 9
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, MAX_RETRY_AFTER]
    handler, seen = _relay(*[_problem(429, "rate-limited", {"Retry-After": "3600"}) for _ in range(3)])
    waits = []
    with _client(handler, waits, retries=8) as client, pytest.raises(IndexError):
        client.limits()  # still patient after three answers: the test relay has no fourth
    assert waits == [MAX_RETRY_AFTER] * 3


def test_a_transfer_list_with_anything_but_objects_is_refused() -> None:
    handler, _ = _relay(httpx.Response(200, json={"transfers": [{"transfer_id": "x"}, None]}))
    with _client(handler, [], retries=0) as client, pytest.raises(OperationalError, match="malformed transfer list"):
        client.transfers("inbox")


def _chunk_taken(offset: int) -> httpx.Response:
    return httpx.Response(204, headers={"Upload-Offset": str(offset), "Tus-Resumable": "1.0.0"})


def test_an_upload_told_its_offset_asks_nothing_and_a_refused_chunk_is_sent_again_as_is() -> None:
    """Created a moment ago, the transfer's offset is known: no HEAD. A 429 refused the chunk before reading any of
    it: the same chunk again, no HEAD (each one a signed request the relay authenticates and audits)."""
    handler, seen = _relay(_problem(429, "rate-limited", {"Retry-After": "1"}), _chunk_taken(10))
    waits: list[float] = []
    with _client(handler, waits, retries=2) as client:
        client.upload("t-1", io.BytesIO(b"0123456789"), 10, 1 << 20, offset=0)
    assert [(r.method, r.headers.get("upload-offset")) for r in seen] == [("PATCH", "0"), ("PATCH", "0")]
    assert len(waits) == 1


def test_an_offset_that_was_wrong_costs_one_conflict_then_the_relay_is_asked() -> None:
    handler, seen = _relay(
        _problem(409, "conflict"),
        httpx.Response(200, headers={"Upload-Offset": "4", "Upload-Length": "10", "Tus-Resumable": "1.0.0"}),
        _chunk_taken(10),
    )
    with _client(handler, [], retries=2) as client:
        client.upload("t-1", io.BytesIO(b"0123456789"), 10, 1 << 20, offset=0)
    assert [(r.method, r.headers.get("upload-offset")) for r in seen] == [
        ("PATCH", "0"),
        ("HEAD", None),
        ("PATCH", "4"),
    ]
    handler, seen = _relay(
        httpx.Response(200, headers={"Upload-Offset": "0", "Upload-Length": "10", "Tus-Resumable": "1.0.0"}),
        _chunk_taken(10),
    )
    with _client(handler, [], retries=2) as client:  # not told: asked first, as before
        client.upload("t-1", io.BytesIO(b"0123456789"), 10, 1 << 20)
    assert [r.method for r in seen] == ["HEAD", "PATCH"]
