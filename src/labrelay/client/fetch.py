"""Fetch: list what waits, verify, download, check the hash, decrypt, write, then sign a receipt.

Nothing is written under its final name and nothing is acknowledged until every check passed:
- the manifest verifies under the sender's directory entry, itself verified against the pinned authority,
  and the sender is a lab in force now;
- the manifest names this party and a key this party holds;
- the downloaded ciphertext has the manifest's size and SHA-256;
- age decryption succeeds (it authenticates every chunk and the end of the stream).
Downloads resume from a partial file; decrypted output goes to a temporary name in the output directory and is
renamed into place.

Each party keeps a ledger of what it received (``DIR/NAME/received/<id>.json``: the manifest, where the data
went, the signed receipt and whether the relay took it). A receipt that could not be sent is sent on the next
fetch; a transfer the relay offers again after it was received is acknowledged again, never decrypted twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from isal import isal_zlib

from labrelay.client.api import RelayClient
from labrelay.client.files import private_dir, read_json, write_json_atomic
from labrelay.client.keystore import Party
from labrelay.client.progress import NoProgress, Progress
from labrelay.client.trust import TrustedDirectory
from labrelay.crypto import age_stream
from labrelay.crypto.envelopes import envelope_signer, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.parties import SENDING_ROLES
from labrelay.domain.transfers import MANIFEST_TYPE, Manifest, Receipt, ReceiptStatus
from labrelay.errors import Conflict, IntegrityError, LabrelayError, NotFound, Unavailable, UsageError
from labrelay.ports import Clock

WORK_DIR = ".labrelay"
INFLATE_STEP = 1 << 20  # bytes of plaintext per decompression step
INFLATE_RATIO = 200  # a payload may decompress to at most 200 times its ciphertext size …
INFLATE_MIN = 256 * 1024 * 1024  # … or 256 MiB, whichever is larger
EXTENSIONS = {
    "text/csv": ".csv",
    "application/json": ".json",
    "application/x-ndjson": ".ndjson",
    "application/x-hl7-v2": ".hl7",
    "text/plain": ".txt",
    "application/fhir+ndjson": ".ndjson",
}


@dataclass(frozen=True, slots=True)
class Fetched:
    transfer_id: str
    sender: str
    path: Path
    size: int
    records: int | None
    acknowledged: bool
    again: bool = False  # offered again after it was received: acknowledged again, not decrypted again


@dataclass
class FetchReport:
    fetched: list[Fetched] = field(default_factory=list)
    refused: list[tuple[str, LabrelayError]] = field(default_factory=list)


def verify_manifest(
    party: Party,
    directory: TrustedDirectory,
    envelope: Mapping[str, Any],
    transfer_id: str,
    now: datetime | None = None,
) -> Manifest:
    """The manifest, if signed by a lab in force and addressed to this party and one of its keys."""
    signer = envelope_signer(envelope)
    sender = directory.require(signer, SENDING_ROLES)
    payload = verify_envelope(envelope, MANIFEST_TYPE, VerifyKey.from_b64(sender.signing_key))
    manifest = Manifest.from_payload(payload)
    if manifest.sender != signer or manifest.transfer_id != transfer_id:
        raise IntegrityError(f"manifest of {transfer_id} does not match the transfer the relay listed")
    if manifest.recipient != party.name:
        raise IntegrityError(f"transfer {transfer_id} is addressed to {manifest.recipient}, not {party.name}")
    if manifest.recipient_key not in {i.recipient for i in party.identities}:
        raise IntegrityError(f"transfer {transfer_id} was sealed to a key {party.name} does not hold")
    if now is not None and manifest.deadline <= now:
        raise IntegrityError(f"the relay offered {transfer_id} after its deadline; refusing it")
    return manifest


# ------------------------------------------------------------------ the party's ledger of what it received


def _ledger_path(party: Party, transfer_id: str) -> Path:
    return private_dir(party.path / "received") / f"{transfer_id}.json"


def ledger_entry(party: Party, transfer_id: str) -> dict[str, Any] | None:
    path = _ledger_path(party, transfer_id)
    return read_json(path) if path.exists() else None


def _record(party: Party, transfer_id: str, **fields: Any) -> dict[str, Any]:
    entry = {**(ledger_entry(party, transfer_id) or {}), **fields}
    write_json_atomic(_ledger_path(party, transfer_id), entry)
    return entry


def _acknowledge(party: Party, client: RelayClient, transfer_id: str, receipt: Mapping[str, Any]) -> None:
    """Send a signed receipt and note that the relay took it. A relay that no longer knows the transfer
    (delivered under this receipt already, or expired) closes it too."""
    try:
        client.send_receipt(transfer_id, receipt)
    except (NotFound, Conflict) as exc:
        _record(party, transfer_id, acknowledged=True, relay_said=exc.code)
        return
    _record(party, transfer_id, acknowledged=True)


def _send_unacknowledged(party: Party, client: RelayClient) -> None:
    for path in sorted(private_dir(party.path / "received").glob("*.json")):
        entry = read_json(path)
        if entry.get("receipt") and not entry.get("acknowledged"):
            _acknowledge(party, client, path.stem, entry["receipt"])


def count_csv_records(path: Path) -> int:
    """Data records in a CSV file (header excluded), quoted newlines handled."""
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        sample = text.read(4096)
        text.seek(0)
        delimiter = ";" if sample.count(";") > sample.count(",") else ","
        rows = sum(1 for _ in csv.reader(text, delimiter=delimiter))
    return max(rows - 1, 0)


def _download(client: RelayClient, manifest: Manifest, partial: Path, progress: Progress) -> None:
    """Download into ``partial`` (resuming it), then check size and SHA-256 against the signed manifest."""
    start = partial.stat().st_size if partial.exists() else 0
    if start > manifest.size:
        partial.unlink()
        start = 0
    digest = hashlib.sha256()
    if start:
        with partial.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    task = progress.task(f"downloading {manifest.transfer_id[:8]}", manifest.size)
    task.advance(start)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    size = start
    try:
        with os.fdopen(fd, "ab") as out:
            failures = 0
            while size < manifest.size:
                try:
                    for chunk in client.download(manifest.transfer_id, size):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                        task.advance(len(chunk))
                        if size > manifest.size:
                            break
                    break
                except Unavailable:
                    # An interrupted download (a relay replica restarted, storage briefly unreachable): resume
                    # from what arrived, like an upload does, before giving up.
                    failures += 1
                    if not client.pause_before_retry(failures):
                        raise
            out.flush()
            os.fsync(out.fileno())
    finally:
        task.done()
    if size != manifest.size or digest.hexdigest() != manifest.sha256:
        partial.unlink(missing_ok=True)
        raise IntegrityError(
            f"payload {manifest.transfer_id} does not match its signed manifest (size or SHA-256): "
            "altered in storage or in transit; nothing written, no receipt sent"
        )


class _Plaintext:
    """Where decrypted bytes go: gunzipped when the manifest says so (in bounded steps, with a ceiling against a
    decompression bomb; every member of the stream, bytes after the last one refused), written to the output
    file, lines counted on the way."""

    def __init__(self, out: BinaryIO, gzipped: bool, ceiling: int) -> None:
        self._out = out
        self._inflate = isal_zlib.decompressobj(wbits=31) if gzipped else None
        self._ceiling = ceiling
        self.written = 0
        self.newlines = 0

    def _emit(self, data: bytes) -> None:
        self.written += len(data)
        if self.written > self._ceiling:
            raise IntegrityError(f"payload decompresses to more than {self._ceiling} bytes; refusing it")
        self.newlines += data.count(b"\n")
        self._out.write(data)

    def write(self, data: bytes) -> int:
        if self._inflate is None:
            self._emit(bytes(data))
            return len(data)
        pending = bytes(data)
        try:
            while pending:
                if self._inflate.eof:  # RFC 1952: a gzip file is a series of members; read them all
                    self._inflate = isal_zlib.decompressobj(wbits=31)
                self._emit(self._inflate.decompress(pending, INFLATE_STEP))
                pending = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
        except isal_zlib.error as exc:  # type: ignore[misc]  # the stub declares an instance; it is the class
            raise IntegrityError(f"payload is not valid gzip: {exc}") from exc
        return len(data)

    def finish(self) -> None:
        if self._inflate is not None:
            self._emit(self._inflate.flush())
            if not self._inflate.eof:
                raise IntegrityError("payload's gzip stream is truncated")

    def flush(self) -> None:
        self._out.flush()

    def writable(self) -> bool:
        return True


def _decrypt(party: Party, manifest: Manifest, partial: Path, work: Path, out_dir: Path) -> tuple[Path, int | None]:
    identities = [i for i in party.identities if i.recipient == manifest.recipient_key]
    tmp = work / f"{manifest.transfer_id}.plain.tmp"
    final = out_dir / f"{manifest.transfer_id}{EXTENSIONS.get(manifest.media_type, '.bin')}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with partial.open("rb") as cipher, os.fdopen(fd, "wb") as plain:
            sink = _Plaintext(plain, manifest.compression == "gzip", max(INFLATE_RATIO * manifest.size, INFLATE_MIN))
            size, sha = age_stream.decrypt(cipher, sink, identities)  # type: ignore[arg-type]
            sink.finish()
            plain.flush()
            os.fsync(plain.fileno())
        if size != manifest.size or sha != manifest.sha256:
            raise IntegrityError(f"payload {manifest.transfer_id} changed on disk before decryption")
        records: int | None = None
        if manifest.policy_version is not None:  # labrelay wrote it: one record per line (no embedded newline)
            header = 1 if manifest.media_type == "text/csv" else 0
            records = max(sink.newlines - header, 0)
        elif manifest.media_type == "text/csv":
            records = count_csv_records(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final, records


def fetch_one(
    party: Party,
    client: RelayClient,
    directory: TrustedDirectory,
    listing: Mapping[str, Any],
    out_dir: Path,
    clock: Clock,
    *,
    raw: bool = False,
    progress: Progress | None = None,
) -> Fetched:
    progress = progress or NoProgress()
    transfer_id = str(listing.get("transfer_id"))
    manifest = verify_manifest(party, directory, listing["manifest"], transfer_id, now=clock.now())
    known = ledger_entry(party, transfer_id)
    if known is not None and known.get("receipt"):
        # Already received and decrypted: the relay did not get (or is replaying) the receipt. Never decrypt twice.
        _acknowledge(party, client, transfer_id, known["receipt"])
        output = Path(known.get("output") or out_dir)
        return Fetched(
            transfer_id, manifest.sender, output, manifest.size, known.get("records"), acknowledged=True, again=True
        )
    work = private_dir(out_dir / WORK_DIR)
    partial = work / f"{transfer_id}.age.part"
    _download(client, manifest, partial, progress)
    sidecar = {"manifest": listing["manifest"]}
    if raw:
        final = out_dir / f"{transfer_id}.age"
        os.replace(partial, final)
        write_json_atomic(out_dir / f"{transfer_id}.manifest.json", sidecar, mode=0o644)
        _record(
            party,
            transfer_id,
            manifest=dict(listing["manifest"]),
            raw=str(final.resolve()),
            sha256=manifest.sha256,
            size=manifest.size,
        )
        return Fetched(transfer_id, manifest.sender, final, manifest.size, None, acknowledged=False)
    try:
        final, records = _decrypt(party, manifest, partial, work, out_dir)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.unlink()
    receipt = Receipt(
        transfer_id=transfer_id,
        sender=manifest.sender,
        recipient=party.name,
        sha256=manifest.sha256,
        size=manifest.size,
        record_count=records,
        status=ReceiptStatus.DECRYPTED,
        received_at=clock.now(),
    )
    envelope = party.sign(receipt.to_payload())
    write_json_atomic(out_dir / f"{transfer_id}.manifest.json", {**sidecar, "receipt": envelope}, mode=0o644)
    _record(
        party,
        transfer_id,
        manifest=dict(listing["manifest"]),
        output=str(final.resolve()),
        records=records,
        sha256=manifest.sha256,
        size=manifest.size,
        receipt=envelope,
        acknowledged=False,
    )
    _acknowledge(party, client, transfer_id, envelope)
    return Fetched(transfer_id, manifest.sender, final, manifest.size, records, acknowledged=True)


def fetch_all(
    party: Party,
    client: RelayClient,
    out_dir: Path,
    clock: Clock,
    *,
    raw: bool = False,
    progress: Progress | None = None,
) -> FetchReport:
    """Fetch everything waiting. A transfer that fails a check is reported and skipped; the others go on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _send_unacknowledged(party, client)
    directory = TrustedDirectory(party.authority, client.directory(), clock.now())
    report = FetchReport()
    for listing in client.transfers("inbox"):
        transfer_id = str(listing.get("transfer_id"))
        try:
            report.fetched.append(
                fetch_one(party, client, directory, listing, out_dir, clock, raw=raw, progress=progress)
            )
        except LabrelayError as exc:
            report.refused.append((transfer_id, exc))
    return report


