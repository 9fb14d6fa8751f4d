"""The client's configuration file, ``labrelay.toml``: the relay's URL, the CA bundle, the default party, and the
agent's settings, so that a job or a service names none of them on its command line.

Where it is read from, first found wins: ``labrelay --config FILE`` (or ``LABRELAY_CONFIG``); else
``labrelay.toml`` next to the party (in the directory that holds the ``--as`` party's directory). Flags and their
environment variables override what the file says. Relative paths in the file are relative to the file's
directory. Unknown keys are refused, not ignored: a misspelt ``sever`` must not silently send nowhere. Documented
in docs/configuration.md (Client configuration), which a test checks against ``CLIENT_KEYS``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labrelay.errors import UsageError

CONFIG_NAME = "labrelay.toml"
CLIENT_KEYS = {
    "server": "The relay's URL (``--server``, ``LABRELAY_SERVER``).",
    "cacert": "CA certificate(s) to trust for the relay's TLS certificate (``--cacert``, ``LABRELAY_CA_BUNDLE``).",
    "party": "The default party directory (``--as``).",
    "agent": "The agent's settings (a table): see docs/agent.md.",
}


@dataclass(frozen=True)
class ClientConfig:
    """One ``labrelay.toml``, read and checked; paths made absolute."""

    path: Path
    server: str | None = None
    cacert: Path | None = None
    party: Path | None = None
    agent: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> ClientConfig:
        """Read and check one file; a missing or malformed file, or an unknown key, is a usage error."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"configuration file {path} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read configuration file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path} is not valid TOML: {exc}") from None
        unknown = sorted(set(data) - set(CLIENT_KEYS))
        if unknown:
            raise UsageError(
                f"{path}: unknown setting(s) {', '.join(unknown)}", hint=f"known: {', '.join(CLIENT_KEYS)}"
            )
        base = path.resolve().parent
        agent = data.get("agent", {})
        if not isinstance(agent, dict):
            raise UsageError(f"{path}: 'agent' must be a table ([agent])")
        return cls(
            path=path.resolve(),
            server=_text(data, "server", path),
            cacert=_path(data, "cacert", path, base),
            party=_path(data, "party", path, base),
            agent=agent,
        )

    def resolve(self, value: str) -> Path:
        """A path the file names, relative to the file's directory (``..`` folded, links left alone)."""
        return Path(os.path.normpath(self.path.parent / Path(value).expanduser()))


def _text(data: Mapping[str, Any], key: str, path: Path) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{path}: {key!r} must be a non-empty string")
    return value.strip()


def _path(data: Mapping[str, Any], key: str, path: Path, base: Path) -> Path | None:
    value = _text(data, key, path)
    return None if value is None else Path(os.path.normpath(base / Path(value).expanduser()))


def find_config(explicit: Path | None, party_dir: Path | None) -> ClientConfig | None:
    """The configuration in force: the explicit file (which must exist), else ``labrelay.toml`` next to the party,
    else none."""
    if explicit is not None:
        return ClientConfig.read(explicit)
    if party_dir is not None:
        beside = party_dir.resolve().parent / CONFIG_NAME
        if beside.is_file():
            return ClientConfig.read(beside)
    return None
