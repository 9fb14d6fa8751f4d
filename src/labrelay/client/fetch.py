"""Fetch: list what waits, verify, download, check the hash, decrypt, write, then sign a receipt.

Nothing is written under its final name and nothing is acknowledged until every check passed:
- the manifest verifies under the sender's directory entry, itself verified against the pinned authority,
  and the sender is a lab in force now;
- the manifest names this party and a key this party holds;
- the downloaded ciphertext has the manifest's size and SHA-256;
- age decryption succeeds (it authenticates every chunk and the end of the stream).

No sender can block a recipient's inbox: a payload that fails one of those checks is refused once, with a signed
refusal the relay acts on (it never offers the payload again, and tells its sender), and never downloaded again;
the other transfers go on. A second copy of a source this recipient already received from the same sender (a lab
that sent a file twice) is declined with a signed "duplicate" receipt, without being downloaded, unless its sender
marked it as sent again on purpose.

Outputs cannot be redirected: the output directory is opened once and refused if it is a symbolic link or others
may write to it; every file is created under it with O_NOFOLLOW and O_EXCL (``labrelay.client.files``), unnamed
until complete, and a name that exists already is refused, never replaced. Output files are named
``DATE_SENDER_BATCH8_RECIPIENT.ext`` beside their ``.manifest.json``; routed CSV rows carry the batch id and the
sender as two more columns; ``--format`` chooses CSV, a CSV for French spreadsheets, or typed Parquet.

Each party keeps a journal of what it received (``DIR/NAME/received/<id>.json``: the manifest, where the data
went, the signed receipt or refusal and whether the relay took it). A receipt or refusal that could not be sent
is sent on the next fetch; a transfer the relay offers again after it was received is acknowledged again, never
decrypted twice.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from isal import isal_zlib

from labrelay.client.api import RelayClient
from labrelay.client.files import SafeDir, TempFile, private_dir, sweep_temporaries
from labrelay.client.formats import EXTENSIONS as FORMAT_EXTENSIONS
from labrelay.client.formats import OUTPUT_FORMATS, RowTagger
from labrelay.client.keystore import Party
from labrelay.client.policy import classic_payload_refusal, recipient_policy, refuse_classic_keys
from labrelay.client.progress import NoProgress, Progress
from labrelay.client.trust import TrustedDirectory
from labrelay.crypto import age_stream
from labrelay.crypto.envelopes import envelope_payload, envelope_signer, verify_envelope
from labrelay.crypto.keys import VerifyKey
from labrelay.domain.parties import RECEIVING_ROLES, SENDING_ROLES
from labrelay.domain.policy import SignedPolicy
from labrelay.domain.timeutil import from_rfc3339
from labrelay.domain.transfers import (
    MANIFEST_TYPE,
    Manifest,
    Receipt,
    ReceiptStatus,
    TransferRefusal,
    min_payload_bytes,
    refusal_detail,
)
from labrelay.errors import (
    ClassicKeyRefused,
    Conflict,
    IntegrityError,
    LabrelayError,
    NotFound,
    OperationalError,
    PartyRevoked,
    PayloadCorrupt,
    PermissionDenied,
    Unavailable,
    UntrustedEntry,
    UsageError,
)
from labrelay.jsonfile import read_json, write_json_atomic
from labrelay.ports import Clock

WORK_DIR = ".labrelay"
SOURCES_FILE = "sources.json"  # in received/: (sender, source SHA-256) → the transfer that brought it
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
PAYLOAD_REFUSALS = (IntegrityError, UntrustedEntry, PartyRevoked, PermissionDenied, ClassicKeyRefused)
"""What a payload's own checks raise (its manifest, its sender's standing, its hash, its decryption): refused to the
relay once. Every other security error (an unsafe output directory, a relay whose audit head goes back…) stops the
run instead: it is not the payload's fault, and refusing it would let a local attacker discard a lab's results."""


class DownloadBroken(Unavailable):
    """One payload's download kept breaking (a replica restarting, storage briefly unreachable): retried next run,
    and the other transfers go on meanwhile. A payload whose stored copy failed the relay's own integrity check is
    not this: the relay holds it from the first failure and says so (``PayloadCorrupt``), and it is not retried."""


class _Refused(Exception):
    """A payload check failed: the wrapped error is reported, and the payload refused to the relay (unless the relay
    holds it already: ``PayloadCorrupt``)."""

    def __init__(self, error: LabrelayError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True)
class Fetched:
    transfer_id: str
    sender: str
    path: Path
    size: int
    records: int | None
    acknowledged: bool
    again: bool = False  # offered again after it was received: acknowledged again, not decrypted again
    batch_id: str = ""
    unparsed: bool = False  # sent outside the routing policy (send --as-is): not validated, not minimised
    sent_again: bool = False  # its sender sent this source again on purpose (send --again)
    duplicate_of: str | None = None  # declined: a second copy of a source already received by this transfer
    output_format: str = "csv"

    def as_dict(self) -> dict[str, Any]:
        return {
            "transfer_id": self.transfer_id,
            "batch_id": self.batch_id,
            "sender": self.sender,
            "file": str(self.path),
            "manifest_file": str(_sidecar_of(self.path)) if self.duplicate_of is None else None,
            "records": self.records,
            "size": self.size,
            "format": self.output_format,
            "unparsed": self.unparsed,
            "sent_again": self.sent_again,
            "acknowledged": self.acknowledged,
            "already_received": self.again,
            "duplicate_of": self.duplicate_of,
        }


@dataclass
class FetchReport:
    fetched: list[Fetched] = field(default_factory=list)
    refused: list[tuple[str, LabrelayError]] = field(default_factory=list)  # refused now (signed refusal sent)
    failed: list[tuple[str, LabrelayError]] = field(default_factory=list)  # could not finish now: next run
    skipped: list[str] = field(default_factory=list)  # refused before: not downloaded again

    @property
    def records(self) -> int:
        return sum(f.records or 0 for f in self.fetched if not f.again and f.duplicate_of is None)

    def as_dict(self) -> dict[str, Any]:
        written = [f for f in self.fetched if not f.again and f.duplicate_of is None]
        return {
            "fetched": [f.as_dict() for f in written],
            "already_received": [f.as_dict() for f in self.fetched if f.again],
            "duplicates": [f.as_dict() for f in self.fetched if f.duplicate_of is not None],
            "refused": [{"transfer_id": t, "code": e.code, "message": e.diagnostics()} for t, e in self.refused],
            "failed": [{"transfer_id": t, "code": e.code, "message": e.diagnostics()} for t, e in self.failed],
            "skipped_refused_before": self.skipped,
            "files": [str(f.path) for f in written],
            "records": self.records,
            "unparsed": sum(1 for f in written if f.unparsed),
        }


def _sidecar_of(path: Path) -> Path:
    return path.with_name(f"{path.name.rsplit('.', 1)[0]}.manifest.json")


def output_stem(manifest: Manifest) -> str:
    """``DATE_SENDER_BATCH8_RECIPIENT``: sorts by day, says who sent it, and is unique per batch and recipient."""
    return f"{manifest.created:%Y-%m-%d}_{manifest.sender}_{manifest.batch_id[:8]}_{manifest.recipient}"


def verify_manifest(
    party: Party, directory: TrustedDirectory, envelope: Mapping[str, Any], transfer_id: str, *, now: datetime
) -> Manifest:
    """The manifest, if signed by a lab in force, addressed to this party and one of its keys, and not past its
    deadline at ``now``."""
    manifest = verify_manifest_ignoring_deadline(party, directory, envelope, transfer_id)
    if manifest.deadline <= now:
        raise IntegrityError(f"the relay offered {transfer_id} after its deadline; refusing it")
    return manifest


def verify_manifest_ignoring_deadline(
    party: Party, directory: TrustedDirectory, envelope: Mapping[str, Any], transfer_id: str
) -> Manifest:
    """Every check of ``verify_manifest`` but its deadline: for the receipt of a payload this party downloaded
    before its deadline (``fetch --raw``), which it may acknowledge after it (the relay closes the transfer if it
    still holds it; a receipt never opens anything)."""
    signer = envelope_signer(envelope)
    sender = directory.require(signer, SENDING_ROLES)
    payload = verify_envelope(envelope, MANIFEST_TYPE, VerifyKey.from_b64(sender.signing_key))
    manifest = Manifest.from_payload(payload)
    if manifest.sender != signer or manifest.transfer_id != transfer_id:
        raise IntegrityError(f"manifest of {transfer_id} does not match the transfer the relay listed")
    if manifest.recipient != party.name:
        raise IntegrityError(f"transfer {transfer_id} is addressed to {manifest.recipient}, not {party.name}")
    if manifest.recipient_key not in {i.recipient for i in party.identities}:
        _missing_key_in_force(party, directory, manifest)
        raise IntegrityError(f"transfer {transfer_id} was sealed to a key {party.name} does not hold")
    if manifest.size < (smallest := min_payload_bytes(manifest.recipient_key)):  # no relay should have taken it
        raise IntegrityError(
            f"transfer {transfer_id} declares {manifest.size} bytes, less than any age file sealed to this party "
            f"({smallest}); refusing it"
        )
    return manifest


def _missing_key_in_force(party: Party, directory: TrustedDirectory, manifest: Manifest) -> None:
    """A payload sealed to the key the signed directory holds in force for this party, which this copy of the
    party does not hold: an old copy of the party's directory (a backup restored, a second host) after the key was
    rotated elsewhere. The operator's mistake, not the payload's fault: refusing it would throw away results sealed
    to the right key, so nothing is refused (``UsageError``) and the payload waits for the copy that holds it."""
    try:
        own = directory.require(party.name, RECEIVING_ROLES)
    except LabrelayError:
        return
    if own.age_recipient == manifest.recipient_key:
        raise UsageError(
            f"transfer {manifest.transfer_id} is sealed to {party.name}'s key in force, which {party.path} does not "
            "hold: this copy of the party is older than its last key rotation; nothing was refused, the payload "
            "stays on the relay",
            hint=f"fetch with the party directory that holds {party.name}'s current identity",
        )


# ------------------------------------------------------------------ the party's journal of what it received


def _journal_path(party: Party, transfer_id: str) -> Path:
    return private_dir(party.path / "received") / f"{transfer_id}.json"


def journal_entry(party: Party, transfer_id: str) -> dict[str, Any] | None:
    """What this party's journal says of ``transfer_id``, or None if it never received it."""
    path = _journal_path(party, transfer_id)
    return read_json(path) if path.exists() else None


