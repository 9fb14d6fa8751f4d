"""One enrolled lab and outsiders attacking a running relay at once, on threads, until stopped: what the load-and-abuse
test (tests/integration/test_abuse.py) and ``./dev bench abuse`` run against a relay while legitimate parties work.

- **slow senders**: the lab keeps 45 signed upload requests open that sent 10 bytes and stall (each reopened when the
  relay closes it);
- **idle and half-sent connections**: 150 that send nothing and 150 that send half a header section, reopened too;
- **oversized headers**: requests whose ``Signature-Input`` is 100 KB (what cost 0.3 to 1 s of CPU each);
- **anonymous sign-in floods**: console sign-in starts as fast as one thread sends them.

Each kind counts what the relay answered (status lines, or closed connections). Below the attack, what the tests
and the bench do as legitimate parties: an upload waiting for its bytes, a timed admin command.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from labrelay.client.api import RelayClient
from labrelay.client.send import seal
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import SystemClock
from labrelay.crypto.envelopes import envelope_payload, sign_envelope
from labrelay.crypto.httpsig import sign_request
from labrelay.crypto.keys import SigningKey
from labrelay.domain.admin import AdminAction, AdminCommand
from labrelay.domain.parties import Role
from labrelay.domain.transfers import Manifest
from tests.support.world import World

SLOW_SENDERS = 45
IDLE = 150
HALF_SENT = 150


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def stalled_patch(url: str, party: str, key: SigningKey, transfer_id: str, body: bytes) -> socket.socket:
    """A signed PATCH of ``body`` that sends its headers and 10 bytes, then nothing: a slow sender's socket."""
    target = f"{url}/v1/uploads/{transfer_id}"
    headers = {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0", "Tus-Resumable": "1.0.0"}
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    sign_request(
        "PATCH",
        target,
        headers,
        None,
        keyid=party,
        key=key,
        now=datetime.now(UTC),
        extra_components=("content-type", "upload-offset"),
        digest=digest,
    )
    headers["Content-Length"] = str(len(body))
    headers["Host"] = urlsplit(url).netloc
    head = f"PATCH /v1/uploads/{transfer_id} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = connect(url)
    sock.sendall(head.encode() + b"\r\n" + body[:10])
    return sock


def status_of(sock: socket.socket) -> str | None:
    """What the relay did with ``sock`` so far, without waiting: ``"429"`` (a status), ``"closed"``, or None."""
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        return "closed"
    finally:
        sock.setblocking(True)
    if not data:
        return "closed"
    return data[9:12].decode("ascii", "replace") if data.startswith(b"HTTP/1.1 ") else "garbage"


@dataclass
class Abuse:
    """The attack, running on threads between ``start`` and ``stop``; ``counts[kind][outcome]`` what it met."""

    url: str
    lab: str
    lab_key: SigningKey
    transfer_id: str
    body: bytes
    kinds: tuple[str, ...] = ("slow-senders", "idle", "oversized", "sign-in")
    """Which attacks run: all four by default; ``("slow-senders",)`` is the one-lab freeze of issue 18."""
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str, outcome: str) -> None:
        with self._lock:
            self.counts.setdefault(kind, Counter())[outcome] += 1

    def start(self) -> Abuse:
        attacks = {
            "slow-senders": self._slow_senders,
            "idle": self._idle,
            "oversized": self._oversized,
            "sign-in": self._sign_in_flood,
        }
        for target in (attacks[kind] for kind in self.kinds):
            thread = threading.Thread(target=self._guarded, args=(target,), daemon=True, name=target.__name__)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _guarded(self, target: object) -> None:
        try:
            target()  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - an attack thread that dies is counted, not raised
            self.count("attacker", f"died:{type(exc).__name__}")

    def _keep_open(self, kind: str, n: int, opener: object) -> None:
        """Keep ``n`` sockets made by ``opener`` open; count each one the relay answers or closes, and reopen it."""
        held: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                while len(held) < n and not self._stop.is_set():
                    try:
                        held.append(opener())  # type: ignore[operator]
                        self.count(kind, "opened")
                    except OSError:
                        self.count(kind, "refused-connect")
                        time.sleep(0.05)
                kept = []
                for sock in held:
                    outcome = status_of(sock)
                    if outcome is None:
                        kept.append(sock)
                    else:
                        self.count(kind, outcome)
                        sock.close()
                held = kept
                self._stop.wait(0.1)
        finally:
            for sock in held:
                sock.close()

    def _slow_senders(self) -> None:
        self._keep_open(
            "slow-senders",
            SLOW_SENDERS,
            lambda: stalled_patch(self.url, self.lab, self.lab_key, self.transfer_id, self.body),
        )

    def _idle(self) -> None:
        half = threading.Thread(
            target=self._keep_open, args=("half-sent", HALF_SENT, self._half_sent), daemon=True, name="half-sent"
        )
        half.start()
        self._keep_open("idle", IDLE, lambda: connect(self.url))
        half.join(timeout=30)

    def _half_sent(self) -> socket.socket:
        sock = connect(self.url)
        sock.sendall(b"GET /v1/limits HTTP/1.1\r\nHost: relay\r\nSignature-Input: sig=(")
        return sock

    def _oversized(self) -> None:
        head = (
            b"GET /v1/transfers?box=inbox HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
            b'Signature-Input: labrelay=("@method" "@target-uri");created=1;nonce="'
            + b"n" * 100_000
            + b'";keyid="cnam"\r\nSignature: labrelay=:AAAA:\r\n\r\n'
        )
        while not self._stop.is_set():
            try:
                with connect(self.url) as sock:
                    sock.sendall(head)
                    self.count("oversized", _status_line(sock))
            except OSError:
                self.count("oversized", "closed")

    def _sign_in_flood(self) -> None:
        origin = f"{urlsplit(self.url).scheme}://{urlsplit(self.url).netloc}"
        request = (
            f"POST /console/api/signin/options HTTP/1.1\r\nHost: {urlsplit(self.url).netloc}\r\nOrigin: {origin}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        ).encode()
        while not self._stop.is_set():
            try:
                with connect(self.url) as sock:
                    sock.sendall(request)
                    self.count("sign-in", _status_line(sock))
            except OSError:
                self.count("sign-in", "closed")


def _status_line(sock: socket.socket) -> str:
    sock.settimeout(10)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        return "closed"
    return data[9:12].decode("ascii", "replace") if data.startswith(b"HTTP/1.1 ") else "closed"


# ------------------------------------------------------------------ the parties' side, for the tests and the bench


def uploading_transfer(world: World, tmp_path: Path, size: int = 256 * 1024) -> tuple[str, bytes]:
    """A transfer from the lab to cnam, created and waiting for its bytes: its id and its ciphertext."""
    plain = tmp_path / f"plain-{os.urandom(4).hex()}.bin"
    plain.write_bytes(os.urandom(size))
    lab = world.parties["lab-paris-01"]
    with world.client("lab-paris-01") as client:
        directory = TrustedDirectory(lab.authority, client.directory(), SystemClock().now())
        [state] = seal(lab, plain, [directory.require("cnam", {Role.RECIPIENT})], timedelta(days=1), SystemClock())
        envelope = json.loads(state.read_text())["manifest"]
        client.create_transfer(envelope)
    manifest = Manifest.from_payload(envelope_payload(envelope))
    return manifest.transfer_id, state.with_suffix(".age").read_bytes()


def admin_command(world: World, action: AdminAction, target: str | None = None) -> tuple[dict, float]:
    """Run an admin command through the API; its result and how long the relay took to answer it."""
    admin = world.parties["ops-admin"]
    with RelayClient(world.url, admin.name, admin.signing_key, SystemClock(), retries=0, timeout=30) as client:
        relay_key = client.audit_checkpoint().relay_key
        command = AdminCommand.new(action, target, "issue-18-test", SystemClock().now(), relay_key)
        started = time.monotonic()
        result = client.admin_command(sign_envelope(command.payload(), admin.signing_key, admin.name))
        return result, time.monotonic() - started
