"""A relay on real storage (SQLite in WAL mode, a payload directory) with a manual clock, and members enrolled in
its directory: what the unit tests of the relay's use cases drive (the ``setup`` fixture, tests/unit/conftest.py)."""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from labrelay.client.policy import default_policy_text
from labrelay.clock import ManualClock
from labrelay.config import RelaySettings
from labrelay.crypto import age_stream
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.httpsig import HeaderLines, RequestView, sign_request
from labrelay.crypto.keys import AgeIdentity, SigningKey
from labrelay.domain.names import AUTHORITY_KEYID, new_id
from labrelay.domain.parties import PartyEntry, Revocation, Role
from labrelay.domain.policy import DEFAULT_POLICY_VALIDITY, policy_payload
from labrelay.domain.transfers import Manifest, Receipt, ReceiptStatus, TransferState
from labrelay.operations import init_data_dir
from labrelay.relay.auth import Caller
from labrelay.runtime import Relay, open_relay

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def party_entry(
    name: str,
    role: Role,
    at: datetime,
    *,
    signing: SigningKey | None = None,
    identity: AgeIdentity | None = None,
    days: int = 365,
) -> PartyEntry:
    """A directory entry for ``name`` issued at ``at`` and in force ``days`` from then (fresh keys unless given)."""
    return PartyEntry(
        name=name,
        role=role,
        region=None,
        age_recipient=(identity or AgeIdentity.generate()).recipient,
        signing_key=(signing or SigningKey.generate()).public.b64,
        not_before=at,
        not_after=at + timedelta(days=days),
        issued_at=at,
        serial=new_id(),
    )


def digest_of(data: bytes) -> str:
    """The Content-Digest header value (RFC 9530) of ``data``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


@dataclass
class Member:
    name: str
    signing: SigningKey
    identity: AgeIdentity
    entry: PartyEntry
    envelope: dict

    @property
    def caller(self) -> Caller:
        return Caller(self.name, self.entry)


@dataclass
class Setup:
    relay: Relay
    clock: ManualClock
    authority: SigningKey
    detectors: list[Any] = field(default_factory=list)  # detectors a test put in place of the runtime's

    def publish_policy(self, issue: int) -> datetime:
        """The authority publishes the shipped routing policy again under ``issue``, as it does before each one ends
        (``labrelay authority publish-policy``); the new one's end."""
        now = self.clock.now()
        payload = policy_payload(default_policy_text(), now, issue=issue, not_after=now + DEFAULT_POLICY_VALIDITY)
        self.relay.services.policies.register(sign_envelope(payload, self.authority, AUTHORITY_KEYID), AUTHORITY_KEYID)
        return now + DEFAULT_POLICY_VALIDITY

    def member(self, name: str, role: Role, *, register: bool = True, days: int = 365) -> Member:
        signing, identity = SigningKey.generate(), AgeIdentity.generate()
        entry = party_entry(name, role, self.clock.now(), signing=signing, identity=identity, days=days)
        envelope = sign_envelope(entry.to_payload(), self.authority, AUTHORITY_KEYID)
        if register:
            self.relay.services.directory.register(envelope, name)
        return Member(name, signing, identity, entry, envelope)

    def revoke(self, name: str) -> None:
        rev = Revocation(name=name, revoked_at=self.clock.now(), reason="test", serial=new_id())
        self.relay.services.directory.revoke(
            sign_envelope(rev.to_payload(), self.authority, AUTHORITY_KEYID), AUTHORITY_KEYID
        )

    def seal(
        self, sender: Member, recipient: Member, plain: bytes, ttl: timedelta = timedelta(days=7), **over: object
    ) -> tuple[dict, bytes]:
        out = io.BytesIO()
        size, sha = age_stream.encrypt(io.BytesIO(plain), out, [recipient.identity.recipient])
        fields: dict[str, object] = {
            "transfer_id": new_id(),
            "batch_id": new_id(),
            "sender": sender.name,
            "recipient": recipient.name,
            "recipient_key": recipient.identity.recipient,
            "size": size,
            "sha256": sha,
            "record_count": None,
            "media_type": "text/csv",
            "created": self.clock.now(),
            "deadline": self.clock.now() + ttl,
        }
        fields.update(over)
        manifest = Manifest(**fields)  # type: ignore[arg-type]
        return sign_envelope(manifest.to_payload(), sender.signing, sender.name), out.getvalue()

    def upload(self, sender: Member, envelope: dict, data: bytes, chunk: int = 7000) -> TransferState:
        uploads = self.relay.services.uploads
        record, _ = uploads.create(sender.caller, envelope)
        offset, state = 0, TransferState.UPLOADING
        while offset < len(data):
            part = data[offset : offset + chunk]
            status = uploads.append(sender.caller, record.transfer_id, offset, len(part), digest_of(part), [part])
            offset, state = status.uploaded, status.state
        return state

    def receipt(self, recipient: Member, envelope: dict, status: ReceiptStatus = ReceiptStatus.DECRYPTED) -> dict:
        payload = envelope["payload"]
        rec = Receipt(
            transfer_id=payload["transfer_id"],
            sender=payload["sender"],
            recipient=recipient.name,
            sha256=payload["sha256"],
            size=payload["size"],
            record_count=None,
            status=status,
            received_at=self.clock.now(),
        )
        return sign_envelope(rec.to_payload(), recipient.signing, recipient.name)


def make_setup(tmp_path: Path) -> Setup:
    """A relay on real storage in ``tmp_path`` with a manual clock (the ``setup`` fixture, tests/unit/conftest.py)."""
    authority = SigningKey.generate()
    (tmp_path / "authority.pub").write_bytes(authority.public.to_pem())
    init_data_dir(tmp_path / "relay", tmp_path / "authority.pub")
    clock = ManualClock(T0)
    relay = open_relay(RelaySettings(data_dir=(tmp_path / "relay").resolve()), clock)
    # The shipped routing policy is in force, as in every deployment (the authority publishes it first): without
    # one, the relay refuses documents sent unparsed to anyone.
    payload = policy_payload(default_policy_text(), T0, issue=1, not_after=T0 + DEFAULT_POLICY_VALIDITY)
    policy = sign_envelope(payload, authority, AUTHORITY_KEYID)
    relay.services.policies.register(policy, AUTHORITY_KEYID)
    return Setup(relay, clock, authority)


def read_all(setup: Setup, member: Member, transfer_id: str) -> bytes:
    return b"".join(setup.relay.services.delivery.open_payload(member.caller, transfer_id).chunks)


def request(
    member: Member | None,
    key: SigningKey,
    now: datetime,
    url: str = "http://127.0.0.1/v1/directory",
    keyid: str | None = None,
) -> RequestView:
    headers: dict[str, str] = {}
    sign_request("GET", url, headers, None, keyid=keyid or (member.name if member else "x"), key=key, now=now)
    return RequestView("GET", url, HeaderLines(headers.items()))
