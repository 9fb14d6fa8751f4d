"""The relay's edge under abuse, replayed from outside against a real relay process (issue 18): stalled uploads, idle
and half-sent connections, oversized signature headers, forwarded headers, nonces spent on refusal, enrolment with a
revoked or expired key, and slash redirects. docs/threat-model.md, T28 to T35 and T40."""

from __future__ import annotations

import io
import json
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from labrelay.client.api import RelayClient
from labrelay.client.keystore import Authority
from labrelay.clock import SystemClock
from labrelay.domain.admin import AdminAction
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import Role
from labrelay.errors import AuthenticationFailed, PartyRevoked, UntrustedEntry
from labrelay.operations import init_data_dir
from tests.integration.test_transport import self_signed, signed_headers
from tests.support import abuse
from tests.support.abuse import admin_command, connect, uploading_transfer
from tests.support.world import World, make_world, write_settings

FAST = {  # short limits, so that a test sees them act within seconds
    "header_timeout": '"2s"',
    "keep_alive_timeout": '"2s"',
    "body_timeout": '"3s"',
    "upload_deadline": '"20s"',
}
ANSWERED = 5.0  # a request that waits on capacity stalled senders hold would time out; this one must not


@pytest.fixture
def limited(tmp_path: Path, relay_factory) -> World:
    world = make_world(tmp_path, relay_factory, settings=FAST)
    world.add("ops-admin", Role.ADMIN)
    return world


@pytest.fixture
def unhurried(tmp_path: Path, relay_factory) -> World:
    """FAST, but a body may pause 15 s: collecting 41 refusals under load can take longer than ``limited``'s 3 s,
    and the four stalled uploads must still be streaming (not cut at their body timeout) when the freeze comes."""
    world = make_world(tmp_path, relay_factory, settings={**FAST, "body_timeout": '"15s"'})
    world.add("ops-admin", Role.ADMIN)
    return world


