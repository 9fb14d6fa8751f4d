"""The sender's view of what it sent: each transfer's state and its recipient's signed receipt, verified."""

from __future__ import annotations

from dataclasses import dataclass

from labrelay.client.api import RelayClient
from labrelay.client.keystore import Party
from labrelay.client.trust import TrustedDirectory
from labrelay.crypto.envelopes import envelope_signer, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.parties import RECEIVING_ROLES
from labrelay.domain.timeutil import to_rfc3339
from labrelay.domain.transfers import MANIFEST_TYPE, RECEIPT_TYPE, Manifest, Receipt
from labrelay.errors import IntegrityError, LabrelayError
from labrelay.ports import Clock


@dataclass(frozen=True, slots=True)
class OutboxItem:
    manifest: Manifest
    state: str
    receipt: Receipt | None

    def line(self) -> str:
        base = f"{self.manifest.transfer_id} → {self.manifest.recipient:12} {self.state:10}"
        if self.receipt is None:
            return base + f" deadline {to_rfc3339(self.manifest.deadline)}"
        count = f", {self.receipt.record_count} records" if self.receipt.record_count is not None else ""
        return base + f" {self.receipt.status.value} at {to_rfc3339(self.receipt.received_at)}{count}"


def verified_outbox(party: Party, client: RelayClient, clock: Clock) -> tuple[list[str], list[str]]:
    """(one line per transfer, problems). A receipt must verify under its recipient's directory entry."""
    directory = TrustedDirectory(party.authority, client.directory(), clock.now())
    own = VerifyKey.from_b64(party.signing_public)
    rows: list[str] = []
    problems: list[str] = []
    for listing in client.transfers("outbox"):
        transfer_id = str(listing.get("transfer_id"))
        try:
            manifest = Manifest.from_payload(verify_envelope(listing["manifest"], MANIFEST_TYPE, own))
            receipt = None
            if listing.get("receipt"):
                envelope = listing["receipt"]
                signer = envelope_signer(envelope)
                if signer != manifest.recipient:
                    raise IntegrityError(f"receipt for {transfer_id} signed by {signer}, not its recipient")
                entry = directory.require(signer, RECEIVING_ROLES)
                receipt = Receipt.from_payload(
                    verify_envelope(envelope, RECEIPT_TYPE, VerifyKey.from_b64(entry.signing_key))
                )
                if not receipt.matches(manifest):
                    raise IntegrityError(f"receipt for {transfer_id} does not match its manifest")
            rows.append(OutboxItem(manifest, str(listing.get("state")), receipt).line())
        except LabrelayError as exc:
            problems.append(f"{transfer_id}: {exc.diagnostics()}")
    return rows, problems
