"""Send: seal to each recipient's verified key, sign a manifest per recipient, upload resumably.

Two ways in: ``send_file`` sends any document as it is (``--as-is``); ``labrelay.client.routed.send_results``
validates, routes and minimises a lab-results file under the signed policy and seals one payload per recipient
with the same steps (kept apart so that commands that do not route never load polars).

Order matters, and it is the security argument:
1. every recipient is resolved in the directory and verified against the pinned authority key *before*
   anything is encrypted (a relay that substitutes a key is caught here);
2. the file is age-encrypted once per recipient, streaming, into the party's outbox (ciphertext only; the
   plaintext is read, never copied), hashing the ciphertext as it is written;
3. a manifest per transfer is signed and kept with the ciphertext, so an interrupted upload resumes later
   (``labrelay resume``) without re-encrypting;
4. each upload starts from the relay's offset and is verified by the relay against the signed hash.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from labrelay.client.api import RelayClient
from labrelay.client.files import read_json, write_json_atomic
from labrelay.client.keystore import Party
from labrelay.client.progress import NoProgress, Progress, ProgressTask
from labrelay.client.trust import TrustedDirectory
from labrelay.crypto import age_stream
from labrelay.crypto.envelopes import envelope_payload
from labrelay.domain.names import new_id
from labrelay.domain.parties import RECEIVING_ROLES, SENDING_ROLES, PartyEntry
from labrelay.domain.transfers import Manifest
from labrelay.errors import PermissionDenied, UsageError
from labrelay.ports import Clock

# gzip (RFC 1952) written by ISA-L (python-isal): level 2 compresses synthetic batches about as well as zlib's
# level 3 at about five times the speed; any gzip reader opens it (docs/decisions/0014-isal-gzip.md).
GZIP_LEVEL = 2
UPLOAD_CHUNK = 16 * 1024 * 1024  # memory does not depend on it: chunks stream from the spool file
MEDIA_TYPES = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".hl7": "application/x-hl7-v2",
    ".txt": "text/plain",
}


@dataclass(frozen=True, slots=True)
class Sent:
    transfer_id: str
    recipient: str
    size: int
    sha256: str


class _CountingReader:
    """Reports plaintext progress while pyrage reads the source."""

    def __init__(self, source: BinaryIO, task: ProgressTask) -> None:
        self._source = source
        self._task = task

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._task.advance(len(data))
        return data

    def readable(self) -> bool:
        return True


def media_type_for(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def verified_recipients(party: Party, client: RelayClient, names: Sequence[str], clock: Clock) -> list[PartyEntry]:
    if party.role not in SENDING_ROLES:
        raise PermissionDenied(f"{party.name} is a {party.role.value}; only lab parties send")
    if not names:
        raise UsageError("no recipient", hint="name at least one with --to NAME")
    directory = TrustedDirectory(party.authority, client.directory(), clock.now())
    return [directory.require(name, RECEIVING_ROLES) for name in dict.fromkeys(names)]


def seal(
    party: Party,
    source: Path,
    recipients: Sequence[PartyEntry],
    ttl: timedelta,
    clock: Clock,
    *,
    record_count: int | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Encrypt ``source`` to each recipient into the outbox and sign a manifest each. Returns the state files."""
    progress = progress or NoProgress()
    if not source.is_file():
        raise UsageError(f"{source} is not a readable file")
    batch_id = new_id()
    created = clock.now()
    states = []
    for entry in recipients:
        transfer_id = new_id()
        spool = party.outbox / f"{transfer_id}.age"
        fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        task = progress.task(f"sealing for {entry.name}", source.stat().st_size)
        try:
            with source.open("rb") as plain, os.fdopen(fd, "wb") as sink:
                size, sha256 = age_stream.encrypt(_CountingReader(plain, task), sink, [entry.age_recipient])
                sink.flush()
                os.fsync(sink.fileno())
        except BaseException:
            spool.unlink(missing_ok=True)
            raise
        finally:
            task.done()
        manifest = Manifest(
            transfer_id=transfer_id,
            batch_id=batch_id,
            sender=party.name,
            recipient=entry.name,
            recipient_key=entry.age_recipient,
            size=size,
            sha256=sha256,
            record_count=record_count,
            media_type=media_type_for(source),
            created=created,
            deadline=created + ttl,
        )
        state = party.outbox / f"{transfer_id}.json"
        write_json_atomic(state, {"manifest": party.sign(manifest.to_payload()), "source": source.name})
        states.append(state)
    return states


def upload(party: Party, client: RelayClient, state_file: Path, progress: Progress | None = None) -> Sent:
    """Create the transfer (idempotent) and upload its ciphertext from wherever the relay has it."""
    progress = progress or NoProgress()
    state: dict[str, Any] = read_json(state_file)
    envelope = state["manifest"]
    manifest = Manifest.from_payload(envelope_payload(envelope))
    spool = state_file.with_suffix(".age")
    client.create_transfer(envelope)
    task = progress.task(f"uploading to {manifest.recipient}", manifest.size)
    try:
        with spool.open("rb") as fh:
            client.upload(manifest.transfer_id, fh, manifest.size, UPLOAD_CHUNK, on_progress=task.advance)
    finally:
        task.done()
    write_json_atomic(party.sent / state_file.name, {**state, "server": client.base})
    spool.unlink()
    state_file.unlink()
    return Sent(manifest.transfer_id, manifest.recipient, manifest.size, manifest.sha256)


def pending(party: Party) -> list[Path]:
    return sorted(p for p in party.outbox.glob("*.json") if not p.name.startswith("."))


def send_file(
    party: Party,
    client: RelayClient,
    source: Path,
    recipients: Sequence[str],
    ttl: timedelta,
    clock: Clock,
    *,
    record_count: int | None = None,
    progress: Progress | None = None,
) -> list[Sent]:
    entries = verified_recipients(party, client, recipients, clock)
    states = seal(party, source, entries, ttl, clock, record_count=record_count, progress=progress)
    return [upload(party, client, state, progress) for state in states]
