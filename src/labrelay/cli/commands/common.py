"""What the party and relay commands share: their common options, a party's relay client, the retired-key warning."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from labrelay.cli import options, ui
from labrelay.client.checkpoints import CHECKPOINTS_FILE, CheckpointBook
from labrelay.client.keystore import Party
from labrelay.domain.timeutil import parse_duration

if TYPE_CHECKING:
    from labrelay.client.api import RelayClient
    from labrelay.client.rotation import Destroyed

AsOpt = Annotated[
    Path,
    typer.Option("--as", help="The party's directory (DIR/NAME), holding its keys; default: labrelay.toml's party."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (also on failure).")]
WaitOpt = Annotated[
    str | None,
    typer.Option("--wait", metavar="DURATION", help="If another run for this party holds its lock, wait this long."),
]
ServerOpt = Annotated[
    str, typer.Option("--server", envvar="LABRELAY_SERVER", help="The relay's URL; default: labrelay.toml's server.")
]
CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--cacert",
        envvar="LABRELAY_CA_BUNDLE",
        help="CA certificate(s) to trust for the relay's TLS certificate.",
    ),
]


def party_client(server: str, party: Party, cacert: Path | None) -> RelayClient:
    """A party's client keeps the relay's signed audit checkpoints in the party's directory."""
    book = CheckpointBook(party.path / CHECKPOINTS_FILE)
    return options.relay_client(server, party.name, party.signing_key, cacert, book)


def wait_seconds(wait: str | None) -> float:
    """How long a run waits for the party's lock (``--wait``; 0: not at all)."""
    return parse_duration(wait).total_seconds() if wait else 0.0


def warn_overruled(destroyed: list[Destroyed]) -> None:
    """Say, once (the run that destroys it), that a retired identity was destroyed against the relay's word."""
    for gone in destroyed:
        note = gone.note()
        if note is not None:
            ui.warn(note)
