"""The reaper: what makes over-retention impossible rather than merely forbidden.

One pass, run when the relay starts and then every ``reaper_interval``:
1. transfers past their deadline and not delivered are closed (``expired``) and their bytes deleted;
2. bytes a crash left behind (of a transfer that is over, or of no transfer at all) are deleted;
3. epoch keys whose epoch has ended are destroyed, and temporary key files a crash left are shredded;
4. audit records older than the log's retention are pruned (the chain then starts at a signed anchor).
Every deletion and destruction is an audit event, with whether it was verified. Each step is idempotent and
ordered so that a crash at any point leaves a state the next pass finishes: a transfer is marked expired
before its bytes go, and nothing ever needs the reaper for *serving* to stop (deadlines are checked at read
time; a destroyed key makes any bytes that survive unreadable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from labrelay.domain.audit import AuditEvent
from labrelay.domain.retention import key_due_for_destruction
from labrelay.ports import Clock, KeyStore
from labrelay.relay.auditor import Auditor
from labrelay.relay.recovery import RecoveryService


@dataclass(frozen=True)
class ReapResult:
    expired: int = 0
    repaired: int = 0
    keys_destroyed: list[int] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    audit_pruned: int = 0

    @property
    def did_something(self) -> bool:
        return bool(self.expired or self.repaired or self.keys_destroyed or self.leftovers or self.audit_pruned)


class Reaper:
    def __init__(
        self,
        recovery: RecoveryService,
        keys: KeyStore,
        auditor: Auditor,
        clock: Clock,
        audit_retention: timedelta = timedelta(days=365),
    ) -> None:
        self._audit_retention = audit_retention
        self._recovery = recovery
        self._keys = keys
        self._audit = auditor
        self._clock = clock

    def run_once(self) -> ReapResult:
        expired = self._recovery.expire_due()
        repaired = self._recovery.recover()
        destroyed = []
        for epoch in self._keys.epochs():
            if key_due_for_destruction(epoch, self._clock.now()):
                gone = self._keys.destroy(epoch)
                self._audit.record(AuditEvent.EPOCH_KEY_DESTROY, epoch=epoch, verified=gone)
                destroyed.append(epoch)
        leftovers = self._keys.remove_leftovers()
        pruned = self._audit.prune_before(self._clock.now() - self._audit_retention)
        if pruned:
            self._audit.record(AuditEvent.AUDIT_PRUNE, pruned=pruned)
        result = ReapResult(expired, repaired, destroyed, leftovers, pruned)
        if result.did_something:
            self._audit.record(
                AuditEvent.REAPER_RUN,
                expired=expired,
                repaired=repaired,
                keys_destroyed=len(destroyed),
                leftovers=len(leftovers),
            )
        return result
