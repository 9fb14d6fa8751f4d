"""The composition root: settings → storage adapters → services → the HTTP app.

This is the only module that knows which adapter implements which port. Everything above it (the CLI, and the
operator's commands in ``labrelay.operations``) asks it for a relay; everything below it receives what it needs as
arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy import Engine, create_engine

from labrelay.config import RelaySettings
from labrelay.crypto.keys import SigningKey, VerifyKey
from labrelay.domain.detection import parse_lock_on
from labrelay.domain.names import parse_networks
from labrelay.domain.transfers import TransferLimits
from labrelay.errors import OperationalError
from labrelay.http.app import create_app
from labrelay.http.edge import EdgeLimits
from labrelay.http.metrics import RelayMetrics
from labrelay.http.services import RelayServices
from labrelay.notify import sinks_from
from labrelay.ports import Clock, KeyStore, Leader, PayloadStore, TransferLocks, TransferRepository
from labrelay.relay.alerts import AlertDispatcher
from labrelay.relay.audit_check import AuditCheck
from labrelay.relay.auditor import Auditor
from labrelay.relay.auth import Authenticator
from labrelay.relay.console import SIGNIN_KEY_LABEL, ConsoleService
from labrelay.relay.control import ControlService
from labrelay.relay.delivery import DeliveryService
from labrelay.relay.detector import DetectionRules, Detector
from labrelay.relay.directory import DirectoryService
from labrelay.relay.monitoring import DeliveryMonitor, DeliveryStats, MonitorRules
from labrelay.relay.policies import PolicyService
from labrelay.relay.reaper import Reaper
from labrelay.relay.recovery import RecoveryService
from labrelay.relay.retention import RetentionCheck
from labrelay.relay.transfer_access import TransferAccess
from labrelay.relay.uploads import UploadService
from labrelay.relay.worker import AuditTail, Checkpointer, Job, Worker
from labrelay.storage import migrate
from labrelay.storage.files import LocalPayloadStore
from labrelay.storage.fs import FileLeader
from labrelay.storage.keystore import FileKeyStore
from labrelay.storage.sql.engine import Database, postgres_engine, sqlite_engine
from labrelay.storage.sql.leader import SqlLeader
from labrelay.storage.sql.locks import SqlTransferLocks, ThreadLocks
from labrelay.storage.sql.stores import SqlStores
from labrelay.storage.witness import FileWitness


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


def payload_store_for(settings: RelaySettings, keys: KeyStore, db: Database) -> PayloadStore:
    """The configured payload store. On S3 it keeps its chunk chain, headers and indexes in the relay's database
    ``db`` (decision 0021), and reads what was written before migration 0009 the legacy way."""
    if settings.payload_store == "s3":
        from labrelay.storage.s3 import (  # noqa: PLC0415 - boto3 only when configured
            LedgeredS3PayloadStore,
            s3_client,
        )
        from labrelay.storage.sql.payload_objects import SqlObjectLedger  # noqa: PLC0415 - with the S3 store

        client = s3_client(
            settings.s3_endpoint,
            settings.s3_region,
            os.environ.get("AWS_ACCESS_KEY_ID", ""),
            os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            timeout=S3_READ_TIMEOUT,
        )
        store: PayloadStore = LedgeredS3PayloadStore(
            client, settings.s3_bucket, keys, settings.epoch_length, SqlObjectLedger(db), settings.s3_prefix
        )
        return store
    return LocalPayloadStore(settings.payload_dir, keys, settings.epoch_length)


def locks_for(db: Database) -> TransferLocks:
    return SqlTransferLocks(db.engine) if db.postgres else ThreadLocks()


def leader_for(settings: RelaySettings, db: Database) -> Leader:
    return SqlLeader(db.engine) if db.postgres else FileLeader(settings.data_dir / "worker.lock")


@dataclass
class Relay:
    """A relay's parts, wired."""

    settings: RelaySettings
    sql: SqlStores
    payloads: PayloadStore
    keys: FileKeyStore
    services: RelayServices
    detector: Detector
    alerts: AlertDispatcher
    monitor: DeliveryMonitor

    def app(self) -> FastAPI:
        return create_app(self.services)

    def close(self) -> None:
        self.sql.db.dispose()


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
    sql = SqlStores.on(engine)
    keys = FileKeyStore(settings.key_dir)
    payloads = payload_store_for(settings, keys, sql.db)
    relay_key = relay_signing_key(settings, signed_before=sql.audit.checkpoint("head") is not None)
    auditor = Auditor(log=sql.audit, clock=clock, relay_key=relay_key)
    policies = PolicyService(repo=sql.policies, authority=authority, clock=clock, auditor=auditor)
    directory = DirectoryService(repo=sql.directory, authority=authority, clock=clock, auditor=auditor, keys=policies)
    window = settings.replay_window
    control = ControlService(
        store=sql.control, directory=directory, auditor=auditor, clock=clock, authority=authority, window=window
    )
    auth = Authenticator(
        directory=directory,
        nonces=sql.nonces,
        auditor=auditor,
        clock=clock,
        authority=authority,
        window=window,
        skew=settings.clock_skew,
        control=control,
    )
    access = TransferAccess(repo=sql.transfers, store=payloads, auditor=auditor, clock=clock, locks=locks_for(sql.db))
    uploads = UploadService(access, directory=directory, policies=policies, limits=limits_for(settings))
    recovery = RecoveryService(access)
    metrics = RelayMetrics()
    auditor.subscribe(metrics.on_audit)
    alerts = alerts_for(settings, alert_webhook)
    detector = Detector(rules=detection_rules(settings), auditor=auditor, control=control, alerts=alerts)
    monitor = delivery_monitoring(settings, sql, detector, metrics, clock)
    in_process = settings.background == "in-process"
    if in_process:  # otherwise the leading worker tails the shared log (labrelay worker)
        detector.load_history(sql.audit, clock.now())
        auditor.subscribe(detector)
        monitor.start()
        auditor.subscribe(monitor)
    console = console_for(settings, sql, directory, control, auditor, clock, payloads, keys, relay_key)
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
        reaper=Reaper(
            recovery=recovery, keys=keys, auditor=auditor, clock=clock, audit_retention=settings.audit_retention
        ),
        control=control,
        audit_log=sql.audit,
        metrics=metrics,
        detector=detector if in_process else None,
        monitor=monitor if in_process else None,
        alerts=alerts,
        background=in_process,
        metrics_access=settings.metrics,
        reaper_interval=settings.reaper_interval.total_seconds(),
        max_chunk_bytes=settings.max_chunk_bytes,
        public_url=settings.public_url or None,
        edge=edge_limits(settings),
    )
    return Relay(
        settings=settings,
        sql=sql,
        payloads=payloads,
        keys=keys,
        services=services,
        detector=detector,
        alerts=alerts,
        monitor=monitor,
    )