def stalled_patch(world: World, transfer_id: str, body: bytes) -> socket.socket:
    """A signed PATCH of ``body`` by the lab that sends its headers and 10 bytes, then nothing."""
    lab = world.parties["lab-paris-01"]
    return abuse.stalled_patch(world.url, lab.name, lab.signing_key, transfer_id, body)


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the relay closed ``sock`` within ``seconds`` (after any answer it sent), and what it sent."""
    sock.settimeout(0.25)
    got = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def timed_inbox(world: World, party: str) -> float:
    with RelayClient(
        world.url, party, world.parties[party].signing_key, SystemClock(), retries=0, timeout=30
    ) as client:
        started = time.monotonic()
        client.transfers("inbox")
        return time.monotonic() - started


def audit(world: World, event: str) -> list[tuple[str | None, dict]]:
    rows = world.db("SELECT actor, details FROM audit_events WHERE event = :e ORDER BY seq", e=event)
    return [(actor, json.loads(details) if details else {}) for actor, details in rows]


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


# ------------------------------------------------------------------ T28: one lab stalling uploads


@pytest.mark.threat("T28")
def test_one_lab_stalling_45_uploads_freezes_nothing_and_its_lock_cuts_them(
    unhurried: World, tmp_path: Path, sockets: list[socket.socket]
) -> None:
    """45 signed PATCHes that send 10 bytes and stall: before issue 18 they held the 40 threads every request is
    authenticated on, and the relay answered nobody. Now at most 4 stream for the lab (the rest: 429 + Retry-After, and
    a ``limits`` alert), other parties and the admin are answered at once, and a freeze or a lock closes the lab's
    uploads in progress."""
    world = unhurried
    transfer_id, ciphertext = uploading_transfer(world, tmp_path)
    for _ in range(45):
        sockets.append(stalled_patch(world, transfer_id, ciphertext[:4096]))
    answers = [b""] * 45
    deadline = time.monotonic() + 10
    while sum(a.startswith(b"HTTP/1.1 429") for a in answers) < 41 and time.monotonic() < deadline:
        answers = [a or closed_within(s, 0.01)[1] for s, a in zip(sockets, answers, strict=True)]
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 429")]
    assert len(refused) == 41, [a[:40] for a in answers]
    assert all(b"retry-after:" in a.lower() for a in refused)
    stalled = [s for s, a in zip(sockets, answers, strict=True) if not a]
    assert len(stalled) == 4

    # With the lab's four uploads stalled, another party and the admin are answered at once.
    assert timed_inbox(world, "cnam") < ANSWERED
    result, took = admin_command(world, AdminAction.FREEZE)
    assert result["changed"]
    assert took < ANSWERED
    assert all(closed_within(s, 1.5)[0] for s in stalled), "a freeze cuts the uploads in progress"
    result, took = admin_command(world, AdminAction.UNFREEZE)
    assert result["changed"]
    assert took < ANSWERED

    hits = audit(world, "limit:hit")
    assert any(d.get("limit") == "uploads-per-party" and actor == "lab-paris-01" for actor, d in hits)
    alerts = [d for _, d in audit(world, "alert:raise") if str(d.get("subject", "")).startswith("uploads-per-party")]
    assert alerts, "a limit hit raises a 'limits' alert"

    # Locking the lab cuts the uploads it holds open at once (not at their body timeout).
    again = [stalled_patch(world, transfer_id, ciphertext[:4096]) for _ in range(2)]
    sockets.extend(again)
    time.sleep(0.5)
    assert not any(closed_within(s, 0.01)[0] for s in again)
    admin_command(world, AdminAction.LOCK, "lab-paris-01")
    assert all(closed_within(s, 1.5)[0] for s in again)
    # Nothing of the stalled chunks was kept: the transfer's offset is still 0.
    [(uploaded,)] = world.db("SELECT uploaded FROM transfers WHERE id = :id", id=transfer_id)
    assert uploaded == 0


@pytest.mark.threat("T28")
def test_a_stalled_upload_is_cut_at_its_body_timeout_and_resumes(
    limited: World, tmp_path: Path, sockets: list[socket.socket]
) -> None:
    """A PATCH that stops sending is answered 408 after ``body_timeout`` (3 s here) and its connection closed; nothing
    of it is kept, and the client then uploads from offset 0."""
    world = limited
    transfer_id, ciphertext = uploading_transfer(world, tmp_path)
    sock = stalled_patch(world, transfer_id, ciphertext)
    sockets.append(sock)
    started = time.monotonic()
    closed, answer = closed_within(sock, 10)
    assert closed
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 2.5 < time.monotonic() - started < 8
    assert b"connection: close" in answer.lower()
    assert b'"code":"request-timeout"' in answer
    with world.client("lab-paris-01") as client:
        assert client.upload_offset(transfer_id) == 0
        client.upload(transfer_id, io.BytesIO(ciphertext), len(ciphertext), 64 * 1024)
        assert client.transfer(transfer_id)["state"] == "available"


# ------------------------------------------------------------------ T29: idle and half-sent connections


@pytest.mark.threat("T29")
def test_300_idle_or_half_sent_connections_are_closed_and_stop_nothing(
    limited: World, sockets: list[socket.socket]
) -> None:
    """150 connections that send nothing and 150 that send half a header section: before issue 18 they stayed open
    forever (an outsider ran the relay out of file descriptors). Now each closes at ``header_timeout`` (2 s here),
    and signed requests are answered meanwhile."""
    world = limited
    for i in range(300):
        sock = connect(world.url)
        if i % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
        sockets.append(sock)
    assert timed_inbox(world, "cnam") < ANSWERED
    deadline = time.monotonic() + 15
    still_open = list(sockets)
    while still_open and time.monotonic() < deadline:
        still_open = [s for s in still_open if not closed_within(s, 0.01)[0]]
    assert not still_open, f"{len(still_open)} of 300 connections still open"
    # An operator sees it on /metrics (the relay's own host may read it by default).
    metrics = httpx.get(f"{world.url}/metrics").text
    closed_slow = next(line for line in metrics.splitlines() if line.startswith("labrelay_connections_closed_slow "))
    assert float(closed_slow.split()[1]) >= 300
    # A keep-alive connection idle after its answer is closed too.
    sock = connect(world.url)
    sockets.append(sock)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
    closed, answer = closed_within(sock, 6)
    assert answer.startswith(b"HTTP/1.1 200")
    assert closed


@pytest.mark.threat("T29")
def test_connections_over_the_caps_are_closed_at_once(
    tmp_path: Path, relay_factory, sockets: list[socket.socket]
) -> None:
    """On a public address (TLS, no proxy in front), one address holds at most ``max_connections_per_address``
    connections; the relay as a whole at most ``max_connections``. Beyond, a new connection is closed at once."""
    cert, key = self_signed(tmp_path)
    authority = Authority.init(tmp_path / "auth")
    init_data_dir(tmp_path / "relay", authority.path / "authority.pub")
    write_settings(tmp_path / "relay", {"max_connections_per_address": "5", "header_timeout": '"30s"'})
    relay = relay_factory(
        tmp_path / "relay",
        "--host",
        "0.0.0.0",  # noqa: S104 - a public address is what this test is about
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    port = urlsplit(relay.url).port
    context = ssl.create_default_context(cafile=str(cert))
    opened = []
    for _ in range(8):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        opened.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
    sockets.extend(opened)
    closed = [closed_within(s, 1.0)[0] for s in opened]
    assert closed.count(True) == 3, closed
    assert closed[:5] == [False] * 5


@pytest.mark.threat("T29")
def test_a_body_cannot_hide_behind_content_length_zero(limited: World, sockets: list[socket.socket]) -> None:
    """``Content-Length: 0`` with ``Transfer-Encoding: chunked``, then a chunk that never ends: h11 reads the chunked
    body, and the edge once believed there was none, so the stall was never timed. Now the mix is refused at once."""
    sock = connect(limited.url)
    sockets.append(sock)
    sock.sendall(
        b"POST /v1/directory/entries HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{"
    )
    closed, answer = closed_within(sock, 8)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert closed


@pytest.mark.threat("T29")
def test_a_body_answered_before_it_was_read_cannot_trickle_for_ever(
    limited: World, sockets: list[socket.socket]
) -> None:
    """A request refused before its body is read (here unsigned) is answered, and the rest of its body discarded as
    it comes; a sender that then trickles is closed at ``body_timeout`` (3 s here), not kept for ever."""
    sock = connect(limited.url)
    sockets.append(sock)
    sock.sendall(
        b"PATCH /v1/uploads/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\nHost: relay\r\n"
        b"Content-Type: application/offset+octet-stream\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10
    )
    sock.settimeout(5)
    answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    time.sleep(0.5)
    sock.sendall(b"x")  # one more piece: uvicorn's keep-alive timer stops at it, and nothing else would close this
    closed, _ = closed_within(sock, 8)
    assert closed


# ------------------------------------------------------------------ T31: header sizes


@pytest.mark.threat("T31")
def test_oversized_signature_headers_are_refused_before_parsing(limited: World) -> None:
    """A Signature-Input of kilobytes (the profile needs under 400 bytes), an oversized Signature, or two of them:
    431, and the signature parser never runs (no ``auth:failure`` for them)."""
    world = limited
    url = f"{world.url}/v1/transfers?box=inbox"
    good = signed_headers(world, "GET", url, name="cnam")
    params = good["Signature-Input"]
    before = len(audit(world, "auth:failure"))
    padded = params[:-1] + ';x="' + "a" * 8000 + '"' if params.endswith('"') else params + ";x=" + "1" * 8000
    for headers in (
        {**good, "Signature-Input": padded},
        {**good, "Signature": good["Signature"] + "A" * 2000},
    ):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 431, response.text
        assert response.json()["code"] == "headers-too-large"
    doubled = httpx.get(url, headers=[*good.items(), ("Signature-Input", params)])
    assert doubled.status_code == 431
    assert len(audit(world, "auth:failure")) == before
    assert timed_inbox(world, "cnam") < ANSWERED


# ------------------------------------------------------------------ T33: forwarded headers


@pytest.mark.threat("T33")
def test_forwarded_headers_count_only_from_a_trusted_proxy_and_only_as_addresses(tmp_path: Path, relay_factory) -> None:
    """uvicorn believed X-Forwarded-For from any loopback peer and copied its text into the audit trail's ``remote``.
    Now: without ``trusted_proxies`` the header is ignored; with it, only an address is believed."""
    world = make_world(tmp_path, relay_factory)
    url = f"{world.url}/v1/transfers?box=inbox"

    def remote_of_failure(forwarded: str) -> str | None:
        before = len(audit(world, "auth:failure"))
        httpx.get(url, headers={"X-Forwarded-For": forwarded})
        return audit(world, "auth:failure")[before][1].get("remote")

    assert remote_of_failure("203.0.113.9") == "127.0.0.1"
    assert remote_of_failure("<script>x</script>") == "127.0.0.1"

    world.relay.stop()
    write_settings(world.relay.data, {"trusted_proxies": '"127.0.0.1"'})
    world.relay.start()
    url = f"{world.url}/v1/transfers?box=inbox"
    assert remote_of_failure("203.0.113.9") == "203.0.113.9"
    assert remote_of_failure("198.51.100.4, 127.0.0.1") == "198.51.100.4"  # the proxy's own hop is skipped
    assert remote_of_failure("<script>x</script>") == "127.0.0.1"  # not an address: ignored whole
    assert remote_of_failure("203.0.113.9, bogus") == "127.0.0.1"


# ------------------------------------------------------------------ T34: nonces spent on refusal


@pytest.mark.threat("T34")
def test_a_request_refused_while_locked_cannot_be_replayed_after_the_unlock(limited: World) -> None:
    world = limited
    admin_command(world, AdminAction.LOCK, "cnam")
    url = f"{world.url}/v1/transfers?box=inbox"
    captured = signed_headers(world, "GET", url, name="cnam")
    refused = httpx.get(url, headers=captured)
    assert refused.status_code == 403
    assert refused.json()["code"] == "locked"
    admin_command(world, AdminAction.UNLOCK, "cnam")
    replayed = httpx.get(url, headers=captured)
    assert replayed.status_code == 401
    assert replayed.json()["code"] == "replay"


# ------------------------------------------------------------------ T35: enrolment with a revoked or expired key


@pytest.mark.threat("T35")
def test_enrolment_with_a_revoked_or_expired_entry_is_refused_and_alerted(tmp_path: Path, relay_factory) -> None:
    """The enrolment route authenticated with the entry the request presents, and logged a revoked party's key as
    ``auth:success``. Now the directory's own records decide, as on every route, and the revoked-key rule fires."""
    world = make_world(tmp_path, relay_factory)
    ars = world.parties["ars-11"]
    entry = world.authority.sign_entry(ars, datetime.now(UTC) - timedelta(minutes=1), timedelta(days=30))
    revocation = world.authority.sign_revocation("ars-11", "key stolen", datetime.now(UTC))
    with RelayClient(world.url, AUTHORITY_KEYID, world.authority.key, SystemClock(), retries=0) as client:
        client.register_revocation(revocation)
    successes = len(audit(world, "auth:success"))
    with world.client("ars-11") as client, pytest.raises(PartyRevoked):
        client.register_entry(entry)
    assert len(audit(world, "auth:success")) == successes, "a revoked key's request was logged as a success"
    [failure] = [d for actor, d in audit(world, "auth:failure") if actor == "ars-11"]
    assert failure["why"] == "revoked"
    assert failure["route"] == "/v1/directory/entries"
    alerts = [d for _, d in audit(world, "alert:raise") if d.get("subject") == "ars-11"]
    assert alerts, "the revoked-key rule fires on the enrolment route too"

    # An entry past its end, presented by its own (unrevoked) key: refused, never a success.
    late = world.add("lab-late", Role.LAB, enroll=False)
    old = world.authority.sign_entry(late, datetime.now(UTC) - timedelta(days=10), timedelta(days=1))
    successes = len(audit(world, "auth:success"))
    with (
        RelayClient(world.url, late.name, late.signing_key, SystemClock(), retries=0) as client,
        pytest.raises((UntrustedEntry, AuthenticationFailed)),
    ):
        client.register_entry(old)
    assert len(audit(world, "auth:success")) == successes
    [failure] = [d for actor, d in audit(world, "auth:failure") if actor == "lab-late"]
    assert failure["why"] == "expired"


# ------------------------------------------------------------------ T40: no redirect built from the Host header


@pytest.mark.threat("T40")
def test_no_redirect_is_built_from_the_host_header(limited: World) -> None:
    response = httpx.get(f"{limited.url}/v1/directory/", headers={"Host": "attacker.example"})
    assert response.status_code == 404
    assert "location" not in response.headers
