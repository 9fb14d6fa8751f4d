"""The routing policy as a lab uses it: fetched from the relay, verified against the pinned authority key.

The relay is not trusted for the policy (docs/threat-model.md, T13 and T30). Besides the signature, the lab checks
that the policy is within its validity and that its version was not withdrawn (every withdrawal the relay serves
must verify too), and it keeps, in ``DIR/NAME/policies.json`` (0600, written atomically), the newest policy issue it
verified under each authority key, with every withdrawn version it saw: a relay that serves an older policy than
one the lab already verified (a looser one the authority signed before) is refused, as is a withdrawn one whose
withdrawal the relay no longer serves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from labrelay.client.api import RelayClient
from labrelay.crypto.envelopes import verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.parties import PartyEntry
from labrelay.domain.policy import (
    POLICY_TYPE,
    WITHDRAWAL_TYPE,
    Policy,
    PolicyWithdrawal,
    SignedPolicy,
    signed_policy_from_payload,
)
from labrelay.domain.timeutil import from_rfc3339, to_rfc3339
from labrelay.domain.transfers import CLOCK_SKEW, Manifest
from labrelay.errors import ClassicKeyRefused, IntegrityError, NotFound, UntrustedEntry, UsageError
from labrelay.jsonfile import read_json, write_json_atomic

POLICIES_FILE = "policies.json"


def default_policy_text() -> str:
    """The policy shipped with labrelay (labrelay/data/default-policy.toml), for the authority to sign."""
    return resources.files("labrelay.data").joinpath("default-policy.toml").read_text(encoding="utf-8")


def verified_signed_policy(envelope: Mapping[str, Any], authority: VerifyKey) -> SignedPolicy:
    """The policy with its issue and validity, if the pinned authority signed it; refused otherwise."""
    return signed_policy_from_payload(verify_envelope(envelope, POLICY_TYPE, authority, error=UntrustedEntry))


def verified_policy(envelope: Mapping[str, Any], authority: VerifyKey) -> Policy:
    """The policy, if the pinned authority signed it; an unsigned or foreign-signed policy is refused."""
    return verified_signed_policy(envelope, authority).policy


def verified_withdrawals(envelopes: Sequence[Any], authority: VerifyKey) -> list[PolicyWithdrawal]:
    """Every withdrawal the relay served, each verified: one that does not verify is refused, not skipped (a relay
    that serves a forged one is lying about the policies; nothing is routed on its word)."""
    out = []
    for envelope in envelopes:
        try:
            payload = verify_envelope(envelope, WITHDRAWAL_TYPE, authority, error=UntrustedEntry)
            out.append(PolicyWithdrawal.from_payload(payload))
        except UntrustedEntry as exc:
            raise UntrustedEntry(
                f"the relay served a policy withdrawal the pinned authority did not sign ({exc.message}); "
                "refusing to route"
            ) from None
    return out


@dataclass
class KeptPolicy:
    """The newest policy issue a party verified under one authority key, and the versions it saw withdrawn."""

    issue: int = 0
    version: str = ""
    sha256: str = ""
    issued_at: str = ""
    not_after: str = ""
    withdrawn: dict[str, str] = field(default_factory=dict)  # version → the authority's reason

    @property
    def label(self) -> str:
        return f"{self.version} (issue {self.issue})"


class PolicyBook:
    """``DIR/NAME/policies.json``: per authority key, the newest policy verified and the withdrawals seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._kept: dict[str, KeptPolicy] = {}
        if path.exists():
            try:
                doc = read_json(path)
                for key, raw in dict(doc.get("authorities", {})).items():
                    self._kept[str(key)] = KeptPolicy(
                        issue=int(raw["issue"]),
                        version=str(raw["version"]),
                        sha256=str(raw["sha256"]),
                        issued_at=str(raw.get("issued_at", "")),
                        not_after=str(raw.get("not_after", "")),
                        withdrawn={str(k): str(v) for k, v in dict(raw.get("withdrawn", {})).items()},
                    )
            except (KeyError, TypeError, ValueError) as exc:
                raise IntegrityError(
                    f"{path}: unreadable record of the routing policies this party verified ({exc})",
                    hint="it keeps the newest policy verified; restore it from a backup rather than delete it",
                ) from None

    def kept(self, authority: VerifyKey) -> KeptPolicy | None:
        return self._kept.get(authority.b64)

    def admit(
        self, authority: VerifyKey, signed: SignedPolicy, withdrawals: Sequence[PolicyWithdrawal], now: datetime
    ) -> None:
        """Refuse ``signed`` (verified under ``authority``) unless it may be routed under now: not withdrawn (now or
        ever seen so), within its validity, and not older than the newest policy verified before. Keeps it if it is
        newer, and the withdrawals, on disk before returning."""
        kept = self._kept.get(authority.b64) or KeptPolicy()
        before = (kept.issue, kept.sha256, dict(kept.withdrawn))
        for withdrawal in withdrawals:
            kept.withdrawn.setdefault(withdrawal.version, withdrawal.reason)
        self._kept[authority.b64] = kept
        try:
            if signed.version in kept.withdrawn:
                raise UntrustedEntry(
                    f"routing policy {signed.label} was withdrawn by the authority ({kept.withdrawn[signed.version]}); "
                    "refusing to route under it",
                    hint="the authority publishes the policy in force: labrelay authority publish-policy",
                )
            if signed.expired(now):
                raise UntrustedEntry(
                    f"routing policy {signed.label} expired at {to_rfc3339(signed.not_after)}; refusing to route "
                    "under it",
                    hint="the authority publishes a new one: labrelay authority publish-policy",
                )
            if signed.issue < kept.issue:
                raise UntrustedEntry(
                    f"the relay served routing policy {signed.label}, older than {kept.label}, which this party "
                    "already verified: refusing to route under it (a rollback)",
                    hint=f"the newest policy verified is kept in {self.path}",
                )
            if signed.issue == kept.issue and (signed.version, signed.text_sha256) != (kept.version, kept.sha256):
                raise UntrustedEntry(
                    f"the relay served routing policy {signed.label}, another text than {kept.label}, which this "
                    "party already verified under the same issue number: refusing to route under it"
                )
            if signed.issue > kept.issue:
                kept.issue, kept.version, kept.sha256 = signed.issue, signed.version, signed.text_sha256
                kept.issued_at, kept.not_after = to_rfc3339(signed.issued_at), to_rfc3339(signed.not_after)
        finally:
            if (kept.issue, kept.sha256, kept.withdrawn) != before:
                self.save()

    def note(self, authority: VerifyKey, signed: SignedPolicy) -> None:
        """Keep ``signed`` (verified under ``authority``) if it is newer than the issue kept: a recipient's record
        of the newest policy it saw, without the checks a lab routes under (``admit``)."""
        kept = self._kept.get(authority.b64) or KeptPolicy()
        if signed.issue > kept.issue:
            kept.issue, kept.version, kept.sha256 = signed.issue, signed.version, signed.text_sha256
            kept.issued_at, kept.not_after = to_rfc3339(signed.issued_at), to_rfc3339(signed.not_after)
            self._kept[authority.b64] = kept
            self.save()

    def save(self) -> None:
        doc = {
            "authorities": {
                key: {
                    "issue": k.issue,
                    "version": k.version,
                    "sha256": k.sha256,
                    "issued_at": k.issued_at,
                    "not_after": k.not_after,
                    "withdrawn": dict(sorted(k.withdrawn.items())),
                }
                for key, k in sorted(self._kept.items())
            }
        }
        write_json_atomic(self.path, doc)


