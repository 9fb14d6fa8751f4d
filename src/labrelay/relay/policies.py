"""Routing policies on the relay: registered by the directory authority, named by manifests.

The relay refuses a policy the pinned authority did not sign, and one that ``parse_policy`` refuses (it gives
nothing, or everything to everyone, or is malformed). It refuses a manifest that names a policy version it does not
hold. Clients verify the policy again against their own pinned authority key before routing anything.

A manifest that names no policy (a document sent unparsed, ``send --as-is``) carries every field it holds: the relay
accepts it only for a recipient the policy in force lets receive unparsed documents, and refuses it when no policy
is registered at all (fail closed). The lab's client checks the same before sealing anything.
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

    def current(self) -> Policy | None:
        """The policy in force (the most recently registered), verified again against the authority's key."""
        envelope = self._repo.policy(None)
        if envelope is None:
            return None
        return policy_from_payload(verify_envelope(envelope, POLICY_TYPE, self._authority, error=UntrustedEntry))

    def unparsed_refusal(self, recipient: str) -> str | None:
        """Why ``recipient`` may not be sent a document unparsed now, or None if the policy in force allows it."""
        policy = self.current()
        if policy is None:
            return f"no routing policy is registered: nothing allows {recipient} to receive unparsed documents"
        return policy.unparsed_refusal(recipient)