def acknowledge(
    party: Party, client: RelayClient, transfer_id: str, clock: Clock, *, payload_file: Path | None = None
) -> Receipt:
    """Send the receipt for a transfer fetched with ``--raw`` (status ``received``: hash checked, not decrypted).

    The receipt attests a check this party made: either ``payload_file`` matches the signed manifest now, or
    this party's ledger records a verified ``--raw`` download of exactly this payload.
    """
    listing = client.transfer(transfer_id)
    directory = TrustedDirectory(party.authority, client.directory(), clock.now())
    manifest = verify_manifest(party, directory, listing["manifest"], transfer_id)
    if payload_file is not None:
        with payload_file.open("rb") as fh:
            size, sha = age_stream.hash_file(fh)
        if size != manifest.size or sha != manifest.sha256:
            raise IntegrityError(f"{payload_file} does not match the signed manifest of {transfer_id}")
    else:
        known = ledger_entry(party, transfer_id)
        if known is None or known.get("sha256") != manifest.sha256 or known.get("size") != manifest.size:
            raise UsageError(
                f"{party.name} has no verified download of {transfer_id}",
                hint="fetch it with --raw first, or pass --file with the payload to check",
            )
    receipt = Receipt(
        transfer_id=transfer_id,
        sender=manifest.sender,
        recipient=party.name,
        sha256=manifest.sha256,
        size=manifest.size,
        record_count=None,
        status=ReceiptStatus.RECEIVED,
        received_at=clock.now(),
    )
    envelope = party.sign(receipt.to_payload())
    _record(
        party,
        transfer_id,
        manifest=dict(listing["manifest"]),
        sha256=manifest.sha256,
        size=manifest.size,
        receipt=envelope,
        acknowledged=False,
    )
    client.send_receipt(transfer_id, envelope)
    _record(party, transfer_id, acknowledged=True)
    return receipt
