"""Send: seal to each recipient's verified key, sign a manifest per recipient, upload resumably; once per source.

Two ways in: ``send_file`` sends any document as it is (``--as-is``, only to recipients the policy lets receive
unparsed documents); ``labrelay.client.routed.send_results`` validates, routes and minimises a lab-results file
under the signed policy and seals one payload per recipient with the same steps (kept apart so that commands that
do not route never load polars).

Order matters, and it is the security argument:
1. every recipient is resolved in the directory and verified against the pinned authority key *before*
   anything is encrypted (a relay that substitutes a key is caught here), and the deadline is checked against the
   relay's maximum;
2. the file is age-encrypted once per recipient, streaming, into the party's outbox (ciphertext only; the
   plaintext is read, never copied), hashing the ciphertext as it is written, unnamed until complete;
3. a manifest per transfer is signed and kept with the ciphertext, so an interrupted upload resumes later
   (``labrelay resume``) without re-encrypting;
4. each upload starts from the relay's offset and is verified by the relay against the signed hash.

Idempotence: a batch is the lab's and its source file's (``labrelay.client.batches``). Sending a source again finds
its batch, finishes what is unfinished and seals nothing anew; ``again=True`` makes a new batch on purpose.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from labrelay.client.api import RelayClient
from labrelay.client.batches import AS_IS, SEALED, SEALING, SENT, BatchEntry, BatchIndex, SourceDigest, digest
from labrelay.client.files import SafeDir, sweep_temporaries
from labrelay.client.keystore import Party
from labrelay.client.policy import current_policy, refuse_classic_keys
from labrelay.client.progress import NoProgress, Progress, ProgressTask
from labrelay.client.spool import SealedSpool
from labrelay.client.trust import TrustedDirectory
from labrelay.crypto.envelopes import envelope_payload
from labrelay.domain.names import new_id
from labrelay.domain.parties import RECEIVING_ROLES, SENDING_ROLES, PartyEntry
from labrelay.domain.timeutil import format_duration, to_rfc3339
from labrelay.domain.transfers import Manifest
from labrelay.errors import (
    LabrelayError,
    NotFound,
    OperationalError,
    PermissionDenied,
    SecurityError,
    TooLarge,
    UsageError,
)
from labrelay.jsonfile import read_json, write_json_atomic
from labrelay.ports import Clock

UPLOAD_CHUNK = 16 * 1024 * 1024  # memory does not depend on it: chunks stream from the spool file
UPLOAD_THREADS = 3
"""Payloads of a batch uploaded at once, each on its own connection: the relay creates a transfer and makes each
chunk durable (hash, seal at rest, store) while the client waits, so one upload at a time leaves both sides mostly
idle. Below the relay's ``max_uploads_per_party`` (4), which a refusal would be retried after anyway."""
MEDIA_TYPES = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".hl7": "application/x-hl7-v2",
    ".txt": "text/plain",
}


class NothingSent(OperationalError):
    """A send that sends nothing (every record rejected, a stricter job's threshold crossed, nothing addressed to
    an enrolled recipient): a failure for the script that runs it, exit 1."""

    code = "nothing-sent"


