"""Routing policies on the relay: registered by the directory authority, named by manifests.

The relay refuses a policy the pinned authority did not sign, and one that ``parse_policy`` refuses (it gives
nothing, or everything to everyone, or is malformed). It refuses a manifest that names a policy version it does not
hold. Clients verify the policy again against their own pinned authority key before routing anything.

Policies are ordered by the issue number the authority signs into each (docs/threat-model.md, T30): the policy in
force is the one with the highest issue, as long as it is within its validity and its version was not withdrawn.
The relay refuses to register a policy older than the newest it holds, an expired one and a withdrawn version; it
refuses (``permission-denied``, audited as ``transfer:refuse``) a new transfer whose manifest names any policy but
the one in force: superseded, withdrawn or expired. A transfer it accepted before keeps going (its sender's retry
of the same manifest is answered as before): the check is made when a transfer is created.

A manifest that names no policy (a document sent unparsed, ``send --as-is``) carries every field it holds: the relay
accepts it only for a recipient the policy in force lets receive unparsed documents, and refuses it when no policy
is in force at all (fail closed). The lab's client checks the same before sealing anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labrelay.crypto.envelopes import signed_parts, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.audit import AuditEvent, Outcome
from labrelay.domain.policy import (
    POLICY_TYPE,
    WITHDRAWAL_TYPE,
    Policy,
    PolicyWithdrawal,
    SignedPolicy,
    signed_policy_from_payload,
)
from labrelay.domain.timeutil import to_rfc3339
from labrelay.errors import Conflict, IntegrityError, LabrelayError, NotFound, PermissionDenied, UntrustedEntry
from labrelay.ports import Clock, PolicyRepository
from labrelay.relay.auditor import Auditor

ROUTE_AGAIN = "the lab's client fetches the policy in force and routes the batch again under it (labrelay send)"


class PolicyService:
    def __init__(self, repo: PolicyRepository, authority: VerifyKey, clock: Clock, auditor: Auditor) -> None:
        self._repo = repo
        self._authority = authority
        self._clock = clock
        self._audit = auditor

    def _verified(self, envelope: Mapping[str, Any]) -> SignedPolicy:
        return signed_policy_from_payload(verify_envelope(envelope, POLICY_TYPE, self._authority, error=UntrustedEntry))

    def register(self, envelope: Mapping[str, Any], actor: str) -> tuple[Policy, bool]:
        try:
            signed = self._verified(envelope)
            self._check_new(signed, envelope)
            added = self._repo.add_policy(
                signed.version,
                signed_parts(envelope),
                self._clock.now(),
                issue=signed.issue,
                not_after=signed.not_after,
            )
        except LabrelayError as exc:
            self._audit.record(AuditEvent.POLICY_REFUSE, outcome=Outcome.REFUSED, actor=actor, reason=exc.code)
            raise
        self._audit.record(
            AuditEvent.POLICY_REGISTER, actor=actor, version=signed.version, issue=signed.issue, new=added
        )
        return signed.policy, added

    def _check_new(self, signed: SignedPolicy, envelope: Mapping[str, Any]) -> None:
        """Refuse a policy that must not be registered: expired, withdrawn, older than the newest held, or another
        text under a version held. The exact envelope held already is not refused (a retry)."""
        held = self._repo.policy(signed.version)
        if held is not None and dict(held) == signed_parts(envelope):
            return
        now = self._clock.now()
        if signed.expired(now):
            raise UntrustedEntry(f"routing policy {signed.label} expired at {to_rfc3339(signed.not_after)}")
        withdrawal = self._withdrawal(signed.version)
        if withdrawal is not None:
            raise Conflict(
                f"routing policy {signed.version} was withdrawn by the authority ({withdrawal.reason})",
                hint="publish these rules under a new version",
            )
        latest = self.latest()
        if latest is not None and signed.issue <= latest.issue:
            raise Conflict(
                f"routing policy {signed.label} is not newer than {latest.label}, which this relay holds",
                hint="the authority signs a newer issue: labrelay authority publish-policy",
            )
        if held is not None and _text_of(held) != signed.text:
            raise Conflict(
                f"policy version {signed.version} is already registered with other content",
                hint="a version names one text: publish the new rules under a new version",
            )

    def withdraw(self, envelope: Mapping[str, Any], actor: str) -> tuple[PolicyWithdrawal, bool]:
        """Register an authority-signed withdrawal: its version is never in force again."""
        payload = verify_envelope(envelope, WITHDRAWAL_TYPE, self._authority, error=UntrustedEntry)
        withdrawal = PolicyWithdrawal.from_payload(payload)
        added = self._repo.add_policy_withdrawal(withdrawal, signed_parts(envelope), self._clock.now())
        self._audit.record(
            AuditEvent.POLICY_WITHDRAW, actor=actor, version=withdrawal.version, serial=withdrawal.serial, new=added
        )
        return withdrawal, added

    def withdrawals(self, actor: str) -> list[Mapping[str, Any]]:
        """Every withdrawal envelope, verbatim: clients verify them against their pin."""
        self._audit.record(AuditEvent.POLICY_READ, actor=actor, version="withdrawals")
        return [envelope for _, envelope in self._repo.policy_withdrawals()]

    def _withdrawal(self, version: str) -> PolicyWithdrawal | None:
        return next((w for w, _ in self._repo.policy_withdrawals() if w.version == version), None)

    def envelope(self, actor: str, version: str | None = None) -> Mapping[str, Any]:
        found = self._repo.policy(version)
        if found is None:
            raise NotFound(
                "no such routing policy" if version else "no routing policy registered",
                hint="the authority publishes one: labrelay authority publish-policy",
            )
        self._audit.record(AuditEvent.POLICY_READ, actor=actor, version=version)
        return found

    def latest(self) -> SignedPolicy | None:
        """The policy with the highest issue, verified again against the authority's key (in force or not)."""
        envelope = self._repo.policy(None)
        return None if envelope is None else self._verified(envelope)

    def in_force_refusal(self, latest: SignedPolicy | None) -> str | None:
        """Why no policy is in force now (none registered, the latest withdrawn or expired), or None."""
        if latest is None:
            return "no routing policy is registered"
        withdrawal = self._withdrawal(latest.version)
        if withdrawal is not None:
            return f"routing policy {latest.version} was withdrawn by the authority ({withdrawal.reason})"
        if latest.expired(self._clock.now()):
            return f"routing policy {latest.label} expired at {to_rfc3339(latest.not_after)}"
        return None

    def check_manifest(self, version: str) -> None:
        """Refuse a new transfer routed under ``version`` unless it is the policy in force: unknown (the authority
        did not sign it, T13), superseded by a newer issue, withdrawn or expired (T30)."""
        held = self._repo.policy(version)
        if held is None:
            raise IntegrityError(
                f"the manifest names routing policy {version!r}, which this relay does not hold (unsigned or unknown)"
            )
        withdrawal = self._withdrawal(version)
        latest = self.latest()
        why = (
            f"it was withdrawn by the authority ({withdrawal.reason})"
            if withdrawal is not None
            else self.in_force_refusal(latest)
        )
        if why is None and latest is not None and latest.version != version:
            why = f"it was superseded by {latest.label}"
        if why is not None:
            raise PermissionDenied(f"the manifest names routing policy {version}: {why}", hint=ROUTE_AGAIN)

    def classic_refusal(self, party: str, age_recipient: str) -> str | None:
        """Why ``party``'s age key may not be enrolled or sealed to now: the newest policy (in force or not: fail
        closed) requires post-quantum recipients and the key is classic. None if it may."""
        latest = self.latest()
        return None if latest is None else latest.policy.classic_refusal(party, age_recipient)

    def unparsed_refusal(self, recipient: str) -> str | None:
        """Why ``recipient`` may not be sent a document unparsed now, or None if the policy in force allows it."""
        latest = self.latest()
        why = self.in_force_refusal(latest)
        if why is not None or latest is None:
            return f"{why}: nothing allows {recipient} to receive unparsed documents"
        return latest.policy.unparsed_refusal(recipient)


def _text_of(envelope: Mapping[str, Any]) -> object:
    """The policy text an envelope the relay stored carries (one signed before issue numbers included)."""
    payload = envelope.get("payload")
    return payload.get("toml") if isinstance(payload, Mapping) else None
