"""The composition root: settings → storage adapters → services → the HTTP app.

This is the only module that knows which adapter implements which port. Everything above it (the CLI) asks it
for a relay; everything below it receives what it needs as arguments.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine, create_engine

from labrelay.client.checkpoints import CheckpointBook
from labrelay.clock import SystemClock
from labrelay.config import RelaySettings, check_database_url, load_settings, render_config
from labrelay.crypto.keys import SigningKey, VerifyKey, load_verify_key_file
from labrelay.domain.audit import Checkpoint, verify_chain
from labrelay.domain.detection import parse_lock_on
from labrelay.domain.names import parse_networks
from labrelay.domain.transfers import TransferLimits
from labrelay.errors import LabrelayError, OperationalError, UsageError
from labrelay.http.app import create_app
from labrelay.http.edge import EdgeLimits
from labrelay.http.metrics import RelayMetrics
from labrelay.http.services import RelayServices
from labrelay.notify import sinks_from
from labrelay.ports import Clock, KeyStore, Leader, PayloadStore, TransferLocks
from labrelay.relay.alerts import AlertDispatcher
from labrelay.relay.audit_check import AuditReport, verify_audit
from labrelay.relay.audit_export import record_doc
from labrelay.relay.auditor import Auditor
from labrelay.relay.auth import Authenticator
from labrelay.relay.console import SIGNIN_KEY_LABEL, ConsoleService
from labrelay.relay.control import CommandResult, ControlService
from labrelay.relay.delivery import DeliveryService
from labrelay.relay.detector import DetectionRules, Detector
from labrelay.relay.directory import DirectoryService
from labrelay.relay.policies import PolicyService
from labrelay.relay.reaper import Reaper
from labrelay.relay.recovery import RecoveryService
from labrelay.relay.retention import RetentionReport, check_retention
from labrelay.relay.transfer_access import TransferAccess
from labrelay.relay.uploads import UploadService
from labrelay.relay.worker import AuditTail, Checkpointer, Job, Worker
from labrelay.storage import migrate
from labrelay.storage.files import LocalPayloadStore
from labrelay.storage.fs import FileLeader
from labrelay.storage.keystore import FileKeyStore
from labrelay.storage.sql import (
    SqlLeader,
    SqlStore,
    SqlTransferLocks,
    ThreadLocks,
    postgres_engine,
    sqlite_engine,
)


def engine_for(settings: RelaySettings) -> Engine:
    url = settings.database_url
    if url.startswith("postgresql"):
        return postgres_engine(url, settings.database_max_connections)
    if url:
        return create_engine(url, pool_pre_ping=True)
    return sqlite_engine(settings.database_path)


S3_READ_TIMEOUT = 30.0
"""Seconds an S3 request may wait for its answer. Connecting is bounded at 2 s (an unreachable service fails
fast); a loaded service may be slow to answer, and failing a chunk then would only make the sender resend it."""


def payload_store_for(settings: RelaySettings, keys: KeyStore) -> PayloadStore:
    if settings.payload_store == "s3":
        from labrelay.storage.s3 import S3PayloadStore, s3_client  # noqa: PLC0415 - boto3 only when configured

        client = s3_client(
            settings.s3_endpoint,
            settings.s3_region,
            os.environ.get("AWS_ACCESS_KEY_ID", ""),
            os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            timeout=S3_READ_TIMEOUT,
        )
        store: PayloadStore = S3PayloadStore(
            client, settings.s3_bucket, keys, settings.epoch_length, settings.s3_prefix
        )
        return store
    return LocalPayloadStore(settings.payload_dir, keys, settings.epoch_length)


def locks_for(sql: SqlStore) -> TransferLocks:
    return SqlTransferLocks(sql.engine) if sql.postgres else ThreadLocks()


def leader_for(settings: RelaySettings, sql: SqlStore) -> Leader:
    return SqlLeader(sql.engine) if sql.postgres else FileLeader(settings.data_dir / "worker.lock")


@dataclass
class Relay:
    """A relay's parts, wired."""

    settings: RelaySettings
    sql: SqlStore
    payloads: PayloadStore
    keys: FileKeyStore
    services: RelayServices
    detector: Detector
    alerts: AlertDispatcher

    def app(self) -> FastAPI:
        return create_app(self.services)

    def close(self) -> None:
        self.sql.engine.dispose()


