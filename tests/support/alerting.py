"""Real alert receivers for the detection tests: an HTTP webhook, an SMTP server (aiosmtpd), a syslog socket."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    items: list[tuple[float, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Any) -> None:
        with self.lock:
            self.items.append((time.monotonic(), item))

    def wait_for(self, match: Callable[[Any], bool], timeout: float) -> tuple[float, Any] | None:
        """The first item ``match`` accepts, with its arrival time (monotonic), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                for arrived, item in self.items:
                    if match(item):
                        return arrived, item
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)


@contextmanager
def webhook() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            received.add(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_server() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
            received.add(envelope.content.decode("utf-8", errors="replace"))
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield f"127.0.0.1:{controller.port}", received
    finally:
        controller.stop()


@contextmanager
def syslog_socket() -> Iterator[tuple[str, Received]]:
    received = Received()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                data, _ = sock.recvfrom(65536)
            except TimeoutError:
                continue
            received.add(data.decode("utf-8", errors="replace"))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"udp://127.0.0.1:{sock.getsockname()[1]}", received
    finally:
        stop.set()
        thread.join(2)
        sock.close()
