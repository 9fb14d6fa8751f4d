"""The sender's view of what it sent: each transfer's state, and its recipient's signed receipt or signed refusal,
each verified against the recipient's entry in the directory the sender trusts; and, on the relay's word alone (it
is trusted for availability, nothing more), a transfer the relay holds and why: one whose stored copy failed the
relay's integrity check is not deliverable, and its sender sends it again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labrelay.client.api import RelayClient
from labrelay.client.keystore import Party
from labrelay.client.trust import TrustedDirectory
from labrelay.crypto.envelopes import envelope_signer, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.delivery import BatchTally, delivery_outcome, tally
from labrelay.domain.parties import RECEIVING_ROLES
from labrelay.domain.timeutil import from_rfc3339, to_rfc3339
from labrelay.domain.transfers import MANIFEST_TYPE, RECEIPT_TYPE, REFUSAL_TYPE, Manifest, Receipt, TransferRefusal
from labrelay.errors import IntegrityError, LabrelayError
from labrelay.ports import Clock


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One transfer the sender sent: its manifest (verified under the sender's own key), the relay's state, and
    its recipient's verified receipt or refusal, if any."""

    manifest: Manifest
    state: str
    receipt: Receipt | None = None
    refusal: TransferRefusal | None = None
    held: str | None = None  # the relay's word: why it holds the transfer (admin, revoked, refused, corrupt)
    held_at: str | None = None

    @property
    def outcome(self) -> str:
        """What became of it (``labrelay.domain.delivery.OUTCOMES``), as the console counts it too."""
        return delivery_outcome(self.state, refused=self.refusal is not None, held=self.held is not None)

    def line(self) -> str:
        state = "held" if self.held is not None and self.receipt is None else self.state
        base = f"{self.manifest.transfer_id} → {self.manifest.recipient:12} {state:10}"
        parts = []
        if self.held == "corrupt":
            parts.append(
                f"NOT DELIVERABLE: the relay's stored copy failed its integrity check at {self.held_at} (altered or "
                "damaged in the relay's storage); the relay holds it and never serves it: send it again"
            )
        elif self.held is not None and self.refusal is None:
            parts.append(f"held by the relay since {self.held_at} ({HELD_WORDS.get(self.held, self.held)})")
        if self.receipt is not None:
            count = f", {self.receipt.record_count} records" if self.receipt.record_count is not None else ""
            copy = f", a copy of {self.receipt.duplicate_of} (declined)" if self.receipt.duplicate_of else ""
            parts.append(f"{self.receipt.status.value} at {to_rfc3339(self.receipt.received_at)}{count}{copy}")
        if self.refusal is not None:
            detail = f" ({self.refusal.detail})" if self.refusal.detail else ""
            parts.append(
                f"refused by {self.refusal.recipient} at {to_rfc3339(self.refusal.refused_at)}: "
                f"{self.refusal.reason}{detail}"
            )
        if not parts:
            return base + f" deadline {to_rfc3339(self.manifest.deadline)}"
        return base + " " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        receipt, refusal = self.receipt, self.refusal
        return {
            "transfer_id": self.manifest.transfer_id,
            "batch_id": self.manifest.batch_id,
            "recipient": self.manifest.recipient,
            "state": self.state,
            "deadline": to_rfc3339(self.manifest.deadline),
            "records": self.manifest.record_count,
            "unparsed": self.manifest.unparsed,
            "receipt": None
            if receipt is None
            else {
                "status": receipt.status.value,
                "at": to_rfc3339(receipt.received_at),
                "records": receipt.record_count,
                "duplicate_of": receipt.duplicate_of,
            },
            "refusal": None
            if refusal is None
            else {"reason": refusal.reason, "detail": refusal.detail, "at": to_rfc3339(refusal.refused_at)},
            "held": None if self.held is None else {"reason": self.held, "at": self.held_at},
        }


HELD_WORDS = {
    "admin": "quarantined by its administrator",
    "revoked": "its sender or recipient was revoked on the relay",
    "refused": "refused by its recipient",
    "corrupt": "its stored copy failed the relay's integrity check",
}


def _held(listing: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(reason, since) of the relay's hold on a transfer, as the relay says: a reason it does not document, or a
    malformed time, is shown as "unknown" (never the relay's own text, which reaches the sender's terminal)."""
    hold = listing.get("quarantine")
    if not isinstance(hold, Mapping):
        return None, None
    reason = hold.get("reason")
    reason = reason if isinstance(reason, str) and reason in HELD_WORDS else "unknown"
    try:
        at = to_rfc3339(from_rfc3339(str(hold.get("at"))))
    except ValueError:
        at = "an unknown time"
    return reason, at


def _recipients_key(
    directory: TrustedDirectory, envelope: Mapping[str, Any], manifest: Manifest, what: str
) -> VerifyKey:
    """The verifying key of the transfer's recipient, who alone may sign its receipt or refusal."""
    signer = envelope_signer(envelope)
    if signer != manifest.recipient:
        raise IntegrityError(f"{what} for {manifest.transfer_id} signed by {signer}, not its recipient")
    return VerifyKey.from_b64(directory.require(signer, RECEIVING_ROLES).signing_key)


def verified_outbox(party: Party, client: RelayClient, clock: Clock) -> tuple[list[OutboxItem], list[str]]:
    """(one item per transfer whose records verify, problems). A receipt or a refusal must verify under its
    recipient's directory entry and match the manifest; a transfer with any record that does not is a problem."""
    directory = TrustedDirectory(party.authority, client.directory(), clock.now())
    own = VerifyKey.from_b64(party.signing_public)
    items: list[OutboxItem] = []
    problems: list[str] = []
    for listing in client.transfers("outbox"):
        transfer_id = str(listing.get("transfer_id"))
        try:
            manifest = Manifest.from_payload(verify_envelope(listing["manifest"], MANIFEST_TYPE, own))
            receipt = refusal = None
            if listing.get("receipt"):
                envelope = listing["receipt"]
                key = _recipients_key(directory, envelope, manifest, "receipt")
                receipt = Receipt.from_payload(verify_envelope(envelope, RECEIPT_TYPE, key))
                receipt.check_against(manifest)
            if listing.get("refusal"):
                envelope = listing["refusal"]
                key = _recipients_key(directory, envelope, manifest, "refusal")
                refusal = TransferRefusal.from_payload(verify_envelope(envelope, REFUSAL_TYPE, key))
                refusal.check_against(manifest)
            held, held_at = _held(listing)
            items.append(OutboxItem(manifest, str(listing.get("state")), receipt, refusal, held, held_at))
        except LabrelayError as exc:
            problems.append(f"{transfer_id}: {exc.diagnostics()}")
    return items, problems


def batches_of(items: list[OutboxItem]) -> list[BatchTally]:
    """Per batch (the manifests' ``batch_id``: one ``send``), how many of its transfers were delivered, are waiting,
    were refused, expired, are held or failed; newest batch first. From verified items only."""
    return tally((i.manifest.batch_id, i.manifest.sender, i.manifest.created, i.outcome, 1) for i in items)


def in_batches(items: list[OutboxItem], prefix: str) -> list[OutboxItem]:
    """The items of the batches whose id begins with ``prefix`` (as ``fetch`` and ``receipts --batch`` print it)."""
    return [i for i in items if i.manifest.batch_id.startswith(prefix.lower())]
