"""Run the relay with uvicorn on a socket we bind ourselves (so port 0 works and the real port is known).

Fail closed: the relay refuses to listen on anything but a loopback address without TLS. Connections go through
``labrelay.http.edge``'s protocol: caps, header and keep-alive timeouts; forwarded headers only from trusted proxies.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from labrelay.domain.names import is_loopback_host
from labrelay.errors import InsecureTransport, OperationalError, UsageError
from labrelay.http.edge import EdgeLimits, EdgeState, guarded_protocol


def check_listen(host: str, tls_cert: Path | None, tls_key: Path | None) -> None:
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if tls_cert is None and not is_loopback_host(host):
        raise InsecureTransport(
            f"refusing to listen on {host} without TLS: requests and payloads would cross the network in clear",
            hint="pass --tls-cert and --tls-key, or listen on 127.0.0.1 behind a TLS proxy",
        )


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as exc:
        raise OperationalError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    # No Nagle delay: asyncio sets TCP_NODELAY only on sockets created with proto=IPPROTO_TCP, and create_server's
    # has proto 0. Without it every answer after a connection's first one (headers, then body: two writes) waited
    # for the client's delayed ACK, about 40 ms a request (decision 0018). Accepted connections inherit the option.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


def write_ready_file(path: Path, url: str) -> None:
    """Atomically write ``{"url": ..., "pid": ...}`` once the socket is bound (for scripts and tests)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    tmp.replace(path)


def run(
    app: FastAPI,
    *,
    host: str,
    port: int,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    ready_file: Path | None = None,
) -> None:
    check_listen(host, tls_cert, tls_key)
    if tls_cert is not None and tls_key is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls_cert, tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load the TLS certificate or key: {exc}") from exc
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    scheme = "https" if tls_cert else "http"
    shown_host = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown_host}:{bound_port}"
    edge: EdgeState = getattr(app.state, "edge", None) or EdgeState(EdgeLimits())
    # Listening on a public address means no proxy in front: the relay bounds connections per address itself.
    edge.per_address = not is_loopback_host(host)
    config = uvicorn.Config(
        app,
        http=guarded_protocol(edge),
        # Forwarded headers are believed only from ``trusted_proxies``, and validated (labrelay.http.edge);
        # uvicorn's own handling would believe any loopback peer and copy whatever text it sends.
        proxy_headers=False,
        ws="none",  # no WebSocket: an upgrade would swap the protocol and escape the connection accounting
        timeout_keep_alive=max(1, round(edge.limits.keep_alive_timeout)),
        h11_max_incomplete_event_size=edge.limits.max_header_bytes,
        log_config=None,
        access_log=False,
        lifespan="on",
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    server = uvicorn.Server(config)
    if ready_file is not None:
        original_startup = server.startup

        async def startup(sockets: list[socket.socket] | None = None) -> None:
            await original_startup(sockets=sockets)
            write_ready_file(ready_file, url)

        server.startup = startup  # type: ignore[method-assign]  # uvicorn has no hook after binding; wrap its startup
    print(f"labrelay relay listening on {url}", flush=True)
    server.run(sockets=[sock])
