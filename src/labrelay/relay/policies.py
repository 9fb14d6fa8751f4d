"""Routing policies on the relay: registered by the directory authority, named by manifests.

The relay refuses a policy the pinned authority did not sign, and one that ``parse_policy`` refuses (it gives
nothing, or everything to everyone, or is malformed). It refuses a manifest that names a policy version it does not
hold. Clients verify the policy again against their own pinned authority key before routing anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labrelay.crypto.envelopes import signed_parts, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import AuditEvent
from labrelay.domain.policy import POLICY_TYPE, Policy, policy_from_payload
from labrelay.errors import NotFound, UntrustedEntry
from labrelay.ports import Clock, PolicyRepository
from labrelay.relay.auditor import Auditor


class PolicyService:
    def __init__(self, repo: PolicyRepository, authority: VerifyKey, clock: Clock, auditor: Auditor) -> None:
        self._repo = repo
        self._authority = authority
        self._clock = clock
        self._audit = auditor

    def register(self, envelope: Mapping[str, Any], actor: str) -> tuple[Policy, bool]:
        payload = verify_envelope(envelope, POLICY_TYPE, self._authority, error=UntrustedEntry)
        policy = policy_from_payload(payload)
        added = self._repo.add_policy(policy.version, signed_parts(envelope), self._clock.now())
        self._audit.record(AuditEvent.POLICY_REGISTER, actor=actor, version=policy.version, new=added)
        return policy, added

    def envelope(self, actor: str, version: str | None = None) -> Mapping[str, Any]:
        found = self._repo.policy(version)
        if found is None:
            raise NotFound(
                "no such routing policy" if version else "no routing policy registered",
                hint="the authority publishes one: labrelay authority publish-policy",
            )
        self._audit.record(AuditEvent.POLICY_READ, actor=actor, version=version)
        return found

    def known(self, version: str) -> bool:
        return self._repo.policy(version) is not None