def console_for(
    settings: RelaySettings,
    sql: SqlStores,
    directory: DirectoryService,
    control: ControlService,
    auditor: Auditor,
    clock: Clock,
    payloads: PayloadStore,
    keys: KeyStore,
    relay_key: SigningKey,
) -> ConsoleService:
    """The web console's service on the relay's stores (docs/web.md)."""
    return ConsoleService(
        store=sql.console,
        transfers=sql.transfers,
        audit_log=sql.audit,
        directory=directory,
        control=control,
        auditor=auditor,
        clock=clock,
        retention=retention_check_for(settings, sql.transfers, payloads, keys, clock),
        audit_check=AuditCheck(log=sql.audit, relay_key=auditor.relay_public, clock=clock),
        session_ttl=settings.console_session_ttl,
        # Every replica holds the relay's key, so every replica opens the sign-in challenges any other sealed.
        signin_key=relay_key.derive_secret(SIGNIN_KEY_LABEL),
        signin_limit=settings.console_signin_limit,
    )


def delivery_monitoring(
    settings: RelaySettings, sql: SqlStores, detector: Detector, metrics: RelayMetrics, clock: Clock
) -> DeliveryMonitor:
    """The delivery monitor (its alerts raised through ``detector``), and the backlog gauges on ``metrics``."""
    metrics.watch_backlog(DeliveryStats(transfers=sql.transfers, directory=sql.directory, clock=clock).snapshot)
    return DeliveryMonitor(
        MonitorRules(no_fetch_after=settings.alert_no_fetch_after, cooldown=settings.alert_cooldown),
        transfers=sql.transfers,
        audit_log=sql.audit,
        alerts=detector,
        clock=clock,
    )


def retention_check_for(
    settings: RelaySettings, transfers: TransferRepository, payloads: PayloadStore, keys: KeyStore, clock: Clock
) -> RetentionCheck:
    return RetentionCheck(
        transfers=transfers,
        payloads=payloads,
        keys=keys,
        clock=clock,
        limits=limits_for(settings),
        epoch_length=settings.epoch_length,
    )


def alerts_for(settings: RelaySettings, alert_webhook: str = "") -> AlertDispatcher:
    """The alert sinks of the settings (``alert_webhook``, when given, in place of the configured webhook)."""
    return AlertDispatcher(
        sinks_from(
            alert_webhook or settings.alert_webhook,
            settings.alert_smtp,
            settings.alert_email_from,
            settings.alert_email_to,
            settings.alert_syslog,
        )
    )


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


def worker_for(relay: Relay, clock: Clock, *, tick: float) -> Worker:
    """``labrelay worker``'s jobs on ``relay``: the reaper, detection and the delivery monitor over the shared audit
    log, the checkpointer (its witness: the checkpoints file of the settings) and nonce pruning, run by whichever
    worker leads."""
    settings, services = relay.settings, relay.services
    witness = FileWitness(settings.witness_path, settings.public_url or f"labrelay:{settings.data_dir}")
    tail = AuditTail(audit_log=relay.sql.audit, detector=relay.detector, clock=clock, also=[relay.monitor])
    checkpointer = Checkpointer(audit_log=relay.sql.audit, alerts=relay.alerts, clock=clock, witness=witness)
    jobs = [
        Job("detector", 1.0, tail.run, tail.start),
        Job("reaper", settings.reaper_interval.total_seconds(), services.reaper.run_once),
        # after the tail has fed it the reaper's expiries; its no-fetch check is one aggregate query
        Job("monitor", settings.reaper_interval.total_seconds(), relay.monitor.run, relay.monitor.start),
        Job("checkpointer", settings.checkpoint_interval.total_seconds(), checkpointer.run, checkpointer.start),
        Job("nonces", 60.0, services.auth.prune_nonces),
    ]
    return Worker(leader=leader_for(settings, relay.sql.db), jobs=jobs, auditor=services.auditor, tick=tick)