def current_policy(client: RelayClient, authority: VerifyKey, party_dir: Path, now: datetime) -> Policy:
    """The policy in force, as the relay serves it, once verified against the pinned ``authority``: signed by it,
    within its validity, its version not withdrawn, and not older than the newest this party verified before
    (kept in ``party_dir/policies.json``)."""
    signed = verified_signed_policy(client.policy(), authority)
    withdrawals = verified_withdrawals(client.policy_withdrawals(), authority)
    PolicyBook(party_dir / POLICIES_FILE).admit(authority, signed, withdrawals, now)
    return signed.policy


def recipient_policy(client: RelayClient, authority: VerifyKey, party_dir: Path) -> SignedPolicy | None:
    """The newest routing policy the relay holds, as a recipient uses it (for ``require_pq``): signed by the pinned
    ``authority`` and not older than one this party verified before, which it keeps in ``policies.json``; None when
    the relay holds none and this party never verified one. Its validity and withdrawal are not checked: what the
    relay accepted under it before may still be fetched."""
    book = PolicyBook(party_dir / POLICIES_FILE)
    kept = book.kept(authority)
    try:
        envelope = client.policy()
    except NotFound:
        if kept is None or not kept.issue:
            return None
        raise UntrustedEntry(
            f"the relay serves no routing policy, but this party verified {kept.label} before: refusing to fetch "
            "under no policy"
        ) from None
    signed = verified_signed_policy(envelope, authority)
    if kept is not None and signed.issue < kept.issue:
        raise UntrustedEntry(
            f"the relay served routing policy {signed.label}, older than {kept.label}, which this party already "
            "verified: refusing it (a rollback)"
        )
    book.note(authority, signed)
    return signed