def _update_journal(party: Party, transfer_id: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the journal entry of ``transfer_id`` (created if new); the entry written."""
    entry = {**(journal_entry(party, transfer_id) or {}), **fields}
    write_json_atomic(_journal_path(party, transfer_id), entry)
    return entry


class _Sources:
    """(sender, source SHA-256) → the transfer by which this recipient received that source: what tells a second
    copy. One small file, read once per run."""

    def __init__(self, party: Party) -> None:
        self.path = private_dir(party.path / "received") / SOURCES_FILE
        self.known: dict[str, str] = {}
        if self.path.exists():
            with contextlib.suppress(OSError, ValueError):
                self.known = {k: str(v) for k, v in read_json(self.path).items()}

    @staticmethod
    def key(manifest: Manifest) -> str | None:
        return f"{manifest.sender}:{manifest.source_sha256}" if manifest.source_sha256 else None

    def first(self, manifest: Manifest) -> str | None:
        key = self.key(manifest)
        found = self.known.get(key) if key else None
        return found if found != manifest.transfer_id else None

    def add(self, manifest: Manifest) -> None:
        key = self.key(manifest)
        if key and key not in self.known:
            self.known[key] = manifest.transfer_id
            write_json_atomic(self.path, self.known)


def _acknowledge(party: Party, client: RelayClient, transfer_id: str, receipt: Mapping[str, Any]) -> None:
    """Send a signed receipt and note that the relay took it. A relay that no longer knows the transfer
    (delivered under this receipt already, or expired) closes it too."""
    try:
        client.send_receipt(transfer_id, receipt)
    except (NotFound, Conflict) as exc:
        _update_journal(party, transfer_id, acknowledged=True, relay_said=exc.code)
        return
    _update_journal(party, transfer_id, acknowledged=True)


def _report_refusal(party: Party, client: RelayClient, transfer_id: str, refusal: Mapping[str, Any]) -> bool:
    """Send a signed refusal; True once the relay took it (or no longer offers the transfer)."""
    try:
        client.send_refusal(transfer_id, refusal)
    except (NotFound, Conflict) as exc:
        _update_journal(party, transfer_id, refusal_sent=True, relay_said=exc.code)
        return True
    except (Unavailable, OperationalError):
        return False
    _update_journal(party, transfer_id, refusal_sent=True)
    return True


def _send_unacknowledged(party: Party, client: RelayClient) -> None:
    for path in sorted(private_dir(party.path / "received").glob("*.json")):
        if path.name == SOURCES_FILE:
            continue
        entry = read_json(path)
        if entry.get("receipt") and not entry.get("acknowledged"):
            _acknowledge(party, client, path.stem, entry["receipt"])
        elif entry.get("refusal") and not entry.get("refusal_sent"):
            _report_refusal(party, client, path.stem, entry["refusal"])


# ------------------------------------------------------------------ counting records


class CsvRows:
    """Counts the rows of a CSV stream fed in chunks (quoted newlines are not row ends; any field size)."""

    def __init__(self) -> None:
        self.rows = 0
        self._quoted = False
        self._last = b"\n"

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if not self._quoted and b'"' not in data:
            self.rows += data.count(b"\n")
        else:
            for i, part in enumerate(data.split(b'"')):
                if i:
                    self._quoted = not self._quoted
                if not self._quoted:
                    self.rows += part.count(b"\n")
        self._last = data[-1:]

    @property
    def records(self) -> int:
        """Data records: rows less the header, a last row without a newline counted."""
        rows = self.rows + (0 if self._last == b"\n" else 1)
        return max(rows - 1, 0)


# ------------------------------------------------------------------ download, decrypt, write


def _download(
    client: RelayClient,
    manifest: Manifest,
    work: SafeDir,
    partial: str,
    progress: Progress,
    tee: Callable[[bytes], None] | None = None,
) -> None:
    """Download into ``partial`` (resuming it), then check size and SHA-256 against the signed manifest. ``tee``
    also gets every byte downloaded, in order (``_Feed``: decryption as the payload arrives).

    The bytes a partial download kept on disk may not be the bytes that arrived then (a power loss after they were
    written, before they reached the disk): this party's own disk must not make it refuse a payload for good. A
    resumed download that fails the check is downloaded whole once more; only a whole download that fails is
    refused."""
    if _download_checked(client, manifest, work, partial, progress, tee, resume=tee is None):
        return
    progress.note(
        f"the partial download of {manifest.transfer_id} did not match its signed manifest once resumed; "
        "downloading it again from the start"
    )
    _download_checked(client, manifest, work, partial, progress, tee, resume=False)


def _download_checked(
    client: RelayClient,
    manifest: Manifest,
    work: SafeDir,
    partial: str,
    progress: Progress,
    tee: Callable[[bytes], None] | None,
    *,
    resume: bool,
) -> bool:
    """One download into ``partial`` and its check: True if it matches the manifest; False (the partial file gone)
    if it was resumed and does not; refused if it started from zero and does not. Without ``resume`` (a second
    attempt, or ``tee``, which must see every byte from the first) it starts from zero whatever is on disk."""
    if not resume:
        work.unlink(partial)
    start, digest = _resume_point(work, partial, manifest)
    task = progress.task(f"downloading {manifest.transfer_id[:8]}", manifest.size)
    task.advance(start)
    size = start
    try:
        with work.open_append(partial) as out:
            failures = 0
            while size < manifest.size:
                try:
                    for chunk in client.download(manifest.transfer_id, size):
                        digest.update(chunk)
                        out.write(chunk)
                        if tee is not None:
                            tee(chunk)
                        size += len(chunk)
                        task.advance(len(chunk))
                        if size > manifest.size:
                            break
                    break
                except Unavailable as exc:
                    # An interrupted download (a relay replica restarted, storage briefly unreachable): resume
                    # from what arrived, like an upload does, before giving up.
                    failures += 1
                    if not client.retry.pause(failures, exc):
                        raise DownloadBroken(
                            f"download of {manifest.transfer_id} kept breaking: {exc.message}"
                        ) from exc
            out.flush()
            os.fsync(out.fileno())
    except PayloadCorrupt as exc:
        # The relay's copy failed its own at-rest check (the stream was cut there, or refused at once): it holds the
        # transfer and will never serve it again. What arrived is a prefix of ciphertext nobody can use: dropped.
        work.unlink(partial)
        error = PayloadCorrupt(
            f"transfer {manifest.transfer_id} from {manifest.sender} failed the relay's integrity check: its stored "
            "copy was altered or damaged in the relay's storage; the relay holds it and will not serve it again, "
            "and its sender sees why; nothing written, no receipt sent"
        )
        raise _Refused(error) from exc
    finally:
        task.done()
    if size == manifest.size and digest.hexdigest() == manifest.sha256:
        return True
    work.unlink(partial)
    if start:
        return False
    raise _Refused(
        IntegrityError(
            f"payload {manifest.transfer_id} does not match its signed manifest (size or SHA-256): "
            "altered in storage or in transit; nothing written, no receipt sent"
        )
    )


def _resume_point(work: SafeDir, partial: str, manifest: Manifest) -> tuple[int, Any]:
    """Where a download into ``partial`` starts, and the SHA-256 of what is already there."""
    start = work.size(partial) or 0
    if start > manifest.size:
        work.unlink(partial)
        start = 0
    digest = hashlib.sha256()
    if start:
        with work.open_read(partial) as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return start, digest


class _Feed:
    """The bytes being downloaded, read by the decrypting thread as they arrive (``_download_decrypting``). At most
    ``DEPTH`` pieces wait (about 16 MiB): the download waits for decryption, never the other way round for long.
    A reader that stops early (a payload that fails a check) calls ``abandon``: what comes after is dropped."""

    DEPTH = 16

    def __init__(self) -> None:
        self._pieces: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self._current = b""
        self._at = 0
        self._ended = False
        self._abandoned = False

    def put(self, data: bytes) -> None:
        if not self._abandoned:
            self._pieces.put(bytes(data))

    def close(self) -> None:
        """The end of the stream (the download finished, or stopped)."""
        if not self._abandoned:
            self._pieces.put(None)

    def abandon(self) -> None:
        self._abandoned = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._pieces.get_nowait()

    def _next(self) -> bool:
        if self._ended:
            return False
        piece = self._pieces.get()
        if piece is None:
            self._ended = True
            return False
        self._current, self._at = piece, 0
        return True

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            parts = [self._current[self._at :]]
            while self._next():
                parts.append(self._current)
            self._current, self._at = b"", 0
            return b"".join(parts)
        while self._at >= len(self._current):
            if not self._next():
                return b""
        data = self._current[self._at : self._at + n]
        self._at += len(data)
        return data


def _download_decrypting(run: _Run, manifest: Manifest, partial: str) -> tuple[str, int | None, str]:
    """A routed CSV payload downloaded from its start and written as CSV: decrypted, decompressed and tagged on a
    second thread as it arrives, instead of read back from disk once downloaded (decision 0018); the download and
    the writing of the output overlap, on two cores where there are two. Every check stays: the download's size
    and SHA-256 against the signed manifest, age's authentication of every chunk, the decrypted ciphertext's own
    size and SHA-256, the decompression ceiling. The output is a temporary file, published only once they all
    passed; a download that fails its check is refused as before, whatever decryption made of its bytes."""
    target = run.out_dir.temp(run.out_dir.output_mode())
    feed = _Feed()
    outcome: dict[str, Any] = {}

    def decrypt() -> None:
        try:
            tagger = RowTagger(target.handle, manifest.batch_id, manifest.sender)
            outcome["records"] = _decrypt_into(run.party, manifest, feed, tagger)  # type: ignore[arg-type]  # a readable stream, not a full BinaryIO
        except BaseException as exc:  # noqa: BLE001 - handed to the downloading thread, which raises it
            outcome["error"] = exc
            feed.abandon()

    worker = threading.Thread(target=decrypt, name="labrelay-decrypt", daemon=True)
    try:
        worker.start()
        try:
            _download(run.client, manifest, run.work, partial, run.progress, tee=feed.put)
        finally:
            feed.close()
            worker.join()
        run.work.unlink(partial)  # downloaded whole and checked: the output is all that is kept
        if "error" in outcome:
            raise outcome["error"]
        name = output_stem(manifest) + FORMAT_EXTENSIONS["csv"]
        _publish(run.party, manifest, target, name, outcome["records"], "csv")
        return name, outcome["records"], "csv"
    except BaseException:
        target.discard()
        raise


class _Plaintext:
    """Where decrypted bytes go: gunzipped when the manifest says so (in bounded steps, with a ceiling against a
    decompression bomb; every member of the stream, bytes after the last one refused), counted, then written to
    the output (through a ``RowTagger`` for routed CSV)."""

    def __init__(self, out: Any, gzipped: bool, ceiling: int, rows: CsvRows | None = None) -> None:
        self._out = out
        self._inflate = isal_zlib.decompressobj(wbits=31) if gzipped else None
        self._ceiling = ceiling
        self._rows = rows
        self.written = 0
        self.newlines = 0

    def _emit(self, data: bytes) -> None:
        self.written += len(data)
        if self.written > self._ceiling:
            raise IntegrityError(f"payload decompresses to more than {self._ceiling} bytes; refusing it")
        self.newlines += data.count(b"\n")
        if self._rows is not None:
            self._rows.feed(data)
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
        finish = getattr(self._out, "finish", None)
        if finish is not None:
            finish()

    def flush(self) -> None:
        self._out.flush()

    def writable(self) -> bool:
        return True


def _routed_csv(manifest: Manifest) -> bool:
    return not manifest.unparsed and manifest.media_type == "text/csv"


def _decrypt_into(party: Party, manifest: Manifest, cipher: BinaryIO, out: Any) -> int | None:
    """Decrypt ``cipher`` into ``out`` (its plaintext, gunzipped); the records counted. Payload failures raise
    ``_Refused``."""
    identities = [i for i in party.identities if i.recipient == manifest.recipient_key]
    rows = CsvRows() if manifest.unparsed and manifest.media_type == "text/csv" else None
    try:
        sink = _Plaintext(out, manifest.compression == "gzip", max(INFLATE_RATIO * manifest.size, INFLATE_MIN), rows)
        expect = age_stream.Expected(manifest.size, manifest.sha256)  # as checked at download
        age_stream.decrypt(cipher, sink, identities, expect=expect)  # type: ignore[arg-type]  # _Plaintext is a writable sink, not a full BinaryIO
        sink.finish()
    except PAYLOAD_REFUSALS as exc:
        raise _Refused(exc) from exc
    if not manifest.unparsed:  # labrelay wrote it: one record per line (no embedded newline)
        return max(sink.newlines - (1 if manifest.media_type == "text/csv" else 0), 0)
    return rows.records if rows is not None else None


def _write_output(
    party: Party, manifest: Manifest, out_dir: SafeDir, work: SafeDir, partial: str, fmt: str
) -> tuple[str, int | None, str]:
    """Decrypt the verified download into its final file (``DATE_SENDER_BATCH8_RECIPIENT.ext``), in ``fmt`` when
    it is routed CSV. Returns (file name, records, the format written)."""
    stem = output_stem(manifest)
    target = out_dir.temp(out_dir.output_mode())
    try:
        if not _routed_csv(manifest):  # unparsed documents and FHIR NDJSON are written as they came
            with work.open_read(partial) as cipher:
                records = _decrypt_into(party, manifest, cipher, target.handle)
            name = stem + EXTENSIONS.get(manifest.media_type, ".bin")
            _publish(party, manifest, target, name, records, "as-sent")
            return name, records, "as-sent"
        if fmt == "csv":
            with work.open_read(partial) as cipher:
                tagger = RowTagger(target.handle, manifest.batch_id, manifest.sender)
                records = _decrypt_into(party, manifest, cipher, tagger)
            name = stem + FORMAT_EXTENSIONS[fmt]
            _publish(party, manifest, target, name, records, fmt)
            return name, records, fmt
        return _converted(party, manifest, work, partial, target, stem, fmt)
    except BaseException:
        target.discard()
        raise


def _converted(
    party: Party, manifest: Manifest, work: SafeDir, partial: str, target: TempFile, stem: str, fmt: str
) -> tuple[str, int | None, str]:
    """Excel or Parquet: the tagged CSV is written in the private work directory, converted, then removed."""
    from labrelay.client.formats import write_excel, write_parquet  # noqa: PLC0415 - loads polars

    tagged_name = f"{manifest.transfer_id}.tagged.csv"
    work.unlink(tagged_name)
    tagged = work.temp()
    try:
        with work.open_read(partial) as cipher:
            records = _decrypt_into(
                party, manifest, cipher, RowTagger(tagged.handle, manifest.batch_id, manifest.sender)
            )
        tagged.publish(tagged_name)
        if fmt == "excel":
            write_excel(work.path / tagged_name, target.handle)
        else:
            write_parquet(work.path / tagged_name, target.handle)
        name = stem + FORMAT_EXTENSIONS[fmt]
        _publish(party, manifest, target, name, records, fmt)
    finally:
        tagged.discard()
        work.unlink(tagged_name)
    return name, records, fmt


def _publish(party: Party, manifest: Manifest, target: TempFile, name: str, records: int | None, fmt: str) -> None:
    """Name a complete output, after writing in the journal which file it is (device, inode, size): a run killed
    between naming it and recording it received leaves a file the next run recognises as its own and finishes
    (``_pending_output``), where any other file of that name is refused as planted."""
    target.handle.flush()
    st = os.fstat(target.fd)
    mark = {"file": name, "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "records": records, "format": fmt}
    _update_journal(party, manifest.transfer_id, publishing=mark)
    target.publish(name)


def _pending_output(out_dir: SafeDir, known: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The output an earlier run named but did not record as received (killed between the two), if it is still
    there unchanged: the very file it wrote (device and inode), of the size it wrote, a regular file of ours. A
    file of that name that is anything else is not ours, and is refused as before."""
    mark = known.get("publishing") if known is not None and not known.get("receipt") else None
    if not isinstance(mark, dict) or not isinstance(name := mark.get("file"), str) or "/" in name:
        return None
    try:
        st = os.stat(name, dir_fd=out_dir.fd, follow_symlinks=False)
    except (OSError, ValueError):
        return None
    ours = stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
    same = (st.st_dev, st.st_ino, st.st_size) == (mark.get("dev"), mark.get("ino"), mark.get("size"))
    return mark if ours and same else None


def _write_sidecar(out_dir: SafeDir, name: str, doc: Mapping[str, Any], *, again: bool = False) -> None:
    """The ``.manifest.json`` beside an output; ``again``: finishing a killed run's output, whose sidecar may
    exist already (replaced, never followed)."""
    import json  # noqa: PLC0415 - only the --json sidecar needs it

    sidecar = out_dir.temp(out_dir.output_mode())  # as the output it describes
    try:
        sidecar.handle.write((json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
        if again:
            sidecar.replace(name)
        else:
            sidecar.publish(name)
    except BaseException:
        sidecar.discard()
        raise


def _refusal(party: Party, listing: Mapping[str, Any], transfer_id: str, error: LabrelayError, now: datetime) -> Any:
    """The signed refusal of a payload, built from the manifest the relay holds (the relay checks it matches)."""
    try:
        manifest = Manifest.from_payload(envelope_payload(listing["manifest"]))
    except (LabrelayError, KeyError, TypeError):
        return None
    detail = refusal_detail(error.message)
    refusal = TransferRefusal(
        transfer_id=transfer_id,
        sender=manifest.sender,
        recipient=party.name,
        sha256=manifest.sha256,
        size=manifest.size,
        reason=error.code,
        detail=detail,
        refused_at=now,
    )
    return party.sign(refusal.to_payload())


# ------------------------------------------------------------------ one transfer, all of them


@dataclass
class _Run:
    party: Party
    client: RelayClient
    directory: TrustedDirectory
    out_dir: SafeDir
    work: SafeDir
    clock: Clock
    sources: _Sources
    raw: bool = False
    fmt: str = "csv"
    progress: Progress = field(default_factory=NoProgress)
    policy: SignedPolicy | None = None  # the newest routing policy: with require_pq, classic keys are refused


def _fetch_one(run: _Run, listing: Mapping[str, Any]) -> Fetched:
    party, client = run.party, run.client
    transfer_id = str(listing.get("transfer_id"))
    try:
        manifest = verify_manifest(party, run.directory, listing["manifest"], transfer_id, now=run.clock.now())
    except PAYLOAD_REFUSALS as exc:
        raise _Refused(exc) from exc
    known = journal_entry(party, transfer_id)
    if known is not None and known.get("receipt"):
        # Already received and decrypted: the relay did not get (or is replaying) the receipt. Never decrypt twice.
        _acknowledge(party, client, transfer_id, known["receipt"])
        output = Path(known.get("output") or run.out_dir.path)
        return Fetched(
            transfer_id, manifest.sender, output, manifest.size, known.get("records"), acknowledged=True, again=True
        )
    if run.policy is not None and (why := classic_payload_refusal(run.policy, party.name, manifest)):
        raise _Refused(ClassicKeyRefused(why))
    first = None if manifest.again else run.sources.first(manifest)
    if first is not None:
        return _decline_duplicate(run, listing, manifest, first)
    partial = f"{transfer_id}.age.part"
    sidecar = {"manifest": listing["manifest"], "transfer_id": transfer_id, "unparsed": manifest.unparsed}
    stem = output_stem(manifest)
    if (mark := _pending_output(run.out_dir, known)) is not None:  # named by a run killed before it was recorded
        return _finish_named(run, listing, manifest, sidecar, mark, recorded=bool(known and known.get("raw")))
    if not run.raw and run.fmt == "csv" and _routed_csv(manifest) and not run.work.size(partial):
        return _received(run, listing, manifest, sidecar, _download_decrypting(run, manifest, partial))
    _download(client, manifest, run.work, partial, run.progress)
    if run.raw:
        st = os.stat(partial, dir_fd=run.work.fd, follow_symlinks=False)  # a link keeps the inode: the mark holds
        mark = {"file": f"{stem}.age", "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "format": "age"}
        _update_journal(party, transfer_id, publishing={**mark, "records": None})
        run.work.rename(partial, f"{stem}.age", into=run.out_dir)
        return _received_raw(run, listing, manifest, sidecar)
    try:
        result = _write_output(party, manifest, run.out_dir, run.work, partial, run.fmt)
    finally:
        run.work.unlink(partial)
    return _received(run, listing, manifest, sidecar, result)


def _finish_named(
    run: _Run,
    listing: Mapping[str, Any],
    manifest: Manifest,
    sidecar: dict[str, Any],
    mark: Mapping[str, Any],
    *,
    recorded: bool,
) -> Fetched:
    """The output a killed run named (``_pending_output``), recorded now as it would have been: nothing is
    downloaded or decrypted again. ``recorded``: a ``--raw`` payload the journal holds already."""
    if mark["format"] == "age":
        fetched = _received_raw(run, listing, manifest, sidecar, again=True)
        # Recorded already (a --raw fetch run again before its receipt): reported as already received, not anew.
        return replace(fetched, again=True) if recorded else fetched
    return _received(run, listing, manifest, sidecar, (mark["file"], mark["records"], mark["format"]), again=True)


def _received_raw(
    run: _Run, listing: Mapping[str, Any], manifest: Manifest, sidecar: dict[str, Any], *, again: bool = False
) -> Fetched:
    """A ``--raw`` payload named in the output directory: its sidecar and journal entry (the receipt comes later,
    from ``labrelay receipt``)."""
    stem = output_stem(manifest)
    final = run.out_dir.path / f"{stem}.age"
    _write_sidecar(run.out_dir, f"{stem}.manifest.json", sidecar, again=again)
    _update_journal(
        run.party,
        manifest.transfer_id,
        manifest=dict(listing["manifest"]),
        raw=str(final.resolve()),
        sha256=manifest.sha256,
        size=manifest.size,
    )
    run.sources.add(manifest)
    return _fetched(manifest, final, None, acknowledged=False, fmt="age")


def _received(
    run: _Run,
    listing: Mapping[str, Any],
    manifest: Manifest,
    sidecar: dict[str, Any],
    output: tuple[str, int | None, str],
    *,
    again: bool = False,
) -> Fetched:
    """A payload decrypted and written (file name, records, format): its sidecar, journal entry and receipt.
    ``again``: the output of a run killed before it recorded it (``_pending_output``), finished now."""
    party, client, transfer_id, stem = run.party, run.client, manifest.transfer_id, output_stem(manifest)
    name, records, written = output
    final = run.out_dir.path / name
    receipt = Receipt.of(manifest, ReceiptStatus.DECRYPTED, run.clock.now(), record_count=records)
    envelope = party.sign(receipt.to_payload())
    _write_sidecar(run.out_dir, f"{stem}.manifest.json", {**sidecar, "file": name, "receipt": envelope}, again=again)
    _update_journal(
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
    run.sources.add(manifest)
    _acknowledge(party, client, transfer_id, envelope)
    return _fetched(manifest, final, records, acknowledged=True, fmt=written)


def _fetched(manifest: Manifest, path: Path, records: int | None, *, acknowledged: bool, fmt: str) -> Fetched:
    return Fetched(
        manifest.transfer_id,
        manifest.sender,
        path,
        manifest.size,
        records,
        acknowledged=acknowledged,
        batch_id=manifest.batch_id,
        unparsed=manifest.unparsed,
        sent_again=manifest.again,
        output_format=fmt,
    )


def _decline_duplicate(run: _Run, listing: Mapping[str, Any], manifest: Manifest, first: str) -> Fetched:
    """A second copy of a source this recipient already has from this sender: not downloaded, not written;
    acknowledged with a signed "duplicate" receipt so that the relay deletes it and the sender sees why."""
    receipt = Receipt.of(manifest, ReceiptStatus.DUPLICATE, run.clock.now(), duplicate_of=first)
    envelope = run.party.sign(receipt.to_payload())
    earlier = journal_entry(run.party, first) or {}
    output = Path(str(earlier.get("output") or earlier.get("raw") or run.out_dir.path))
    _update_journal(
        run.party,
        manifest.transfer_id,
        manifest=dict(listing["manifest"]),
        duplicate_of=first,
        sha256=manifest.sha256,
        size=manifest.size,
        receipt=envelope,
        acknowledged=False,
    )
    _acknowledge(run.party, run.client, manifest.transfer_id, envelope)
    return Fetched(
        manifest.transfer_id,
        manifest.sender,
        output,
        manifest.size,
        None,
        acknowledged=True,
        batch_id=manifest.batch_id,
        unparsed=manifest.unparsed,
        duplicate_of=first,
    )


def fetch_one(
    party: Party,
    client: RelayClient,
    directory: TrustedDirectory,
    listing: Mapping[str, Any],
    out_dir: Path,
    clock: Clock,
    *,
    raw: bool = False,
    output_format: str = "csv",
    progress: Progress | None = None,
) -> Fetched:
    """One transfer, with every check of ``fetch_all``; a payload check that fails raises its error (nothing is
    written or acknowledged, and no refusal is sent: ``fetch_all`` does that). For callers that fetch transfers
    themselves, concurrently (the load benchmark): unlike ``fetch_all`` it takes no lock and tidies nothing."""
    with SafeDir.open(out_dir) as out, out.subdir(WORK_DIR) as work:
        run = _Run(party, client, directory, out, work, clock, _Sources(party), raw, output_format)
        run.progress = progress or NoProgress()
        try:
            return _fetch_one(run, listing)
        except _Refused as refused:
            raise refused.error from refused


def fetch_all(
    party: Party,
    client: RelayClient,
    out_dir: Path,
    clock: Clock,
    *,
    raw: bool = False,
    progress: Progress | None = None,
    output_format: str = "csv",
) -> FetchReport:
    """Fetch everything waiting. A payload that fails a check is refused (once, to the relay too) and the others
    go on; one that cannot be finished now (the relay unreachable…) is retried next time."""
    if output_format not in OUTPUT_FORMATS:
        raise UsageError(f"unknown output format {output_format!r}", hint=f"one of {', '.join(OUTPUT_FORMATS)}")
    report = FetchReport()
    with SafeDir.open(out_dir) as out, out.subdir(WORK_DIR) as work:
        try:
            sweep_temporaries(work.path)
            for name in list(work.names()):
                if name.endswith(".tagged.csv"):  # a plaintext a killed conversion left
                    work.unlink(name)
            _send_unacknowledged(party, client)
            run = _Run(
                party,
                client,
                TrustedDirectory(party.authority, client.directory(), clock.now()),
                out,
                work,
                clock,
                _Sources(party),
                raw,
                output_format,
                progress or NoProgress(),
                recipient_policy(client, party.authority, party.path),
            )
            if run.policy is not None:  # T43: a classic key is refused before anything is downloaded
                own = run.directory.require(party.name, RECEIVING_ROLES)
                refuse_classic_keys(run.policy.policy, [own], "fetch: nothing was downloaded")
            _fetch_listed(run, report)
        finally:
            with contextlib.suppress(OSError):  # the work directory goes, unless a partial download waits in it
                os.rmdir(WORK_DIR, dir_fd=out.fd)
    return report


def _fetch_listed(run: _Run, report: FetchReport) -> None:
    """Every transfer the relay lists for this party, one after the other, into ``report``."""
    party, client = run.party, run.client
    for listing in in_sending_order(client.transfers("inbox")):
        transfer_id = str(listing.get("transfer_id"))
        known = journal_entry(party, transfer_id)
        if known is not None and known.get("refusal"):
            if not known.get("refusal_sent"):
                _report_refusal(party, client, transfer_id, known["refusal"])
            report.skipped.append(transfer_id)  # refused before: never downloaded again
            continue
        try:
            report.fetched.append(_fetch_one(run, listing))
        except _Refused as refused:
            report.refused.append((transfer_id, refused.error))
            _refuse(run, listing, transfer_id, refused.error)
        except (OperationalError, UsageError) as exc:
            report.failed.append((transfer_id, exc))
            if isinstance(exc, Unavailable) and not isinstance(exc, DownloadBroken):
                break  # the relay is gone for now: the rest waits for the next run
        except LabrelayError:
            raise  # a security error that is not the payload's: stop here, nothing more is written
        except OSError as exc:  # the disk full, the inbox unwritable: said as the system says it, tried next run
            failure = OperationalError(f"could not write the output of {transfer_id}: {exc.strerror or exc}")
            report.failed.append((transfer_id, failure))
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                break  # every later payload would meet the same
        except Exception as exc:  # noqa: BLE001 - one payload's surprise must not block every later one
            failure = OperationalError(f"internal error ({type(exc).__name__}) while fetching {transfer_id}")
            failure.__cause__ = exc
            report.failed.append((transfer_id, failure))


def in_sending_order(listings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The relay's listing, taken in the order its senders made the transfers: by the manifest's ``created``
    instant, and within one instant a copy sent by mistake before a copy sent ``--again``. The relay's own
    order breaks ties of ``created_at`` at random, and the first copy of a source received is the one a later copy
    is declined against: an original listed after its ``--again`` copy would be declined as a duplicate of it.
    The payloads read here are not verified yet; they only order the work, each is verified before it is used."""

    def key(listing: object) -> tuple[float, bool]:
        envelope = listing.get("manifest") if isinstance(listing, Mapping) else None
        payload = envelope.get("payload") if isinstance(envelope, Mapping) else None
        try:
            if not isinstance(payload, Mapping):
                raise ValueError("no manifest payload")
            created = from_rfc3339(str(payload.get("created"))).timestamp()  # any offset or fraction, as verified
        except ValueError:
            return (float("-inf"), False)  # malformed: refused when its turn comes, first
        return (created, payload.get("again") is True)

    return sorted(listings, key=key)  # stable: the relay's order otherwise


def _refuse(run: _Run, listing: Mapping[str, Any], transfer_id: str, error: LabrelayError) -> None:
    if isinstance(error, PayloadCorrupt):  # the relay's own check failed and it holds the transfer: nothing to sign
        _update_journal(
            run.party,
            transfer_id,
            manifest=dict(listing.get("manifest") or {}),
            relay_held={"code": error.code, "message": error.message, "at": run.clock.now().isoformat()},
        )
        return
    envelope = _refusal(run.party, listing, transfer_id, error, run.clock.now())
    _update_journal(
        run.party,
        transfer_id,
        manifest=dict(listing.get("manifest") or {}),
        refused={"code": error.code, "message": error.message, "at": run.clock.now().isoformat()},
        refusal=envelope,
        refusal_sent=False,
    )
    if envelope is not None:
        _report_refusal(run.party, run.client, transfer_id, envelope)


def acknowledge(
    party: Party, client: RelayClient, transfer_id: str, clock: Clock, *, payload_file: Path | None = None
) -> Receipt:
    """Send the receipt for a transfer fetched with ``--raw`` (status ``received``: hash checked, not decrypted).

    The receipt attests a check this party made: either ``payload_file`` matches the signed manifest now, or
    this party's journal records a verified ``--raw`` download of exactly this payload.
    """
    listing = client.transfer(transfer_id)
    directory = TrustedDirectory(party.authority, client.directory(), clock.now())
    manifest = verify_manifest_ignoring_deadline(party, directory, listing["manifest"], transfer_id)
    if payload_file is not None:
        with payload_file.open("rb") as fh:
            size, sha = age_stream.hash_file(fh)
        if size != manifest.size or sha != manifest.sha256:
            raise IntegrityError(f"{payload_file} does not match the signed manifest of {transfer_id}")
    else:
        known = journal_entry(party, transfer_id)
        if known is None or known.get("sha256") != manifest.sha256 or known.get("size") != manifest.size:
            raise UsageError(
                f"{party.name} has no verified download of {transfer_id}",
                hint="fetch it with --raw first, or pass --file with the payload to check",
            )
    receipt = Receipt.of(manifest, ReceiptStatus.RECEIVED, clock.now())
    envelope = party.sign(receipt.to_payload())
    _update_journal(
        party,
        transfer_id,
        manifest=dict(listing["manifest"]),
        sha256=manifest.sha256,
        size=manifest.size,
        receipt=envelope,
        acknowledged=False,
    )
    client.send_receipt(transfer_id, envelope)
    _update_journal(party, transfer_id, acknowledged=True)
    return receipt
