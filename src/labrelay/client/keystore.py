"""A party's directory and the authority's directory, on their owners' machines.

Party directory ``DIR/NAME/`` (mode 0700)::

    identity.txt    age identity, the standard age format (0600): hybrid post-quantum (AGE-SECRET-KEY-PQ-1…, read
                    by age >= 1.3 and the age-encryption library) unless created with --classic (X25519)
    signing.key     Ed25519 private key, PKCS#8 PEM (0600)
    party.json      the public half: name, role, region, age recipient, signing key
    authority.pub   the directory authority's key, pinned at creation
    entry.json      the authority-signed entry, after enrolment
    retired.json    recipients: age identities replaced by `party rotate`, kept in identity.txt until every
                    payload sealed to them is past its deadline, then destroyed
    pseudonym.key   labs only: the key of the keyed pseudonyms, from the authority at enrolment (0600); offline
                    enrolment carries it sealed to the lab's age key in ENTRY.json (docs/enrolment.md)
    outbox/         sealed payloads not yet fully uploaded (ciphertext only) and their signed manifests
    sent/           manifests of completed uploads (the sender's record of what it sent)
    ledger/         labs: the breach ledger of each routed send (docs/breach.md); persons sealed to the DPO
    checkpoints.json  the relay's signed audit heads this party received (docs/audit.md)
    policies.json   labs: the newest routing policy issue verified, and the withdrawn versions seen (0600)

Authority directory ``AUTH_DIR/`` (mode 0700)::

    authority.key   Ed25519 private key (0600); keep this directory offline
    authority.pub   the public key every party and the relay pin
    pseudonym.key   the key of the keyed pseudonyms (0600): given to labs when they enrol, never to recipients
    issued.jsonl    every entry, pseudonym key grant (sealed), revocation, policy and policy withdrawal this
                    authority signed, one per line
                    (policies' issue numbers follow on from the highest found here)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from labrelay.client.files import private_dir
from labrelay.crypto import age_stream, pseudonym
from labrelay.crypto.envelopes import sign_envelope, verify_envelope
from labrelay.crypto.keys import (
    AgeIdentity,
    SigningKey,
    VerifyKey,
    b64u,
    check_private_permissions,
    load_verify_key_file,
    unb64u,
)
from labrelay.domain.identifiers import Identifier
from labrelay.domain.names import AUTHORITY_KEYID, check_party_name, check_region, new_id
from labrelay.domain.parties import ENTRY_TYPE, RECEIVING_ROLES, REVOCATION_TYPE, PartyEntry, Revocation, Role
from labrelay.domain.policy import (
    DEFAULT_POLICY_VALIDITY,
    POLICY_TYPE,
    Policy,
    PolicyWithdrawal,
    parse_policy,
    policy_payload,
)
from labrelay.domain.timeutil import to_rfc3339
from labrelay.errors import ClassicKeyRefused, UntrustedEntry, UsageError
from labrelay.jsonfile import read_json, write_json_atomic

IDENTITY_FILE = "identity.txt"
SIGNING_FILE = "signing.key"
PUBLIC_FILE = "party.json"
PINNED_FILE = "authority.pub"
ENTRY_FILE = "entry.json"
AUTHORITY_KEY = "authority.key"
AUTHORITY_PUB = "authority.pub"
PSEUDONYM_KEY = "pseudonym.key"
GRANT_TYPE = "pseudonym-key-grant"
_PSEUDONYM_KEY = re.compile(r"[0-9a-f]{64}")  # as labrelay.crypto.pseudonym writes it
_ENTRY_FIELDS = ("name", "role", "region", "age recipient", "signing key")


# ------------------------------------------------------------------ party


@dataclass(frozen=True)
class Party:
    """A party's local directory. Private keys are loaded (and their permissions checked) on first use."""

    path: Path
    name: str
    role: Role
    region: str | None
    age_recipient: str
    signing_public: str

    @classmethod
    def create(
        cls,
        out: Path,
        name: str,
        role: Role,
        region: str | None,
        authority_pub: Path,
        now: datetime,
        *,
        classic: bool = False,
    ) -> Party:
        """A new party's directory with fresh keys: a hybrid post-quantum age identity, unless ``classic``."""
        check_party_name(name)
        if region is not None:
            check_region(region)
        pinned = load_verify_key_file(authority_pub)
        path = out / name
        if path.exists():
            raise UsageError(f"{path} already exists; refusing to overwrite a party's keys")
        private_dir(out)
        private_dir(path)
        created = to_rfc3339(now)
        identity = AgeIdentity.generate(classic=classic)
        identity.save(path / IDENTITY_FILE, created)
        signing = SigningKey.generate()
        signing.save(path / SIGNING_FILE)
        (path / PINNED_FILE).write_bytes(pinned.to_pem())
        public = {
            "name": name,
            "role": role.value,
            "region": region,
            "age_recipient": identity.recipient,
            "signing_key": signing.public.b64,
            "created": created,
        }
        write_json_atomic(path / PUBLIC_FILE, public, mode=0o644)
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> Party:
        try:
            doc = read_json(path / PUBLIC_FILE)
        except FileNotFoundError:
            raise UsageError(
                f"{path} is not a party directory (no {PUBLIC_FILE})",
                hint="create one with: labrelay party new NAME --role … --out DIR",
            ) from None
        except ValueError as exc:
            raise UsageError(f"{path / PUBLIC_FILE} is malformed: {exc}") from exc
        # Like ssh: refuse to act as a party whose private keys others can read, before doing anything.
        check_private_permissions(path / SIGNING_FILE)
        check_private_permissions(path / IDENTITY_FILE)
        region = doc.get("region")
        return cls(
            path=path,
            name=check_party_name(str(doc.get("name"))),
            role=Role.parse(str(doc.get("role"))),
            region=check_region(region) if region is not None else None,
            age_recipient=str(doc.get("age_recipient")),
            signing_public=str(doc.get("signing_key")),
        )

    @cached_property
    def signing_key(self) -> SigningKey:
        key = SigningKey.load(self.path / SIGNING_FILE)
        if key.public.b64 != self.signing_public:
            raise UsageError(f"{self.path / SIGNING_FILE} does not match {PUBLIC_FILE}")
        return key

    @cached_property
    def identities(self) -> list[AgeIdentity]:
        return AgeIdentity.load_all(self.path / IDENTITY_FILE)

    @cached_property
    def authority(self) -> VerifyKey:
        """The pinned authority key: every directory entry this party uses must verify under it."""
        return load_verify_key_file(self.path / PINNED_FILE)

    def ensure_outbox(self) -> Path:
        """``outbox/``, created if missing, made private (0700) whatever it was."""
        return private_dir(self.path / "outbox")

    def ensure_sent_dir(self) -> Path:
        """``sent/``, created if missing, made private (0700) whatever it was."""
        return private_dir(self.path / "sent")

    def entry(self) -> PartyEntry | None:
        path = self.path / ENTRY_FILE
        if not path.exists():
            return None
        payload = verify_envelope(read_json(path), ENTRY_TYPE, self.authority, error=UntrustedEntry)
        return PartyEntry.from_payload(payload)

    def pseudonym_key(self) -> str | None:
        path = self.path / PSEUDONYM_KEY
        return pseudonym.load_key(path) if path.exists() else None

    def check_pseudonym_key(self, key: str) -> None:
        """``UsageError`` if this party already holds a pseudonym key other than ``key`` (its earlier pseudonyms
        were made with that one): checked before anything is registered or installed."""
        held = self.pseudonym_key()
        if held is not None and held != key:
            raise UsageError(
                f"{self.path / PSEUDONYM_KEY} holds another pseudonym key; refusing to replace it",
                hint="find out where it came from (another authority?) before moving it away",
            )

    def save_pseudonym_key(self, key: str) -> None:
        self.check_pseudonym_key(key)
        path = self.path / PSEUDONYM_KEY
        if not path.exists():
            pseudonym.save_key(path, key)

    def save_entry(self, envelope: Mapping[str, Any]) -> None:
        verify_envelope(envelope, ENTRY_TYPE, self.authority, error=UntrustedEntry)
        write_json_atomic(self.path / ENTRY_FILE, envelope, mode=0o644)

    def check_own_entry(self, envelope: Mapping[str, Any]) -> PartyEntry:
        """The entry ``envelope`` carries, if the pinned authority signed it for this party's own keys, name, role
        and region; ``UntrustedEntry`` otherwise (an entry for other keys would make this party unreachable)."""
        entry = PartyEntry.from_payload(verify_envelope(envelope, ENTRY_TYPE, self.authority, error=UntrustedEntry))
        mine = (self.name, self.role, self.region, self.age_recipient, self.signing_public)
        theirs = (entry.name, entry.role, entry.region, entry.age_recipient, entry.signing_key)
        if mine != theirs:
            differ = [f for f, a, b in zip(_ENTRY_FIELDS, mine, theirs, strict=True) if a != b]
            raise UntrustedEntry(
                f"the entry is not {self.name}'s: its {' and '.join(differ)} {'differ' if differ[1:] else 'differs'} "
                f"from {self.path / PUBLIC_FILE}",
                hint="register it with the party directory whose request the authority signed",
            )
        return entry

    def open_pseudonym_grant(self, grant: Mapping[str, Any], entry: PartyEntry) -> str:
        """The pseudonym key in ``grant``, if the pinned authority signed it for ``entry`` and sealed it to this
        party's age key; ``UntrustedEntry`` (or ``IntegrityError`` when it does not decrypt) otherwise."""
        payload = verify_envelope(grant, GRANT_TYPE, self.authority, error=UntrustedEntry)
        if (payload.get("name"), payload.get("serial"), payload.get("sealed_to")) != (
            entry.name,
            entry.serial,
            entry.age_recipient,
        ):
            raise UntrustedEntry("the pseudonym key was granted with another entry than this one")
        sealed = payload.get("sealed")
        if not isinstance(sealed, str):
            raise UntrustedEntry("malformed pseudonym key grant")
        plain = io.BytesIO()
        age_stream.decrypt(io.BytesIO(unb64u(sealed)), plain, self.identities, expect=None)
        key = plain.getvalue().decode("ascii", errors="replace")
        if not _PSEUDONYM_KEY.fullmatch(key):
            raise UntrustedEntry("the pseudonym key granted is malformed")
        return key

    def sign(self, payload: dict[str, Any]) -> dict[str, Any]:
        return sign_envelope(payload, self.signing_key, self.name)


