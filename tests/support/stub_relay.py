"""A hostile relay for the client's tests: a real HTTP server on a free loopback port that answers each request
as the test says, checks no signature and keeps what it was asked. It plays a compromised or lying relay (A2):
whatever it answers, the client must hold."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, doc: Any) -> Answer:
        """A JSON answer, its text kept as it is (``ensure_ascii=False``: control characters travel raw where
        JSON allows it, escaped where it does not; the client decodes both alike)."""
        return cls(status, json.dumps(doc, ensure_ascii=False).encode("utf-8"))


Route = Callable[[str, str], Answer]
"""(method, path) → the answer."""


@dataclass
class StubRelay:
    url: str
    asked: list[tuple[str, str]] = field(default_factory=list)


@contextmanager
def stub_relay(route: Route) -> Iterator[StubRelay]:
    stub = StubRelay("")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            with lock:
                stub.asked.append((self.command, self.path))
            answer = route(self.command, self.path)
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