def classic_payload_refusal(policy: SignedPolicy, party: str, manifest: Manifest) -> str | None:
    """Why a payload offered to ``party`` must not be opened under ``policy``: it requires post-quantum recipients,
    the payload is sealed to a classic key, and it was created once that policy was issued (give or take the clock
    skew allowed between parties). A payload created before (sealed to a key kept after a rotation) is opened:
    refusing it would lose results and protect nothing, its ciphertext being on the relay already."""
    if policy.policy.classic_refusal(party, manifest.recipient_key) is None:
        return None
    if manifest.created <= policy.issued_at + CLOCK_SKEW:  # the lab's clock and the authority's may differ
        return None
    return f"sealed to a classic (X25519) age key after policy {policy.label} required post-quantum recipients"


def relay_policy_issue(client: RelayClient, authority: VerifyKey) -> int:
    """The issue of the newest policy the relay holds that verifies under ``authority`` (0: none), so that the
    authority numbers the next one after it even when its own ``issued.jsonl`` does not go that far."""
    try:
        return verified_signed_policy(client.policy(), authority).issue
    except (NotFound, UntrustedEntry, UsageError):
        return 0


def no_longer_in_force(
    client: RelayClient, authority: VerifyKey, party_dir: Path, now: datetime, version: str
) -> str | None:
    """After the relay refused a batch routed under ``version``: why that policy routes nothing any more, from what
    this party verified itself (not on the relay's word) — its version withdrawn by the authority, superseded by a
    newer issue, or past its end; None if it is still the newest this party knows (the refusal was about something
    else, and the batch is kept)."""
    book = PolicyBook(party_dir / POLICIES_FILE)
    signed = verified_signed_policy(client.policy(), authority)
    withdrawals = verified_withdrawals(client.policy_withdrawals(), authority)
    with contextlib.suppress(UntrustedEntry):  # a refused policy teaches nothing; its withdrawals are kept
        book.admit(authority, signed, withdrawals, now)
    kept = book.kept(authority)
    if kept is None:
        return None
    if version in kept.withdrawn:
        return f"routing policy {version} was withdrawn by the authority ({kept.withdrawn[version]})"
    if kept.version != version:
        return f"routing policy {version} was superseded by {kept.label}"
    if kept.not_after and from_rfc3339(kept.not_after) <= now:
        return f"routing policy {kept.label} expired at {kept.not_after}"
    return None


def refuse_classic_keys(policy: Policy, entries: Iterable[PartyEntry], doing: str) -> None:
    """Refuse, before anything is sealed or opened, every classic age key among ``entries`` when ``policy`` requires
    post-quantum recipients (``require_pq``): one line naming them all (docs/threat-model.md, T43)."""
    classic = sorted({e.name for e in entries if policy.classic_refusal(e.name, e.age_recipient) is not None})
    if classic:
        raise ClassicKeyRefused(
            f"policy {policy.version} requires post-quantum recipients and the age key of {', '.join(classic)} is "
            f"classic (X25519): refusing to {doing}",
            hint="each of them moves to a hybrid key with: labrelay party rotate --pq",
        )
