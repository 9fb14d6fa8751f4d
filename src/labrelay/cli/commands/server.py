"""``labrelay server`` (create and upgrade a relay's data directory), ``labrelay serve`` and ``labrelay worker``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labrelay.cli import ui
from labrelay.clock import SystemClock


def server_init(
    data_dir: Annotated[Path, typer.Argument(help="The relay's data directory, to create.")],
    authority: Annotated[Path, typer.Option("--authority", help="AUTH_DIR/authority.pub to pin.")],
    database_url: Annotated[
        str, typer.Option(help="PostgreSQL URL (postgresql+psycopg://USER@HOST/DB); default: SQLite in DATA_DIR.")
    ] = "",
) -> None:
    """Create a relay data directory: settings, pinned authority key, database, payload directory."""
    from labrelay.operations import init_data_dir  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

    settings = init_data_dir(data_dir, authority, database_url=database_url)
    ui.out.print(
        f"relay data directory ready: {settings.data_dir} (settings in {settings.config_file})",
        markup=False,
    )


def server_upgrade(
    data: Annotated[Path, typer.Option("--data", help="The relay's data directory.")],
) -> None:
    """Bring the relay's database schema up to this version's."""
    from labrelay.operations import policy_refusal, upgrade_data_dir  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

    ui.out.print(f"schema at {upgrade_data_dir(data)}", markup=False)
    refusal = policy_refusal(data)
    if refusal is not None:  # say it now, not in tonight's failed sends (a policy signed before the unparsed rules)
        ui.err.print(
            f"warning: {refusal}: labs route nothing until the authority publishes the policy in force "
            "(labrelay authority publish-policy)",
            markup=False,
        )


def serve(
    data: Annotated[Path, typer.Option("--data", help="The relay's data directory.")],
    host: Annotated[str, typer.Option(help="Address to listen on. Off loopback, TLS is required.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate chain (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM, 0600).")] = None,
    ready_file: Annotated[Path | None, typer.Option(help="Write {url, pid} here once listening.")] = None,
    alert_webhook: Annotated[
        str | None, typer.Option(help="URL that receives each alert as a JSON POST (overrides alert_webhook).")
    ] = None,
) -> None:
    """Run the relay."""
    from labrelay.cli.logging import configure_logging  # noqa: PLC0415 - structlog, for the relay's processes only
    from labrelay.config import load_settings  # noqa: PLC0415 - only the relay's commands read its settings
    from labrelay.crypto.keys import check_private_permissions  # noqa: PLC0415 - only serve needs it
    from labrelay.http.server import check_listen, run  # noqa: PLC0415 - FastAPI and uvicorn load only to serve
    from labrelay.runtime import open_relay  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

    check_listen(host, tls_cert, tls_key)
    if tls_key is not None:
        check_private_permissions(tls_key)
    configure_logging()
    relay = open_relay(load_settings(data), SystemClock(), alert_webhook=alert_webhook or "")
    try:
        run(relay.app(), host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, ready_file=ready_file)
    finally:
        relay.close()


def worker(
    data: Annotated[Path, typer.Option("--data", help="The relay's data directory (same settings as serve).")],
) -> None:
    """Run the relay's background jobs (reaper, detection, audit checkpoints) for every replica. Start one or
    more; one leads (a PostgreSQL advisory lock, or a file lock on the embedded default), the others wait
    and take over if it stops. Stops cleanly on SIGTERM or Ctrl-C."""
    import signal  # noqa: PLC0415 - only the worker needs it
    import threading  # noqa: PLC0415 - only the worker needs it

    from labrelay.cli.logging import configure_logging  # noqa: PLC0415 - structlog, for the relay's processes only
    from labrelay.operations import run_worker  # noqa: PLC0415 - the relay's stack loads only for the command that needs it

    configure_logging()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ui.out.print(f"labrelay worker for {data} started", markup=False)
    run_worker(data, SystemClock(), stop)
    ui.out.print("labrelay worker stopped", markup=False)
