"""What the relay's HTTP edge is given: its services and settings, built by the composition root (``runtime``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from labrelay.crypto.envelopes import MAX_ENVELOPE_BYTES
from labrelay.http.edge import EdgeLimits
from labrelay.http.metrics import RelayMetrics
from labrelay.ports import AuditLog, Clock
from labrelay.relay.alerts import AlertDispatcher
from labrelay.relay.auditor import Auditor
from labrelay.relay.auth import Authenticator
from labrelay.relay.console import ConsoleService
from labrelay.relay.control import ControlService
from labrelay.relay.delivery import DeliveryService
from labrelay.relay.detector import Detector
from labrelay.relay.directory import DirectoryService
from labrelay.relay.monitoring import DeliveryMonitor
from labrelay.relay.policies import PolicyService
from labrelay.relay.reaper import Reaper
from labrelay.relay.recovery import RecoveryService
from labrelay.relay.uploads import UploadService


@dataclass(frozen=True)
class RelayServices:
    """Everything the HTTP edge needs, built by the composition root."""

    auth: Authenticator
    directory: DirectoryService
    uploads: UploadService
    delivery: DeliveryService
    recovery: RecoveryService
    """Expiry and repair: the reaper's work on transfers (the reaper holds it; tests call it directly)."""
    policies: PolicyService
    auditor: Auditor
    clock: Clock
    reaper: Reaper
    control: ControlService
    audit_log: AuditLog
    metrics: RelayMetrics
    detector: Detector | None = None
    monitor: DeliveryMonitor | None = None
    """The delivery monitor (undelivered, no-fetch), when this process runs the background (the embedded default)."""
    alerts: AlertDispatcher | None = None
    console: ConsoleService | None = None
    """The web console (passkeys, sessions, the pages' metadata); None: no console, the API alone."""
    metrics_access: str = "loopback"
    reaper_interval: float = 60.0
    max_json_bytes: int = MAX_ENVELOPE_BYTES
    max_chunk_bytes: int = 64 * 1024 * 1024
    public_url: str | None = None
    background: bool = True
    """Run the reaper in this process (the embedded default); False when ``labrelay worker`` runs it."""
    edge: EdgeLimits = field(default_factory=EdgeLimits)
    """Connection, header, body and upload limits (labrelay.http.edge)."""
