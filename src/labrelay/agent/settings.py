"""The agent's settings: the ``[agent]`` table of ``labrelay.toml``, read and checked once at start-up.

Unknown keys are refused, as in the rest of the file: a misspelt ``stable_fro`` must not silently send a file the
LIS is still writing. Durations are written as ``30s``, ``15m``, ``12h``, ``7d``; relative paths are relative to
the configuration file's directory. Every key is documented in docs/agent.md, which a test checks against the
``*_KEYS`` tables below.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labrelay.client.config import ClientConfig
from labrelay.client.send import RejectLimit
from labrelay.domain.timeutil import parse_duration
from labrelay.errors import UsageError

AGENT_KEYS = {
    "listen": (
        "127.0.0.1:9466",
        "Where the health endpoint and the metrics listen: a loopback address and a port "
        "(0: any free port, logged in the agent.started event).",
    ),
    "lock_wait": ("5m", "How long a unit waits for its party's lock while a manual send or fetch holds it."),
    "lab": ("", "The lab parties whose outbox this agent watches: an array of tables ([[agent.lab]])."),
    "recipient": ("", "The recipient parties this agent fetches for: an array of tables ([[agent.recipient]])."),
}
LAB_KEYS = {
    "party": ("the file's party", "The lab's party directory."),
    "outbox": ("", "The folder the LIS writes into (required); .taking/, sent/ and failed/ are made inside it."),
    "to": ("every recipient of the policy", "Send only to these recipients (like send --to)."),
    "ttl": ("7d", "Each payload's deadline (like send --ttl)."),
    "max_rejected": ("none", 'Send nothing if more records are rejected: a count (50) or a share ("2%").'),
    "fail_on_held": ("false", "Send nothing if any record would be held for review."),
    "input_format": ("auto", "auto, csv, hl7 or fhir (like send --format)."),
    "dpo": ("the only one enrolled", "The DPO whose key seals the breach ledger (like send --dpo)."),
    "ledger_retention": ("365d", "How long each batch's breach ledger is kept."),
    "stable_for": ("10s", "A file is taken once its size and modification time have not changed for this long."),
    "sweep": ("30s", "The safety-net sweep of the outbox, besides file events."),
    "attempts": (
        "5",
        "Attempts per file on failures that may not go away (507 storage full, another 5xx…) before failed/; the "
        "relay away or saying come back later (unreachable, 429, 503, frozen) and the lock held are waited out.",
    ),
    "backoff": ("10s", "The first retry's delay; doubled each attempt, with jitter."),
    "backoff_max": ("10m", "The longest delay between two attempts."),
}
RECIPIENT_KEYS = {
    "party": ("the file's party", "The recipient's party directory."),
    "inbox": ("", "The folder payloads are written into (required; yours alone, like fetch --out)."),
    "format": ("csv", "csv, excel or parquet (like fetch --format)."),
    "poll": ("60s", "How often to ask the relay what waits, with jitter."),
    "backoff": ("10s", "The first delay after a failed pass; doubled each failure, with jitter."),
    "backoff_max": ("10m", "The longest delay between two passes after failures."),
    "hook": ("none", "A command (a list: program and arguments, no shell) run for each file written."),
    "hook_timeout": ("60s", "How long a hook may run before it is killed (and counted as failed)."),
}
FORMATS = ("csv", "excel", "parquet")
INPUT_FORMATS = ("auto", "csv", "hl7", "fhir")


@dataclass(frozen=True)
class Retry:
    """Bounded retries: ``attempts`` in all, the delay doubling from ``base`` up to ``cap`` (seconds)."""

    attempts: int = 5
    base: float = 10.0
    cap: float = 600.0


@dataclass(frozen=True)
class LabSettings:
    party: Path
    outbox: Path
    to: tuple[str, ...] = ()
    ttl: float = 7 * 86400.0
    max_rejected: RejectLimit | None = None
    fail_on_held: bool = False
    input_format: str = "auto"
    dpo: str | None = None
    ledger_retention: float = 365 * 86400.0
    stable_for: float = 10.0
    sweep: float = 30.0
    retry: Retry = Retry()


@dataclass(frozen=True)
class RecipientSettings:
    party: Path
    inbox: Path
    format: str = "csv"
    poll: float = 60.0
    retry: Retry = Retry()
    hook: tuple[str, ...] = ()
    hook_timeout: float = 60.0


@dataclass(frozen=True)
class AgentSettings:
    listen: tuple[str, int]
    lock_wait: float
    labs: tuple[LabSettings, ...]
    recipients: tuple[RecipientSettings, ...]


class _Table:
    """One table of the configuration, read key by key with its path in messages (``agent.lab[1].ttl``)."""

    def __init__(self, data: Any, where: str, known: Mapping[str, Any], config: ClientConfig) -> None:
        if not isinstance(data, dict):
            raise UsageError(f"{config.path}: {where} must be a table")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UsageError(
                f"{config.path}: unknown setting(s) in {where}: {', '.join(unknown)}",
                hint=f"known: {', '.join(known)} (docs/agent.md)",
            )
        self.data, self.where, self.config = data, where, config

    def _bad(self, key: str, what: str) -> UsageError:
        return UsageError(f"{self.config.path}: {self.where}.{key} must be {what}")

    def _typed(self, key: str, kind: type, what: str) -> Any:
        value = self.data.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool)):
            raise self._bad(key, what)
        return value

    def text(self, key: str, default: str | None = None, choices: Sequence[str] = ()) -> str | None:
        value = self._typed(key, str, "a string")
        if value is not None and not value.strip():
            raise self._bad(key, "a non-empty string")
        if value is not None and choices and value not in choices:
            raise self._bad(key, f"one of {', '.join(choices)}")
        return value if value is not None else default

    def path(self, key: str, default: Path | None = None) -> Path:
        value = self.text(key)
        if value is None:
            if default is None:
                raise UsageError(f"{self.config.path}: {self.where}.{key} is required")
            return default
        return self.config.resolve(value)

    def seconds(self, key: str, default: str) -> float:
        value = self.text(key, default)
        assert value is not None  # noqa: S101 - a default is given
        try:
            return parse_duration(value).total_seconds()
        except UsageError as exc:
            raise UsageError(f"{self.config.path}: {self.where}.{key}: {exc.message}", hint=exc.hint) from None

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._typed(key, bool, "true or false")
        return default if value is None else bool(value)

    def count(self, key: str, default: int, minimum: int = 1) -> int:
        value = self._typed(key, int, "a whole number")
        if value is not None and value < minimum:
            raise self._bad(key, f"at least {minimum}")
        return default if value is None else int(value)

    def words(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self._bad(key, "a list of non-empty strings")
        return tuple(value)

    def entries(self, key: str) -> list[Any]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self._bad(key, f"an array of tables ([[{self.where}.{key}]])")
        return value

    def retry(self, attempts: int) -> Retry:
        base, cap = self.seconds("backoff", "10s"), self.seconds("backoff_max", "10m")
        if cap < base:
            raise self._bad("backoff_max", "at least backoff")
        return Retry(attempts=attempts, base=base, cap=cap)


def _lab(table: _Table, default_party: Path | None) -> LabSettings:
    limit = table.data.get("max_rejected")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | str)):
        raise table._bad("max_rejected", 'a count (50) or a share ("2%")')
    return LabSettings(
        party=table.path("party", default_party),
        outbox=table.path("outbox"),
        to=table.words("to"),
        ttl=table.seconds("ttl", "7d"),
        max_rejected=RejectLimit.parse(str(limit)) if limit is not None else None,
        fail_on_held=table.flag("fail_on_held"),
        input_format=table.text("input_format", "auto", INPUT_FORMATS) or "auto",
        dpo=table.text("dpo"),
        ledger_retention=table.seconds("ledger_retention", "365d"),
        stable_for=table.seconds("stable_for", "10s"),
        sweep=table.seconds("sweep", "30s"),
        retry=table.retry(table.count("attempts", 5)),
    )


def _recipient(table: _Table, default_party: Path | None) -> RecipientSettings:
    return RecipientSettings(
        party=table.path("party", default_party),
        inbox=table.path("inbox"),
        format=table.text("format", "csv", FORMATS) or "csv",
        poll=table.seconds("poll", "60s"),
        retry=table.retry(1),
        hook=table.words("hook"),
        hook_timeout=table.seconds("hook_timeout", "60s"),
    )


def parse_listen(text: str, where: str) -> tuple[str, int]:
    """``127.0.0.1:9466`` or ``[::1]:0``: a loopback host (``localhost`` is 127.0.0.1) and a port."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"{where}: listen {text!r} must be HOST:PORT (127.0.0.1:9466)")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(
            f"{where}: listen {text!r} is not a loopback address",
            hint="the health endpoint and metrics are local: 127.0.0.1 or ::1 (a scraper elsewhere goes through a "
            "proxy you configure)",
        )
    return host, int(port)