def _write_private(path: Path, data: bytes) -> None:
    """A new file readable by its owner only (0600, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def init_data_dir(data_dir: Path, authority_pub: Path, *, database_url: str = "") -> RelaySettings:
    """Create a relay data directory (mode 0700): settings (relay.toml, 0600), pinned authority key, database,
    payload directory. With ``database_url`` (PostgreSQL, never with a password), the schema is created there; the
    other scaled settings (S3, background worker) are edited in relay.toml afterwards (docs/deployment.md)."""
    check_database_url(database_url)  # before anything is written: a password never reaches relay.toml
    authority = load_verify_key_file(authority_pub)  # refuse anything that is not an Ed25519 public key
    if data_dir.exists() and any(data_dir.iterdir()):
        raise UsageError(f"{data_dir} exists and is not empty; refusing to initialise over it")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    settings = RelaySettings(data_dir.resolve(), database_url=database_url)
    _write_private(settings.config_file, render_config(settings).encode("utf-8"))
    settings.authority_key_file.write_bytes(authority.to_pem())
    settings.payload_dir.mkdir(mode=0o700)
    settings.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    relay_signing_key(settings)
    engine = engine_for(settings)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return settings


def upgrade_data_dir(data_dir: Path) -> str:
    settings = load_settings(data_dir)
    engine = engine_for(settings)
    try:
        return migrate.upgrade(engine)
    finally:
        engine.dispose()


def policy_refusal(data_dir: Path) -> str | None:
    """Why no routing policy is in force on this relay (none registered, the latest one withdrawn, expired, or
    signed before policies carried an issue), or None."""
    relay = open_relay(load_settings(data_dir), SystemClock())
    try:
        policies = relay.services.policies
        try:
            return policies.in_force_refusal(policies.latest())
        except LabrelayError as exc:
            return exc.message
    finally:
        relay.close()


def relay_signing_key(settings: RelaySettings, signed_before: bool = False) -> SigningKey:
    """The relay's own Ed25519 key, which signs its audit checkpoints; made when the data directory is created (or
    on the first start after the upgrade that introduced it), 0600, with its public half next to it (relay.pub)
    for auditors and clients to pin. ``signed_before``: the log already has a signed head, so a missing key is
    refused, never silently replaced (a new key would let whoever deleted the old one re-sign a rewritten log)."""
    path = settings.relay_key_file
    if not path.exists():
        if signed_before:
            raise OperationalError(
                f"{path} is missing, and the audit log was signed with it",
                hint="restore the key from its backup; a new key would make every client refuse this relay",
            )
        key = SigningKey.generate()
        key.save(path)
        settings.relay_pub_file.write_bytes(key.public.to_pem())
        return key
    return SigningKey.load(path)


def relay_verify_key(settings: RelaySettings) -> VerifyKey:
    """The public key of the relay's checkpoints, without touching the private one (for auditors)."""
    if settings.relay_pub_file.exists():
        return VerifyKey.from_pem(settings.relay_pub_file.read_bytes())
    if settings.relay_key_file.exists():
        return SigningKey.load(settings.relay_key_file).public
    raise UsageError(f"{settings.data_dir} has no relay key (relay.pub); start the relay once to create it")


def detection_rules(settings: RelaySettings) -> DetectionRules:
    return DetectionRules(
        window=settings.detect_window,
        probes=settings.detect_probes,
        auth_failures=settings.detect_auth_failures,
        volume_factor=settings.detect_volume_factor,
        volume_window=settings.detect_volume_window,
        volume_history=settings.detect_volume_history,
        volume_floor=settings.detect_volume_floor,
        lock_on=parse_lock_on(settings.detect_lock_on),
        cooldown=settings.alert_cooldown,
    )


def limits_for(settings: RelaySettings) -> TransferLimits:
    return TransferLimits(
        max_ttl=settings.max_ttl, max_payload_bytes=settings.max_payload_bytes, clock_skew=settings.clock_skew
    )


def open_relay(settings: RelaySettings, clock: Clock, *, alert_webhook: str = "") -> Relay:
    authority = VerifyKey.from_pem(settings.authority_key_file.read_bytes())
    engine = engine_for(settings)
    try:
        return _wire(settings, clock, engine, authority, alert_webhook)
    except BaseException:
        engine.dispose()  # a relay that cannot start leaves no connection open
        raise


