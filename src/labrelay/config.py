"""The relay's settings: one frozen object, read once at start from DATA_DIR/relay.toml and the environment.

``labrelay server init`` writes relay.toml with the defaults below; an environment variable ``LABRELAY_<NAME>``
overrides a setting for one run. Every setting is documented in docs/configuration.md (a test checks).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from labrelay.domain.audit import MIN_AUDIT_RETENTION
from labrelay.domain.detection import parse_lock_on
from labrelay.domain.names import is_loopback_host, parse_networks
from labrelay.domain.timeutil import format_duration, parse_duration
from labrelay.domain.transfers import HARD_MAX_TTL
from labrelay.errors import UsageError

CONFIG_FILE = "relay.toml"
AUTHORITY_FILE = "authority.pub"
DATABASE_FILE = "relay.db"
PAYLOAD_DIR = "payloads"
KEY_DIR = "keys"
RELAY_KEY_FILE = "relay-signing.key"
RELAY_PUB_FILE = "relay.pub"
WITNESS_FILE = "witness-checkpoints.json"


@dataclass(frozen=True)
class RelaySettings:
    """Production defaults; tests build their own with ``replace``."""

    data_dir: Path
    max_ttl: timedelta = timedelta(days=30)
    """Hard maximum time a payload may stay on the relay; no sender, recipient or admin can exceed it."""
    max_payload_bytes: int = 4 * 1024**3
    """Largest ciphertext a sender may declare."""
    max_chunk_bytes: int = 64 * 1024**2
    """Largest single upload request (tus PATCH) body."""
    replay_window: timedelta = timedelta(minutes=5)
    """How old a request signature may be; nonces are remembered this long."""
    clock_skew: timedelta = timedelta(seconds=30)
    """Tolerated difference between a client's clock and the relay's."""
    database_url: str = ""
    """SQLAlchemy URL of the metadata database; empty means DATA_DIR/relay.db (SQLite, WAL). At scale:
    ``postgresql+psycopg://USER@HOST:PORT/DB`` (the password from ``PGPASSWORD`` or ``~/.pgpass``, never here)."""
    database_max_connections: int = 60
    """Most connections one relay process opens to PostgreSQL (an upload in progress holds one for its lock)."""
    payload_store: str = "local"
    """Where ciphertext payloads live: ``local`` (DATA_DIR/payloads) or ``s3`` (an S3-compatible bucket)."""
    s3_endpoint: str = ""
    """URL of the S3-compatible service (https, or http to loopback); credentials come from the environment
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), never from this file."""
    s3_bucket: str = ""
    """The bucket holding the payloads; it must exist and hold nothing else under ``s3_prefix``."""
    s3_region: str = "us-east-1"
    """The bucket's region, as the S3 service names it."""
    s3_prefix: str = ""
    """Key prefix of every object the relay writes (for a bucket shared with other relays)."""
    background: str = "in-process"
    """Who runs the reaper, detection and the checkpointer: ``in-process`` (each ``labrelay serve``; one process
    only) or ``worker`` (``labrelay worker`` processes, one leader; required with several replicas)."""
    checkpoint_interval: timedelta = timedelta(minutes=1)
    """How often the worker verifies the new stretch of the audit chain and keeps its signed head."""
    witness_file: str = ""
    """Where the worker keeps the signed audit heads it verified (a checkpoints file that ``labrelay audit verify
    --checkpoints`` reads); empty means DATA_DIR/witness-checkpoints.json. Keep it off the database's host."""
    public_url: str = ""
    """The URL clients use, when the relay sits behind a proxy (signatures cover the full request URL). It is also
    the web console's origin for passkeys; without it, the console answers only on http(s)://localhost."""
    console_session_ttl: timedelta = timedelta(minutes=30)
    """How long a console sign-in lasts. A session only reads metadata; every command needs a fresh passkey."""
    console_signin_limit: int = 30
    """Console sign-in requests (starts and answers) one address may make per minute (a burst of as many, then one
    every 60/N seconds); beyond, 429 with Retry-After, ``limit:hit`` in the audit trail and a ``limits`` alert."""
    key_store: str = ""
    """Directory of the epoch keys; empty means DATA_DIR/keys. Put it on another volume, outside backups."""
    epoch_length: timedelta = timedelta(hours=1)
    """Span of one epoch key: a payload's key is destroyed at most this long after its deadline."""
    reaper_interval: timedelta = timedelta(minutes=1)
    """How often the reaper expires transfers, deletes their bytes and destroys past epoch keys."""
    audit_retention: timedelta = timedelta(days=365)
    """How long audit records are kept (CNIL délibération 2021-122: 6 months to 1 year); older ones are pruned
    by the reaper and the chain then starts at a signed anchor."""
    alert_webhook: str = ""
    """URL that receives each alert as a JSON POST (https, or http to loopback); also ``serve --alert-webhook``."""
    alert_smtp: str = ""
    """HOST:PORT of an SMTP relay for alert e-mail (STARTTLS when offered); empty: no e-mail."""
    alert_email_from: str = ""
    """Sender address of alert e-mail."""
    alert_email_to: str = ""
    """Comma-separated recipients of alert e-mail."""
    alert_syslog: str = ""
    """``udp://HOST:PORT`` or a local socket such as ``/dev/log`` for alerts to syslog (facility authpriv)."""
    alert_cooldown: timedelta = timedelta(minutes=5)
    """One alert per rule and subject in this span; the audit trail still counts every event."""
    alert_no_fetch_after: timedelta = timedelta(hours=24)
    """A recipient that has not listed its inbox for this long while payloads wait for it raises a ``no-fetch``
    alert (again after as long, if nothing changes). Set it above the longest gap between two fetches."""
    detect_window: timedelta = timedelta(minutes=1)
    """Sliding window of the counting rules (enumeration, bad signatures)."""
    detect_probes: int = 20
    """Requests for transfer ids that do not exist or are someone else's, per party or address and window,
    that raise the enumeration alert."""
    detect_auth_failures: int = 20
    """Failed authentications per address and window that raise the bad-signatures alert."""
    detect_volume_factor: int = 10
    """A party downloading more than this many times its usual volume (per volume window) raises an alert."""
    detect_volume_window: timedelta = timedelta(days=1)
    """The span over which download volume is compared."""
    detect_volume_history: int = 7
    """How many past volume windows make a party's usual volume (their mean)."""
    detect_volume_floor: int = 100 * 1024**2
    """Bytes per volume window below which no volume alert is raised (parties without history)."""
    detect_lock_on: str = "enumeration"
    """Comma-separated rules that lock the offending party at once: enumeration, revoked-key, volume (bad
    signatures and replays never lock: they prove nobody's identity); ``none`` for alerts only."""
    metrics: str = "loopback"
    """Who may read /metrics (Prometheus): ``loopback`` (requests from the relay's own host), ``open``, or ``off``."""
    header_timeout: timedelta = timedelta(seconds=10)
    """A connection must send a request's whole header section within this long, counted from connecting or from the
    request's first byte; an idle or half-sent connection is closed."""
    keep_alive_timeout: timedelta = timedelta(seconds=5)
    """An idle keep-alive connection (between two requests) is closed after this long."""
    body_timeout: timedelta = timedelta(seconds=30)
    """Longest wait for the next piece of a request body; a stalled request is cut (408) and its client resumes."""
    upload_deadline: timedelta = timedelta(minutes=15)
    """Longest one upload request (tus PATCH) may take, however it trickles in; its client resumes at the offset."""
    max_connections: int = 1000
    """Open connections one relay process keeps (never more than its open-file limit allows); beyond, a new
    connection is closed at once."""
    max_connections_per_address: int = 64
    """Open connections from one address, when the relay listens on a public address (TLS, no proxy in front);
    behind a proxy the proxy's own limits apply (docs/deployment.md)."""
    max_uploads: int = 32
    """Upload requests one relay process streams at once; beyond, 429 with Retry-After. Keep it under
    ``database_max_connections``: an upload in progress holds a connection for its lock."""
    max_uploads_per_party: int = 4
    """Upload requests one party streams at once on one relay process; beyond, 429 with Retry-After."""
    trusted_proxies: str = ""
    """Comma-separated addresses or networks (CIDR) of the proxies whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` the relay believes; from anyone else those headers are ignored. Empty: none."""

    @property
    def authority_key_file(self) -> Path:
        return self.data_dir / AUTHORITY_FILE

    @property
    def database_path(self) -> Path:
        return self.data_dir / DATABASE_FILE

    @property
    def payload_dir(self) -> Path:
        return self.data_dir / PAYLOAD_DIR

    @property
    def key_dir(self) -> Path:
        return Path(self.key_store) if self.key_store else self.data_dir / KEY_DIR

    @property
    def relay_key_file(self) -> Path:
        return self.data_dir / RELAY_KEY_FILE

    @property
    def relay_pub_file(self) -> Path:
        return self.data_dir / RELAY_PUB_FILE

    @property
    def witness_path(self) -> Path:
        return Path(self.witness_file) if self.witness_file else self.data_dir / WITNESS_FILE

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILE


SETTING_NAMES = tuple(f.name for f in fields(RelaySettings) if f.name != "data_dir")


def _convert(name: str, raw: Any) -> Any:
    default = getattr(RelaySettings(Path()), name)
    try:
        if isinstance(default, timedelta):
            return parse_duration(str(raw))
        if isinstance(default, int):
            value = int(raw)
            if value <= 0:
                raise ValueError
            return value
        return str(raw)
    except (ValueError, UsageError) as exc:
        raise UsageError(f"setting {name}: invalid value {raw!r}") from exc


def _render(value: Any) -> str:
    if isinstance(value, timedelta):
        return f'"{format_duration(value)}"'
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(settings: RelaySettings) -> str:
    lines = ["# labrelay relay settings; every key is described in docs/configuration.md", ""]
    lines += [f"{name} = {_render(getattr(settings, name))}" for name in SETTING_NAMES]
    return "\n".join(lines) + "\n"


def load_settings(data_dir: Path, environ: Mapping[str, str] | None = None) -> RelaySettings:
    """Settings for the relay whose data lives in ``data_dir``. Unknown keys are refused, not ignored."""
    environ = os.environ if environ is None else environ
    config = data_dir / CONFIG_FILE
    if not config.is_file():
        raise UsageError(
            f"{data_dir} is not a relay data directory (no {CONFIG_FILE})",
            hint="create one with: labrelay server init DATA_DIR --authority AUTH_DIR/authority.pub",
        )
    try:
        raw = tomllib.loads(config.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{config}: {exc}") from exc
    unknown = set(raw) - set(SETTING_NAMES)
    if unknown:
        raise UsageError(f"{config}: unknown settings {sorted(unknown)}")
    values = {name: _convert(name, value) for name, value in raw.items()}
    for name in SETTING_NAMES:
        env = environ.get(f"LABRELAY_{name.upper()}")
        if env is not None:
            values[name] = _convert(name, env)
    settings = replace(RelaySettings(data_dir.resolve()), **values)
    _check(settings)
    return settings


def check_database_url(url: str) -> None:
    """Refuse a database URL that carries a password: it would sit in relay.toml (or a command line) for anyone
    who reads them. The URL is never echoed back, since it holds the secret."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UsageError("setting database_url: not a URL") from None
    query = {name.strip().lower() for name in parse_qs(parts.query, keep_blank_values=True)}
    if parts.password is not None or "password" in query:
        raise UsageError(
            "setting database_url: refusing a database URL that carries a password",
            hint="leave it out (postgresql+psycopg://USER@HOST:PORT/DB) and give it in PGPASSWORD or ~/.pgpass",
        )


def _check(settings: RelaySettings) -> None:
    """Settings whose values are words from a list."""
    check_database_url(settings.database_url)
    if settings.max_ttl > HARD_MAX_TTL:  # clients destroy a rotated key this long after the rotation at most
        raise UsageError(f"setting max_ttl: at most {format_duration(HARD_MAX_TTL)}")
    try:
        parse_lock_on(settings.detect_lock_on)
    except ValueError as exc:
        raise UsageError(f"setting detect_lock_on: {exc}") from None
    if settings.audit_retention < MIN_AUDIT_RETENTION:
        raise UsageError(f"setting audit_retention: at least {format_duration(MIN_AUDIT_RETENTION)} (six months)")
    if settings.metrics not in ("loopback", "open", "off"):
        raise UsageError("setting metrics: one of loopback, open, off")
    if settings.payload_store not in ("local", "s3"):
        raise UsageError("setting payload_store: one of local, s3")
    if settings.payload_store == "s3" and not (settings.s3_endpoint and settings.s3_bucket):
        raise UsageError("setting payload_store = s3 needs s3_endpoint and s3_bucket")
    endpoint = urlsplit(settings.s3_endpoint)
    if settings.s3_endpoint and not (
        endpoint.scheme == "https" or (endpoint.scheme == "http" and is_loopback_host(endpoint.hostname or ""))
    ):
        raise UsageError("setting s3_endpoint: https, or http to a loopback address only")
    if settings.background not in ("in-process", "worker"):
        raise UsageError("setting background: one of in-process, worker")
    try:
        parse_networks(settings.trusted_proxies)
    except ValueError as exc:
        raise UsageError(f"setting trusted_proxies: {exc}") from None
    if settings.max_uploads_per_party > settings.max_uploads:
        raise UsageError("setting max_uploads_per_party: at most max_uploads")
    if settings.database_url and settings.max_uploads >= settings.database_max_connections:
        raise UsageError(
            "setting max_uploads: below database_max_connections (an upload in progress holds a connection)"
        )
