"""Recipient key rotation: a new age identity in force, the old one kept exactly as long as payloads need it.

``rotate`` makes a new identity, has the authority sign an entry carrying it, and registers that entry: from then
on senders seal to the new key, and the relay refuses any payload sealed to the old one. The old identity stays
in ``identity.txt`` (so ``fetch``, and ``age -d -i identity.txt``, can still open what was sealed to it) and is
listed in ``retired.json`` with the latest deadline of the payloads sealed to it, which the relay reports.

The relay's word is bounded: no payload sealed to the old key can outlive the rotation by more than the longest
deadline any relay may grant (``HARD_MAX_TTL``, 30 d) plus the clock skew clients allow, since the relay refuses
payloads sealed to it from the rotation on. Past that, the old identity is destroyed whatever the relay says (a
relay claiming a later deadline is lying, or broken, and the claim is reported once).

``retire_due`` destroys every retired identity whose payloads are all past their deadline: it asks the relay
again first (a payload created during the rotation pushes the date back), rewrites ``identity.txt`` without
it, and overwrites the old file's bytes. ``fetch`` runs it after every fetch; ``party retire`` runs it alone.

Order is what makes a crash harmless: the new identity is written to ``identity.txt`` *before* its entry is
registered, so no payload can ever be sealed to a key this machine does not hold; an identity left in
``identity.txt`` by an interrupted rotation is found and retired by the next one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from labrelay.client.api import RelayClient
from labrelay.client.keystore import ENTRY_FILE, IDENTITY_FILE, PUBLIC_FILE, Authority, Party
from labrelay.client.policy import recipient_policy
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.parties import RECEIVING_ROLES, is_pq_recipient, short_key
from labrelay.domain.timeutil import format_duration, from_rfc3339, to_rfc3339
from labrelay.domain.transfers import CLOCK_SKEW, HARD_MAX_TTL
from labrelay.errors import ClassicKeyRefused, UsageError
from labrelay.jsonfile import read_json, write_json_atomic

RETIRED_FILE = "retired.json"
KEEP_AT_MOST = HARD_MAX_TTL + CLOCK_SKEW + timedelta(seconds=1)
"""How long after its rotation a retired identity is kept at most: the longest deadline, the clock skew, and the
second ``retired_at`` is rounded down to. The client's own constants: never a value the relay reports."""


@dataclass(frozen=True)
class Rotation:
    new_recipient: str
    retired: list[str]
    destroy_after: str
    overclaimed: dict[str, str]
    """Retired recipients for which the relay claimed a deadline past ``KEEP_AT_MOST``: what it claimed."""


@dataclass(frozen=True)
class Destroyed:
    """A retired identity destroyed; ``overclaimed``, what the relay last claimed if it said to keep it longer."""

    recipient: str
    overclaimed: str | None = None

    def note(self) -> str | None:
        """One line for the operator when the relay's word was overruled, else None."""
        if self.overclaimed is None:
            return None
        return (
            f"the relay claimed payloads sealed to {short_key(self.recipient)} until {self.overclaimed}, longer than "
            f"any relay may keep one ({format_duration(HARD_MAX_TTL)} after the rotation): destroyed anyway"
        )


def _retired(party: Party) -> list[dict[str, Any]]:
    path = party.path / RETIRED_FILE
    if not path.exists():
        return []
    keys: list[dict[str, Any]] = read_json(path).get("keys", [])
    return keys


def _save_retired(party: Party, keys: list[dict[str, Any]]) -> None:
    write_json_atomic(party.path / RETIRED_FILE, {"keys": keys})