def _wire(settings: RelaySettings, clock: Clock, engine: Engine, authority: VerifyKey, alert_webhook: str) -> Relay:
    migrate.require_head(engine)
    sql = SqlStore(engine)
    keys = FileKeyStore(settings.key_dir)
    payloads = payload_store_for(settings, keys)
    relay_key = relay_signing_key(settings, signed_before=sql.checkpoint("head") is not None)
    auditor = Auditor(sql, clock, relay_key)
    directory = DirectoryService(sql, authority, clock, auditor)
    window = settings.replay_window
    control = ControlService(sql, directory, auditor, clock, authority, window)
    auth = Authenticator(directory, sql, auditor, clock, authority, window, settings.clock_skew, control)
    policies = PolicyService(sql, authority, clock, auditor)
    access = TransferAccess(repo=sql, store=payloads, auditor=auditor, clock=clock, locks=locks_for(sql))
    uploads = UploadService(access, directory=directory, policies=policies, limits=limits_for(settings))
    recovery = RecoveryService(access)
    metrics = RelayMetrics()
    auditor.subscribe(metrics.on_audit)
    alerts = AlertDispatcher(
        sinks_from(
            alert_webhook or settings.alert_webhook,
            settings.alert_smtp,
            settings.alert_email_from,
            settings.alert_email_to,
            settings.alert_syslog,
        )
    )
    rules = detection_rules(settings)
    detector = Detector(rules, auditor, control, alerts)
    in_process = settings.background == "in-process"
    if in_process:  # otherwise the leading worker tails the shared log (labrelay worker)
        detector.load_history(sql, clock.now())
        auditor.subscribe(detector)
    relay_public = auditor.relay_public
    console = ConsoleService(
        sql,
        sql,
        sql,
        directory,
        control,
        auditor,
        clock,
        retention=lambda: check_retention(
            sql, payloads, keys, clock, limits_for(settings), settings.epoch_length
        ).as_dict(),
        verify_audit=lambda: verify_audit(sql, relay_public, now=clock.now(), activity=sql.activity()).as_dict(),
        session_ttl=settings.console_session_ttl,
        # Every replica holds the relay's key, so every replica opens the sign-in challenges any other sealed.
        signin_key=relay_key.derive_secret(SIGNIN_KEY_LABEL),
        signin_limit=settings.console_signin_limit,
    )
    services = RelayServices(
        console=console,
        auth=auth,
        directory=directory,
        uploads=uploads,
        delivery=DeliveryService(access),
        recovery=recovery,
        policies=policies,
        auditor=auditor,
        clock=clock,
        reaper=Reaper(recovery, keys, auditor, clock, settings.audit_retention),
        control=control,
        audit_log=sql,
        metrics=metrics,
        detector=detector if in_process else None,
        alerts=alerts,
        background=in_process,
        metrics_access=settings.metrics,
        reaper_interval=settings.reaper_interval.total_seconds(),
        max_chunk_bytes=settings.max_chunk_bytes,
        public_url=settings.public_url or None,
        edge=edge_limits(settings),
    )
    return Relay(settings, sql, payloads, keys, services, detector, alerts)


def edge_limits(settings: RelaySettings) -> EdgeLimits:
    """The HTTP edge's limits from the relay's settings (docs/configuration.md, Limits)."""
    return EdgeLimits(
        header_timeout=settings.header_timeout.total_seconds(),
        keep_alive_timeout=settings.keep_alive_timeout.total_seconds(),
        body_timeout=settings.body_timeout.total_seconds(),
        upload_deadline=settings.upload_deadline.total_seconds(),
        max_connections=settings.max_connections,
        max_connections_per_address=settings.max_connections_per_address,
        max_uploads=settings.max_uploads,
        max_uploads_per_party=settings.max_uploads_per_party,
        trusted_proxies=parse_networks(settings.trusted_proxies),
    )


