"""What the agent tells a supervisor: a status per party, Prometheus metrics in a registry of the agent's own, and
a loopback-only HTTP listener serving both (``GET /health``: JSON, 200 while every party's thread runs, else 503;
``GET /metrics``: the Prometheus text format).

Any local user can connect to a loopback port, and a web page can reach one through DNS rebinding (a name of the
attacker's that resolves to 127.0.0.1): so the listener answers only a request whose ``Host`` names the loopback
itself (``127.0.0.1``, ``[::1]`` or ``localhost``, with the listener's port; anything else: 421), and serves codes
and counts only: no message, no file name, no path (those are in the JSON log, and the lab's reason files)."""

from __future__ import annotations

import errno
import json
import socket
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from labrelay.domain.timeutil import to_rfc3339
from labrelay.errors import UsageError
from labrelay.ports import Clock


class Metrics:
    """The agent's metrics, labelled by party and side (lab, recipient)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.last_success = Gauge(
            "labrelay_agent_last_success_timestamp_seconds",
            "When a unit last succeeded (a file sent, a fetch pass done).",
            ["party", "side"],
            registry=r,
        )
        self.backlog = Gauge(
            "labrelay_agent_backlog",
            "Lab: files waiting in the outbox. Recipient: payloads the last pass could not finish.",
            ["party", "side"],
            registry=r,
        )
        self.failures = Counter(
            "labrelay_agent_failures", "Failed attempts, by error kind.", ["party", "side", "kind"], registry=r
        )
        self.files = Counter(
            "labrelay_agent_files", "Outbox files dealt with, by outcome.", ["party", "outcome"], registry=r
        )
        self.payloads = Counter("labrelay_agent_payloads", "Payloads written into the inbox.", ["party"], registry=r)
        self.records = Counter("labrelay_agent_records", "Records sent or received.", ["party", "side"], registry=r)
        self.hook_failures = Counter(
            "labrelay_agent_hook_failures",
            "Hooks that failed or timed out (their file is kept).",
            ["party"],
            registry=r,
        )
        self.alive = Gauge(
            "labrelay_agent_worker_up", "1 while the party's thread runs.", ["party", "side"], registry=r
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)


# What /health may show of a failure: codes and counts (see ``policy.error_fields``), never a message or a path.
FAILURE_KEYS = ("kind", "error_class", "error_type", "exit_code")
HOOK_FAILURE_KEYS = ("reason", "exit_code", "timeout")


class Status:
    """One party's state for /health; updated by its thread, read by the listener's."""

    def __init__(self, party: str, side: str, metrics: Metrics, clock: Clock) -> None:
        self.party, self.side = party, side
        self._metrics, self._clock = metrics, clock
        self._lock = threading.Lock()
        self.alive = False
        self.last_success: str | None = None
        self.last_failure: dict[str, Any] | None = None
        self.consecutive_failures = 0
        self.backlog = 0
        self.hook_failures = 0
        self.last_hook_failure: dict[str, Any] | None = None

    def running(self, alive: bool) -> None:
        with self._lock:
            self.alive = alive
        self._metrics.alive.labels(self.party, self.side).set(1 if alive else 0)

    def succeeded(self) -> None:
        now = self._clock.now()
        with self._lock:
            self.last_success = to_rfc3339(now)
            self.consecutive_failures = 0
        self._metrics.last_success.labels(self.party, self.side).set(now.timestamp())

    def failed(self, fields: Mapping[str, Any]) -> None:
        """A failed unit; of ``fields`` (``policy.error_fields``) only the codes are kept."""
        with self._lock:
            self.last_failure = {**_only(fields, FAILURE_KEYS), "at": to_rfc3339(self._clock.now())}
            self.consecutive_failures += 1
        self._metrics.failures.labels(self.party, self.side, str(fields["kind"])).inc()

    def set_backlog(self, count: int) -> None:
        with self._lock:
            self.backlog = count
        self._metrics.backlog.labels(self.party, self.side).set(count)

    def hook_failed(self, detail: Mapping[str, Any]) -> None:
        """A hook that failed, timed out or was interrupted; of ``detail`` only its codes are kept."""
        with self._lock:
            self.hook_failures += 1
            self.last_hook_failure = {**_only(detail, HOOK_FAILURE_KEYS), "at": to_rfc3339(self._clock.now())}
        self._metrics.hook_failures.labels(self.party).inc()

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "party": self.party,
                "side": self.side,
                "alive": self.alive,
                "last_success": self.last_success,
                "last_failure": self.last_failure,
                "consecutive_failures": self.consecutive_failures,
                "backlog": self.backlog,
                "hook_failures": self.hook_failures,
                "last_hook_failure": self.last_hook_failure,
            }


def _only(fields: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: fields[k] for k in keys if k in fields}


def loopback_hosts(port: int) -> frozenset[str]:
    """The ``Host`` values the listener answers: the loopback's names, with its port."""
    return frozenset(f"{host}:{port}" for host in ("127.0.0.1", "[::1]", "localhost"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class HealthServer:
    """``/health`` and ``/metrics`` on a loopback address (checked by the settings), in a thread of its own."""

    def __init__(self, listen: tuple[str, int], metrics: Metrics, statuses: Sequence[Status]) -> None:
        try:
            self._server = (_Server6 if ":" in listen[0] else _Server)(listen, BaseHTTPRequestHandler)
        except OSError as exc:  # a setting to change, not a moment to wait out: exit 2, not restarted by systemd
            busy = exc.errno == errno.EADDRINUSE
            raise UsageError(
                f"the agent cannot listen on {listen[0]}:{listen[1]}: {exc.strerror or exc}",
                hint="another agent is running with these settings, or another program holds the port: stop it, "
                "or give another `listen`"
                if busy
                else "give another `listen` in the agent's settings",
            ) from None
        self._server.RequestHandlerClass = _handler(metrics, statuses, loopback_hosts(self._server.server_address[1]))
        self._thread = threading.Thread(target=self._server.serve_forever, name="agent-health", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{text}]" if ":" in text else text
        return f"http://{shown}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: Metrics, statuses: Sequence[Status], hosts: frozenset[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if (self.headers.get("Host") or "").lower() not in hosts:  # DNS rebinding, or not meant for us
                self._answer(421, "text/plain", b"misdirected request: use 127.0.0.1, [::1] or localhost\n")
            elif self.path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, metrics.text())
            elif self.path in ("/health", "/"):
                parties = [s.as_dict() for s in statuses]
                ok = all(p["alive"] for p in parties)
                body = json.dumps({"ok": ok, "parties": parties}, ensure_ascii=True).encode()
                self._answer(200 if ok else 503, "application/json", body)
            else:
                self._answer(404, "text/plain", b"not found\n")

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Requests are not logged: stdout is the agent's JSON event stream."""

    return Handler
