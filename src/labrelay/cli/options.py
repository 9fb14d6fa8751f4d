"""The root command's options, which every command follows: ``labrelay [--verbose] [--quiet] [--retries N] COMMAND``
(or LABRELAY_DEBUG, LABRELAY_QUIET, LABRELAY_RETRIES). Set once per run by the root command and reset by ``main``,
so that the CLI called in-process (``main(argv)``, as the tests do) starts each run from the defaults; never kept
in ``os.environ``, where they would leak into the caller and its children."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labrelay.client.api import RelayClient
    from labrelay.client.checkpoints import CheckpointBook
    from labrelay.crypto.keys import SigningKey

DEFAULT_RETRIES = 4


@dataclass
class CliOptions:
    debug: bool = False  # tracebacks instead of one-line errors
    quiet: bool = False  # no progress bars
    retries: int = DEFAULT_RETRIES  # retries when the relay is unreachable (doubling waits) or busy (as it asks)
    config: Path | None = None  # the client configuration file in force (labrelay.toml), if any


current = CliOptions()


def reset() -> None:
    global current  # noqa: PLW0603 - one set of options per run of the CLI
    current = CliOptions()


def set_options(*, debug: bool, quiet: bool, retries: int, config: Path | None = None) -> None:
    global current  # noqa: PLW0603 - one set of options per run of the CLI
    current = CliOptions(debug=debug, quiet=quiet, retries=retries, config=config or current.config)


def use_config(path: Path | None) -> None:
    """The configuration file ``main`` found before parsing (``--config``, or ``labrelay.toml`` beside the party)."""
    current.config = path


def quiet() -> bool:
    return current.quiet


def debug() -> bool:
    return current.debug


def relay_client(
    server: str, keyid: str, key: SigningKey, cacert: Path | None, checkpoints: CheckpointBook | None = None
) -> RelayClient:
    """The relay client of a command: the root command's retries, the given CA bundle, the wall clock."""
    from labrelay.client.api import RelayClient  # noqa: PLC0415 - the CLI imports the client only when it is used
    from labrelay.clock import SystemClock  # noqa: PLC0415 - loaded only when a command talks to a relay

    return RelayClient(
        server, keyid, key, SystemClock(), ca_bundle=cacert, checkpoints=checkpoints, retries=current.retries
    )