def _write_identities(path: Path, identities: list[AgeIdentity], comments: dict[str, str]) -> None:
    """Replace the age identity file atomically (0600), then overwrite the old file's bytes."""
    lines = []
    for ident in identities:
        lines.append(f"# public key: {ident.recipient}")
        if ident.recipient in comments:
            lines.append(f"# {comments[ident.recipient]}")
        lines.append(ident.secret)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, ("\n".join(lines) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    old = path.with_name(f".{path.name}.old")
    if old.exists():  # left by an interrupted rewrite: shred it first
        _shred(old)
    os.link(path, old)  # keep a handle on the old bytes to overwrite them once the new file is in place
    os.replace(tmp, path)
    _shred(old)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shred(path: Path) -> None:
    try:
        with path.open("r+b") as fh:
            fh.write(b"\x00" * os.fstat(fh.fileno()).st_size)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        path.unlink()


def _keep_until(retired_at: datetime) -> datetime:
    return retired_at + KEEP_AT_MOST


def _horizon(client: RelayClient, recipient: str, now: datetime, cap: datetime) -> tuple[datetime, str | None]:
    """When the relay says the last payload sealed to ``recipient`` ends, never later than ``cap``; and what it
    claimed when that was later (or malformed)."""
    doc = client.key_horizon(recipient)
    latest = doc.get("latest_deadline")
    if not latest:
        return now, None
    try:
        said = from_rfc3339(str(latest))
    except ValueError:
        return cap, "an unreadable date"
    if said > cap:
        return cap, to_rfc3339(said)
    return max(said, now), None


def rotate(
    party: Party,
    authority: Authority,
    client: RelayClient,
    now: datetime,
    valid_for: timedelta,
    *,
    classic: bool | None = None,
) -> Rotation:
    """Move ``party`` to a new age key: hybrid post-quantum (``classic`` False), classic X25519 (True), or of the
    kind it has (None: a rotation does not change which tools can open what it receives). The keys it held are
    retired. A classic key under a policy that requires post-quantum recipients is refused before anything is
    written."""
    if party.role not in RECEIVING_ROLES:
        raise UsageError(f"{party.name} is a {party.role.value}: only recipients hold payload keys to rotate")
    identity_file = party.path / IDENTITY_FILE
    held = AgeIdentity.load_all(identity_file)
    known = {k["age_recipient"] for k in _retired(party)}
    if classic is None:
        classic = not is_pq_recipient(party.age_recipient)
    new = AgeIdentity.generate(classic=classic)
    policy = recipient_policy(client, party.authority, party.path) if classic else None
    if policy is not None and (refusal := policy.policy.classic_refusal(party.name, new.recipient)) is not None:
        raise ClassicKeyRefused(refusal, hint="nothing was written: rotate with --pq")
    # 1. the new identity is on disk before anyone can seal to it
    _write_identities(identity_file, [new, *held], {new.recipient: f"created: {to_rfc3339(now)}"})
    # 2. the authority signs the entry; 3. the relay registers it (signed with the party's own key)
    # Entries carry whole seconds and the latest-issued valid one is in force: a rotation in the same second as
    # the entry it replaces is ordered after it, or senders would go on sealing to the old key.
    current = party.entry()
    issued = now
    if current is not None and now.replace(microsecond=0) <= current.issued_at:
        issued = current.issued_at + timedelta(seconds=1)
    kept = current.identifier if current is not None else None  # the FINESS or SIREN stays with the party
    envelope = authority.sign_entry(
        party, now, valid_for, age_recipient=new.recipient, issued_at=issued, identifier=kept
    )
    client.register_entry(envelope)
    # 4. every other identity held is retired until its payloads are past their deadline
    keys = _retired(party)
    retiring = [i.recipient for i in held if i.recipient not in known]
    latest = now
    overclaimed: dict[str, str] = {}
    retired_at = to_rfc3339(now)
    for recipient in retiring:
        until, claimed = _horizon(client, recipient, now, _keep_until(from_rfc3339(retired_at)))
        latest = max(latest, until)
        key = {"age_recipient": recipient, "retired_at": retired_at, "destroy_after": to_rfc3339(until)}
        if claimed is not None:
            key["relay_claimed"] = overclaimed[recipient] = claimed
        keys.append(key)
    _save_retired(party, keys)
    public = read_json(party.path / PUBLIC_FILE)
    public["age_recipient"] = new.recipient
    write_json_atomic(party.path / PUBLIC_FILE, public, mode=0o644)
    write_json_atomic(party.path / ENTRY_FILE, envelope, mode=0o644)
    return Rotation(new.recipient, retiring, to_rfc3339(latest), overclaimed)


def retire_due(party: Party, client: RelayClient | None, now: datetime) -> list[Destroyed]:
    """Destroy retired identities whose payloads are all past their deadline. Returns what was destroyed.

    Without a relay to ask (``client`` None), only identities whose recorded date has passed are destroyed; the
    relay refuses new payloads sealed to a retired key, so that date only moves if a payload was created during
    the rotation itself. Whatever the relay says, an identity is destroyed ``KEEP_AT_MOST`` after its rotation,
    without asking: no payload sealed to it can be served any more."""
    keys = _retired(party)
    due: list[str] = []
    for key in keys:
        if key.get("destroyed_at"):
            continue
        cap = _keep_until(from_rfc3339(key["retired_at"]))
        if cap <= now:
            due.append(key["age_recipient"])
            continue
        if from_rfc3339(key["destroy_after"]) > now:
            continue
        if client is not None:
            until, claimed = _horizon(client, key["age_recipient"], now, cap)
            if claimed is not None:
                key["relay_claimed"] = claimed
            if until > now:
                key["destroy_after"] = to_rfc3339(until)
                continue
        due.append(key["age_recipient"])
    if not due:
        _save_retired(party, keys)
        return []
    identity_file = party.path / IDENTITY_FILE
    held = AgeIdentity.load_all(identity_file)
    keep = [i for i in held if i.recipient not in due]
    if not keep or party.age_recipient not in {i.recipient for i in keep}:
        raise UsageError(f"{identity_file}: refusing to destroy the identity in force")
    _write_identities(identity_file, keep, {})
    destroyed: list[Destroyed] = []
    for key in keys:
        if key["age_recipient"] in due:
            key["destroyed_at"] = to_rfc3339(now)
            destroyed.append(Destroyed(key["age_recipient"], key.get("relay_claimed")))
    _save_retired(party, keys)
    return destroyed


def retired_status(party: Party) -> list[dict[str, Any]]:
    return _retired(party)