# ------------------------------------------------------------------ authority


@dataclass(frozen=True)
class Authority:
    """The directory authority: signs party entries and revocations. Its directory belongs offline."""

    path: Path

    @classmethod
    def init(cls, path: Path) -> Authority:
        if (path / AUTHORITY_KEY).exists():
            raise UsageError(f"{path} already holds an authority key; refusing to replace it")
        private_dir(path)
        key = SigningKey.generate()
        key.save(path / AUTHORITY_KEY)
        (path / AUTHORITY_PUB).write_bytes(key.public.to_pem())
        pseudonym.save_key(path / PSEUDONYM_KEY, pseudonym.new_key())
        return cls(path)

    @classmethod
    def load(cls, path: Path) -> Authority:
        if not (path / AUTHORITY_KEY).exists():
            raise UsageError(
                f"{path} is not an authority directory (no {AUTHORITY_KEY})",
                hint="pass the directory that `labrelay authority init` created",
            )
        return cls(path)

    @cached_property
    def key(self) -> SigningKey:
        return SigningKey.load(self.path / AUTHORITY_KEY)

    @property
    def public(self) -> VerifyKey:
        return load_verify_key_file(self.path / AUTHORITY_PUB)

    def _log(self, envelope: dict[str, Any]) -> None:
        fd = os.open(self.path / "issued.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(envelope, sort_keys=True) + "\n")

    def sign_entry(
        self,
        party: Party,
        now: datetime,
        valid_for: timedelta,
        *,
        age_recipient: str | None = None,
        issued_at: datetime | None = None,
        identifier: Identifier | None = None,
    ) -> dict[str, Any]:
        """Sign ``party``'s entry (with ``age_recipient`` instead of its current key, for a rotation, and an
        ``issued_at`` that orders it after the entry it replaces)."""
        if party.authority != self.public:
            raise UntrustedEntry(
                f"{party.name} pinned a different authority key than {self.path / AUTHORITY_PUB}",
                hint="enrol with the authority whose authority.pub the party was created with",
            )
        entry = PartyEntry(
            name=party.name,
            role=party.role,
            region=party.region,
            age_recipient=age_recipient or party.age_recipient,
            signing_key=party.signing_public,
            not_before=now,
            not_after=now + valid_for,
            issued_at=issued_at or now,
            serial=new_id(),
            identifier=identifier,
        )
        return self.issue(entry)

    def issue(self, entry: PartyEntry) -> dict[str, Any]:
        """Sign a checked entry, and keep it in ``issued.jsonl``. Refuses a recipient's classic age key when the
        newest policy this authority signed requires post-quantum recipients (the relay would refuse it too)."""
        newest = self.newest_policy()
        refusal = None
        if newest is not None and entry.role in RECEIVING_ROLES:  # what the relay stores is sealed to these
            refusal = newest.classic_refusal(entry.name, entry.age_recipient)
        if refusal is not None:
            raise ClassicKeyRefused(refusal, hint="nothing was signed; labrelay party new makes hybrid keys")
        envelope = sign_envelope(entry.to_payload(), self.key, AUTHORITY_KEYID)
        self._log(envelope)
        return envelope

    def grant_pseudonym_key(self, entry: PartyEntry, now: datetime) -> dict[str, Any]:
        """The pseudonym key for the lab ``entry`` names, sealed to the entry's age recipient (only that lab reads
        it) and signed (nobody can substitute a key of their own, sealed to the same public recipient)."""
        if entry.role is not Role.LAB:
            raise UsageError(f"{entry.name} is a {entry.role.value}: only labs receive the pseudonym key")
        sealed = io.BytesIO()
        age_stream.encrypt(io.BytesIO(self.pseudonym_key().encode("ascii")), sealed, [entry.age_recipient])
        payload = {
            "type": GRANT_TYPE,
            "v": 1,
            "name": entry.name,
            "serial": entry.serial,
            "sealed_to": entry.age_recipient,
            "sealed": b64u(sealed.getvalue()),
            "issued_at": to_rfc3339(now),
        }
        envelope = sign_envelope(payload, self.key, AUTHORITY_KEYID)
        self._log(envelope)
        return envelope

    def issued_entries(self, name: str) -> list[Mapping[str, Any]]:
        """The payloads of the entries this authority signed for ``name`` (``issued.jsonl``), oldest first."""
        return [p for p in self._issued_payloads() if p.get("type") == ENTRY_TYPE and p.get("name") == name]

    def issued_history(self, name: str) -> tuple[list[PartyEntry], list[Revocation]]:
        """The entries and revocations this authority signed for ``name`` (``issued.jsonl``), oldest first: what
        ``authority sign`` checks a new request against (``labrelay.domain.parties.reissue_refusal``)."""
        entries: list[PartyEntry] = []
        revocations: list[Revocation] = []
        for payload in self._issued_payloads():
            if payload.get("name") != name:
                continue
            with contextlib.suppress(UntrustedEntry):  # its own log: a line it cannot read is none it signed
                if payload.get("type") == ENTRY_TYPE:
                    entries.append(PartyEntry.from_payload(payload))
                elif payload.get("type") == REVOCATION_TYPE:
                    revocations.append(Revocation.from_payload(payload))
        return entries, revocations

    def _issued_payloads(self) -> list[Mapping[str, Any]]:
        path = self.path / "issued.jsonl"
        if not path.exists():
            return []
        found = []
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                with contextlib.suppress(ValueError, AttributeError):
                    payload = json.loads(line).get("payload") or {}
                    if isinstance(payload, Mapping):
                        found.append(payload)
        return found

    def pseudonym_key(self) -> str:
        """The key labs pseudonymise with (created here if this authority predates it)."""
        path = self.path / PSEUDONYM_KEY
        if not path.exists():
            pseudonym.save_key(path, pseudonym.new_key())
        return pseudonym.load_key(path)

    def sign_policy(
        self, text: str, now: datetime, valid_for: timedelta = DEFAULT_POLICY_VALIDITY, *, after_issue: int = 0
    ) -> dict[str, Any]:
        """Sign a routing policy, valid from ``now`` for ``valid_for``, with the next issue number: one more than
        any this authority signed (``issued.jsonl``) and than ``after_issue`` (the relay's newest, verified). Refuses
        a policy ``parse_policy`` refuses (malformed, gives nothing or everything)."""
        issue = max(self.last_policy_issue(), after_issue) + 1
        payload = policy_payload(text, now, issue=issue, not_after=now + valid_for)
        envelope = sign_envelope(payload, self.key, AUTHORITY_KEYID)
        self._log(envelope)
        return envelope

    def newest_policy(self) -> Policy | None:
        """The routing policy with the highest issue this authority signed (``issued.jsonl``), or None."""
        signed = [
            p for p in self._issued_payloads() if p.get("type") == POLICY_TYPE and isinstance(p.get("issue"), int)
        ]
        if not signed:
            return None
        return parse_policy(str(max(signed, key=lambda p: int(p["issue"])).get("toml", "")))

    def last_policy_issue(self) -> int:
        """The highest issue number among the routing policies this authority signed (0: none yet)."""
        path = self.path / "issued.jsonl"
        if not path.exists():
            return 0
        highest = 0
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                with contextlib.suppress(ValueError, AttributeError):
                    payload = json.loads(line).get("payload") or {}
                    issue = payload.get("issue") if payload.get("type") == POLICY_TYPE else None
                    if isinstance(issue, int) and not isinstance(issue, bool):
                        highest = max(highest, issue)
        return highest

    def sign_policy_withdrawal(self, version: str, reason: str, now: datetime) -> dict[str, Any]:
        """Withdraw routing policy ``version``: nobody routes under it again, whichever issue."""
        withdrawal = PolicyWithdrawal(version=version, withdrawn_at=now, reason=reason, serial=new_id())
        envelope = sign_envelope(withdrawal.to_payload(), self.key, AUTHORITY_KEYID)
        self._log(envelope)
        return envelope

    def sign_revocation(self, name: str, reason: str, now: datetime) -> dict[str, Any]:
        revocation = Revocation(name=check_party_name(name), revoked_at=now, reason=reason, serial=new_id())
        envelope = sign_envelope(revocation.to_payload(), self.key, AUTHORITY_KEYID)
        self._log(envelope)
        return envelope