@dataclass(frozen=True, slots=True)
class RejectLimit:
    """``--max-rejected``: a count (``N``) or a share of the records read (``P%``) above which nothing is sent."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> RejectLimit:
        value = text.strip()
        try:
            if value.endswith("%"):
                percent = float(value[:-1])
                if not 0 <= percent <= 100:
                    raise ValueError(value)
                return cls(percent=percent)
            count = int(value)
            if count < 0:
                raise ValueError(value)
            return cls(count=count)
        except ValueError:
            raise UsageError(f"--max-rejected {text!r}: give a number of records (50) or a share (2%)") from None

    def crossed(self, rejected: int, read: int) -> bool:
        if self.count is not None:
            return rejected > self.count
        return read > 0 and self.percent is not None and rejected * 100 > self.percent * read

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


@dataclass(frozen=True, slots=True)
class Sent:
    transfer_id: str
    recipient: str
    size: int
    sha256: str


@dataclass
class SendOutcome:
    """What a send did. ``already``: the source had been sent as ``batch_id`` before; nothing was sealed now."""

    batch_id: str
    transfers: dict[str, str]  # recipient → transfer id, for the whole batch
    sent: list[Sent] = field(default_factory=list)  # uploaded by this run
    already: bool = False
    delivered: int | None = None  # for a batch sent before: how many of its transfers the recipients acknowledged
    source_sha256: str = ""
    records: int = 0  # records read (routed), for the closing line

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "source_sha256": self.source_sha256,
            "already_sent": self.already,
            "transfers": dict(sorted(self.transfers.items())),
            "uploaded": [{"transfer_id": s.transfer_id, "recipient": s.recipient, "size": s.size} for s in self.sent],
            "delivered": self.delivered,
        }


class _CountingReader:
    """Reports plaintext progress while the age writer reads the source."""

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


def check_ttl(client: RelayClient, ttl: timedelta) -> None:
    """Refuse, before anything is sealed, a deadline the relay would refuse at upload (``--ttl`` over its maximum):
    a payload sealed with it could never be uploaded."""
    limits = client.limits()
    longest = timedelta(seconds=int(limits.get("max_ttl_seconds", 0)))
    if longest <= timedelta(0):
        raise OperationalError("the relay did not say how long it keeps payloads")
    if ttl > longest:
        raise UsageError(
            f"--ttl {format_duration(ttl)} is longer than the relay keeps payloads ({format_duration(longest)})",
            hint=f"use --ttl {format_duration(longest)} or less",
        )


def seal(
    party: Party,
    source: Path,
    recipients: Sequence[PartyEntry],
    ttl: timedelta,
    clock: Clock,
    *,
    record_count: int | None = None,
    progress: Progress | None = None,
    batch_id: str | None = None,
    source_sha256: str | None = None,
    again: bool = False,
    before_naming: Callable[[], None] | None = None,
) -> list[Path]:
    """Encrypt ``source`` to each recipient into the outbox and sign a manifest each. Returns the pending uploads
    (each the path of the signed manifest kept beside its sealed payload in the outbox).

    Every payload is sealed unnamed first; ``before_naming`` runs once all are complete, just before any is given
    its name in the outbox (a killed run leaves nothing before that point)."""
    progress = progress or NoProgress()
    if not source.is_file():
        raise UsageError(f"{source} is not a readable file")
    batch_id = batch_id or new_id()
    created = clock.now()
    sealed: list[tuple[SealedSpool, Manifest]] = []
    with SafeDir.open(party.ensure_outbox(), create=False) as outbox, contextlib.ExitStack() as spools:
        for entry in recipients:
            spool = spools.enter_context(SealedSpool(outbox, entry.age_recipient))  # discarded unless named
            task = progress.task(f"sealing for {entry.name}", source.stat().st_size)
            try:
                with source.open("rb") as plain:
                    ciphertext = spool.seal_from(_CountingReader(plain, task))
            finally:
                task.done()
            manifest = Manifest.sealed_for(
                entry,
                ciphertext,
                transfer_id=new_id(),
                batch_id=batch_id,
                sender=party.name,
                media_type=media_type_for(source),
                record_count=record_count,
                created=created,
                ttl=ttl,
                source_sha256=source_sha256,
                again=again,
            )
            sealed.append((spool, manifest))
        if before_naming is not None:
            before_naming()
        pending_paths = []
        for spool, manifest in sealed:
            spool.publish(f"{manifest.transfer_id}.age")
            pending_paths.append(keep_manifest(party, manifest, source=source.name))
    return pending_paths


def keep_manifest(party: Party, manifest: Manifest, **extra: str) -> Path:
    """Sign ``manifest`` and keep it beside its sealed payload in the outbox, for ``upload`` (and ``resume``)."""
    pending_path = party.ensure_outbox() / f"{manifest.transfer_id}.json"
    write_json_atomic(
        pending_path, {"manifest": party.sign(manifest.to_payload()), "batch_id": manifest.batch_id, **extra}
    )
    return pending_path


def upload(
    party: Party,
    client: RelayClient,
    pending_path: Path,
    progress: Progress | None = None,
    *,
    stop: threading.Event | None = None,
) -> Sent:
    """Create the transfer (idempotent) and upload its ciphertext from wherever the relay has it; ``stop``, once
    set, ends the upload at its next chunk (``OperationalError``: it stays pending, resumable)."""
    progress = progress or NoProgress()
    kept: dict[str, Any] = read_json(pending_path)
    envelope = kept["manifest"]
    manifest = Manifest.from_payload(envelope_payload(envelope))
    spool = pending_path.with_suffix(".age")
    created = client.create_transfer(envelope)
    # Where the relay's copy ends, as it just said: a fresh transfer's upload starts without asking again. A whole
    # upload the relay has not finished (a crash before its last answer) is asked about: the HEAD finishes it.
    told = created.get("uploaded")
    start = told if isinstance(told, int) and not isinstance(told, bool) and 0 <= told < manifest.size else None
    task = progress.task(f"uploading to {manifest.recipient}", manifest.size)
    try:
        with spool.open("rb") as fh:
            client.upload(
                manifest.transfer_id, fh, manifest.size, UPLOAD_CHUNK, on_progress=task.advance, stop=stop, offset=start
            )
    finally:
        task.done()
    write_json_atomic(party.ensure_sent_dir() / pending_path.name, {**kept, "server": client.base})
    spool.unlink()
    pending_path.unlink()
    return Sent(manifest.transfer_id, manifest.recipient, manifest.size, manifest.sha256)


def pending(party: Party) -> list[Path]:
    return sorted(p for p in party.ensure_outbox().glob("*.json") if not p.name.startswith("."))


def pending_of(party: Party, batch_id: str) -> list[Path]:
    found = []
    for pending_path in pending(party):
        with contextlib.suppress(OSError, ValueError):
            if read_json(pending_path).get("batch_id") == batch_id:
                found.append(pending_path)
    return found


def drop_pending(pending_path: Path) -> None:
    """Remove one sealed payload and its manifest from the outbox (it will not be uploaded)."""
    pending_path.with_suffix(".age").unlink(missing_ok=True)
    pending_path.unlink(missing_ok=True)


def tidy(party: Party) -> list[str]:
    """What killed runs left, removed (call while holding the party's lock): temporary files, sealed payloads whose
    manifest was never written, and the partly sealed payloads of batches whose sealing never finished. Returns the
    batch ids of those abandoned batches (started again by the next send of their source)."""
    outbox = party.ensure_outbox()
    # "ledger" is client/ledger.LEDGER_DIR, spelt out: importing that module would load the record stack (polars)
    for folder in (outbox, party.path / "reports", party.path / "ledger", party.path / "batches"):
        sweep_temporaries(folder)
    for spool in outbox.glob("*.age"):
        if not spool.with_suffix(".json").exists():
            spool.unlink(missing_ok=True)
    # A batch on record as "sealing" was killed while its payloads were being named (its record is written just
    # before): its payloads in the outbox are dropped, and so is the record. Found from the outbox (usually empty),
    # not by reading every batch the lab ever sent.
    abandoned = []
    index = BatchIndex(party.path)
    for pending_path in pending(party):
        with contextlib.suppress(OSError, ValueError, LabrelayError):
            manifest = Manifest.from_payload(envelope_payload(read_json(pending_path)["manifest"]))
            if manifest.source_sha256 is None or manifest.batch_id in abandoned:
                continue
            for record in index.of_source(manifest.source_sha256):
                if record.batch_id == manifest.batch_id and record.state == SEALING:
                    for leftover in pending_of(party, record.batch_id):
                        drop_pending(leftover)
                    index.drop(record)
                    abandoned.append(record.batch_id)
    return abandoned


# ------------------------------------------------------------------ once per source


def find_sent(
    party: Party, source_digest: SourceDigest, *, again: bool, requested: Sequence[str] = ()
) -> BatchEntry | None:
    """The batch this source was already sent as (when it must not be sent again), or None."""
    if again:
        return None
    batches = [b for b in BatchIndex(party.path).of_source(source_digest.sha256) if b.state != SEALING]
    if not batches:
        return None
    latest = batches[-1]
    asked = set(requested) - set(latest.transfers) - set(latest.recipients)
    if asked and latest.recipients:
        raise UsageError(
            f"this file was already sent as batch {latest.batch_id} to {', '.join(sorted(latest.transfers))}, "
            f"not to {', '.join(sorted(asked))}",
            hint="to send it again as a new batch, add --again",
        )
    if latest.recipients and not requested:  # sent with --to (a trial, say); now asked for every recipient
        raise UsageError(
            f"this file was already sent as batch {latest.batch_id} to {', '.join(sorted(latest.recipients))} only "
            "(--to), not to every recipient of the policy",
            hint="to send it to every recipient as a new batch, add --again",
        )
    return latest


def upload_all(
    party: Party, client: RelayClient, pending_paths: Sequence[Path], progress: Progress | None = None
) -> list[Sent]:
    """Upload each pending payload (``upload``), ``UPLOAD_THREADS`` at a time, the largest first; the results in the
    order given. On a failure no payload not yet started is, those under way finish (or fail), and the first
    security failure (exit 3: an incident, never hidden behind another payload's retryable one) or else the first
    failure in the order given is raised: what was not uploaded stays pending, for ``labrelay resume``. An interrupt
    (Ctrl-C, or the CLI's ``Terminated`` on SIGTERM) while waiting cancels what has not started, stops those under
    way at their next chunk, and propagates once their threads are done."""
    if len(pending_paths) <= 1:
        return [upload(party, client, pending_path, progress) for pending_path in pending_paths]
    largest_first = sorted(pending_paths, key=lambda p: p.with_suffix(".age").stat().st_size, reverse=True)
    stop = threading.Event()
    pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload")
    try:
        futures = {p: pool.submit(upload, party, client, p, progress, stop=stop) for p in largest_first}
        wait(futures.values(), return_when=FIRST_EXCEPTION)
        if any(f.done() and f.exception() is not None for f in futures.values()):
            for future in futures.values():
                future.cancel()
            wait(futures.values())
            failures = [
                error
                for p in pending_paths
                if not (future := futures[p]).cancelled() and (error := future.exception()) is not None
            ]
            raise next((e for e in failures if isinstance(e, SecurityError)), failures[0])
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [futures[pending_path].result() for pending_path in pending_paths]


def finish_sent(party: Party, client: RelayClient, record: BatchEntry, progress: Progress | None = None) -> SendOutcome:
    """A source sent before: upload whatever of its batch is still pending, and say how far delivery got."""
    sent = upload_all(party, client, pending_of(party, record.batch_id), progress)
    if record.state != SENT:
        record.state = SENT
        BatchIndex(party.path).save(record)
    return SendOutcome(
        record.batch_id,
        dict(record.transfers),
        sent,
        already=True,
        delivered=delivered_count(client, record.transfers.values()),
        source_sha256=record.source_sha256,
    )


def delivered_count(client: RelayClient, transfer_ids: Any) -> int:
    """How many of these transfers their recipients acknowledged (a signed receipt the relay accepted)."""
    count = 0
    for transfer_id in transfer_ids:
        with contextlib.suppress(NotFound):
            if client.transfer(transfer_id).get("state") == "delivered":
                count += 1
    return count


def upload_batch(
    party: Party, client: RelayClient, record: BatchEntry, pending_paths: list[Path], progress: Progress | None = None
) -> list[Sent]:
    """The batch is sealed (its manifests kept): say so, then upload every payload and say that too."""
    index = BatchIndex(party.path)
    record.state = SEALED
    index.save(record)
    sent = upload_all(party, client, pending_paths, progress)
    record.state = SENT
    index.save(record)
    return sent


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
    again: bool = False,
) -> SendOutcome:
    """Send ``source`` unparsed (``--as-is``) to ``recipients``, each of whom the policy in force must let receive
    unparsed documents (a document sent as it is carries every field it holds: never to a pseudonymised or
    minimised recipient). Once per source, unless ``again``."""
    if party.role not in SENDING_ROLES:
        raise PermissionDenied(f"{party.name} is a {party.role.value}; only lab parties send")
    if not source.is_file():
        raise UsageError(f"{source} is not a readable file")
    source_digest = digest(source)
    known = find_sent(party, source_digest, again=again, requested=recipients)
    if known is not None:
        return finish_sent(party, client, known, progress)
    entries = verified_recipients(party, client, recipients, clock)
    policy = current_policy(client, party.authority, party.path, clock.now())
    refuse_classic_keys(policy, entries, f"seal {source.name} to them: nothing was sent")
    for entry in entries:
        refusal = policy.unparsed_refusal(entry.name)
        if refusal is not None:
            raise PermissionDenied(
                f"refusing to send {source.name} unparsed: {refusal}",
                hint="send lab results without --as-is: they are validated and minimised for each recipient",
            )
    check_ttl(client, ttl)
    record = BatchEntry(
        batch_id=new_id(),
        source_sha256=source_digest.sha256,
        source=source.name,
        mode=AS_IS,
        created=to_rfc3339(clock.now()),
        recipients=sorted(e.name for e in entries),
        again=again,
    )
    index = BatchIndex(party.path)
    try:
        pending_paths = seal(
            party,
            source,
            entries,
            ttl,
            clock,
            record_count=record_count,
            progress=progress,
            batch_id=record.batch_id,
            source_sha256=source_digest.sha256,
            again=again,
            before_naming=lambda: index.save(record),
        )
    except BaseException:
        for pending_path in pending_of(party, record.batch_id):
            drop_pending(pending_path)
        index.drop(record)
        raise
    record.transfers = {_recipient_of(s): s.stem for s in pending_paths}
    sent = upload_batch(party, client, record, pending_paths, progress)
    return SendOutcome(record.batch_id, dict(record.transfers), sent, source_sha256=source_digest.sha256)


def _recipient_of(pending_path: Path) -> str:
    manifest = Manifest.from_payload(envelope_payload(read_json(pending_path)["manifest"]))
    return manifest.recipient


# ------------------------------------------------------------------ resume


PERMANENT = (SecurityError, UsageError, TooLarge, NotFound)
"""Refusals an upload meets again however often it is retried: the manifest's terms, the parties' standing."""


@dataclass
class ResumeReport:
    sent: list[Sent] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)  # past their deadline before they could be uploaded: removed
    stuck: list[tuple[str, LabrelayError]] = field(default_factory=list)  # refused by the relay: kept, reported

    def as_dict(self) -> dict[str, Any]:
        return {
            "uploaded": [{"transfer_id": s.transfer_id, "recipient": s.recipient, "size": s.size} for s in self.sent],
            "expired": self.expired,
            "stuck": [{"transfer_id": t, "code": e.code, "message": e.diagnostics()} for t, e in self.stuck],
        }


def resume_all(party: Party, client: RelayClient, clock: Clock, progress: Progress | None = None) -> ResumeReport:
    """Upload every sealed payload still in the outbox. One that can never be uploaded (the relay refuses its
    manifest: a deadline over its maximum, a recipient revoked…) is reported and kept for ``resume --discard``;
    the others go on. One past its deadline is removed: nobody may receive it any more. A relay that cannot be
    reached (or is frozen) stops the run: everything is retried next time."""
    report = ResumeReport()
    batches: set[str] = set()
    for pending_path in pending(party):
        doc = read_json(pending_path)
        manifest = Manifest.from_payload(envelope_payload(doc["manifest"]))
        batches.add(str(doc.get("batch_id", manifest.batch_id)))
        if manifest.deadline <= clock.now():
            drop_pending(pending_path)
            report.expired.append(manifest.transfer_id)
            continue
        try:
            report.sent.append(upload(party, client, pending_path, progress))
        except PERMANENT as exc:
            report.stuck.append((manifest.transfer_id, exc))
    _mark_finished(party, batches)
    return report


def discard(party: Party, client: RelayClient | None, transfer_prefix: str) -> str:
    """Remove one pending upload from the outbox (``resume --discard ID``), and cancel its upload on the relay if it
    began there. Returns the transfer id."""
    matches = [s for s in pending(party) if s.stem.startswith(transfer_prefix)]
    if len(transfer_prefix) < 8 or not matches:
        raise UsageError(f"no pending upload {transfer_prefix!r}", hint="labrelay resume --json lists them")
    if len(matches) > 1:
        raise UsageError(f"several pending uploads start with {transfer_prefix}", hint="give more of the id")
    pending_path = matches[0]
    batch_id = str(read_json(pending_path).get("batch_id", ""))
    if client is not None:
        with contextlib.suppress(LabrelayError):
            client.cancel_upload(pending_path.stem)
    drop_pending(pending_path)
    _mark_finished(party, {batch_id})
    return pending_path.stem


def _mark_finished(party: Party, batch_ids: set[str]) -> None:
    """Batches with nothing left in the outbox are sent (or finished with what could be)."""
    index = BatchIndex(party.path)
    left = {str(read_json(s).get("batch_id", "")) for s in pending(party)}
    for record in index.all():
        if record.batch_id in batch_ids and record.batch_id not in left and record.state == SEALED:
            record.state = SENT
            index.save(record)