def agent_settings(config: ClientConfig) -> AgentSettings:
    """The ``[agent]`` table of ``config``, checked: at least one lab or recipient entry."""
    root = _Table(config.agent, "agent", AGENT_KEYS, config)
    listen = parse_listen(root.text("listen", "127.0.0.1:9466") or "", f"{config.path}: agent")
    labs = _entries(root, "lab", LAB_KEYS, config, _lab)
    recipients = _entries(root, "recipient", RECIPIENT_KEYS, config, _recipient)
    if not labs and not recipients:
        raise UsageError(
            f"{config.path}: the [agent] table names no [[agent.lab]] and no [[agent.recipient]]: nothing to do",
            hint="docs/agent.md",
        )
    parties = [s.party for s in (*labs, *recipients)]
    if len(set(parties)) != len(parties):
        raise UsageError(f"{config.path}: a party appears twice in [agent]: one entry per party")
    return AgentSettings(listen, root.seconds("lock_wait", "5m"), tuple(labs), tuple(recipients))


def _entries(
    root: _Table,
    key: str,
    known: Mapping[str, Any],
    config: ClientConfig,
    build: Callable[[_Table, Path | None], Any],
) -> list[Any]:
    return [
        build(_Table(data, f"agent.{key}[{i}]", known, config), config.party)
        for i, data in enumerate(root.entries(key))
    ]