def run_worker(data_dir: Path, clock: Clock, stop: threading.Event, *, tick: float = 0.5) -> None:
    """``labrelay worker``: campaign for leadership; while leading, run the reaper, detection and the checkpointer
    until ``stop`` is set."""
    settings = load_settings(data_dir)
    relay = open_relay(settings, clock)
    services = relay.services
    book = CheckpointBook(settings.witness_path)
    witness_url = settings.public_url or f"labrelay:{settings.data_dir}"

    def witness(checkpoint: Checkpoint) -> None:
        book.observe(witness_url, checkpoint)
        book.save()

    tail = AuditTail(relay.sql, relay.detector, clock)
    checkpointer = Checkpointer(relay.sql, relay.alerts, clock, witness)
    jobs = [
        Job("detector", 1.0, tail.run, tail.start),
        Job("reaper", settings.reaper_interval.total_seconds(), services.reaper.run_once),
        Job("checkpointer", settings.checkpoint_interval.total_seconds(), checkpointer.run, checkpointer.start),
        Job("nonces", 60.0, services.auth.prune_nonces),
    ]
    worker = Worker(leader_for(settings, relay.sql), jobs, services.auditor, tick=tick)
    try:
        worker.run(stop)
    finally:
        relay.alerts.close()
        relay.close()


def reap_once(data_dir: Path, clock: Clock) -> dict[str, Any]:
    """One reaper pass over a relay's data directory (for a stopped relay, or from cron)."""
    relay = open_relay(load_settings(data_dir), clock)
    try:
        result = relay.services.reaper.run_once()
    finally:
        relay.close()
    return {
        "expired": result.expired,
        "repaired": result.repaired,
        "keys_destroyed": len(result.keys_destroyed),
        "leftovers": len(result.leftovers),
    }


def console_passkeys(data_dir: Path, party: str, clock: Clock, *, remove: bool) -> list[str]:
    """The console passkeys bound to ``party`` (credential ids); with ``remove``, unbind them all and end the
    party's console sessions (a lost or stolen authenticator). Audited."""
    relay = open_relay(load_settings(data_dir), clock)
    try:
        console = relay.services.console
        assert console is not None  # noqa: S101 - open_relay always wires it
        return console.remove_passkeys(party, via="data") if remove else console.passkeys(party)
    finally:
        relay.close()


def retention_report(data_dir: Path, clock: Clock) -> RetentionReport:
    """The retention check of a relay's data directory, running or stopped. Reads only."""
    settings = load_settings(data_dir)
    engine = engine_for(settings)
    try:
        migrate.require_head(engine)
        sql = SqlStore(engine)
        keys = FileKeyStore(settings.key_dir, create=False)
        payloads = payload_store_for(settings, keys)
        return check_retention(sql, payloads, keys, clock, limits_for(settings), settings.epoch_length)
    finally:
        engine.dispose()


def audit_verify(
    data_dir: Path, clock: Clock, held: Sequence[Checkpoint] = (), relay_key: VerifyKey | None = None
) -> AuditReport:
    """``labrelay audit verify``: the chain, the signed head and anchor, and checkpoints clients hold. Reads only.
    ``relay_key``: the relay's key as published out of band (default: DATA_DIR/relay.pub, which whoever controls
    the data directory controls too)."""
    settings = load_settings(data_dir)
    engine = engine_for(settings)
    try:
        migrate.require_head(engine)
        sql = SqlStore(engine)
        key = relay_key or relay_verify_key(settings)
        return verify_audit(sql, key, held, now=clock.now(), activity=sql.activity())
    finally:
        engine.dispose()


def audit_export(data_dir: Path, after: int = 0) -> Iterator[dict[str, Any]]:
    """Every audit record after ``after``, as the NDJSON documents a SIEM receives."""
    settings = load_settings(data_dir)
    engine = engine_for(settings)
    try:
        for rec in SqlStore(engine).records(after):
            yield record_doc(rec)
    finally:
        engine.dispose()


def admin_direct(data_dir: Path, envelope: Mapping[str, Any], clock: Clock) -> CommandResult:
    """Run a signed admin command on the data directory itself, for when the API is down. Same checks, same
    audit events, same effect on the next request as through the API."""
    relay = open_relay(load_settings(data_dir), clock)
    try:
        return relay.services.control.execute(envelope, caller=None, via="data")
    finally:
        relay.close()


def audit_summary(data_dir: Path) -> dict[str, Any]:
    """Walk the audit chain of a relay's data directory (running or stopped): counts and the first bad record."""
    settings = load_settings(data_dir)
    engine = engine_for(settings)
    try:
        sql = SqlStore(engine)
        report = verify_chain(sql.records())
        counts = sql.count_events()
    finally:
        engine.dispose()
    return {
        "records": report.records,
        "chain_ok": report.ok,
        "head": report.head,
        "first_bad_seq": report.first_bad_seq,
        "problem": report.problem,
        "by_event": dict(sorted(counts.items())),
    }
