"""Send lab results: validate, route and minimise under the signed policy, then seal and upload one payload per
recipient, each holding only that recipient's records and fields (gzip, then age, streaming).

The security order of ``labrelay.client.send`` holds here too: the policy is verified against the pinned authority
key, and every recipient resolved and verified in the directory, before a single record is encrypted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO, TextIO

from isal import igzip

from labrelay.batch.outputs import RecordSink
from labrelay.batch.pipeline import RejectionReport, ReviewFile, Summary, open_reader, run
from labrelay.batch.route import Destination, Router, destinations
from labrelay.batch.validate import Validator
from labrelay.client.api import RelayClient
from labrelay.client.files import private_dir, write_json_atomic
from labrelay.client.keystore import Party
from labrelay.client.ledger import DEFAULT_RETENTION, LedgerWriter, choose_dpo, purge, transfer_fact
from labrelay.client.policy import current_policy
from labrelay.client.progress import NoProgress, Progress
from labrelay.client.send import GZIP_LEVEL, Sent, upload
from labrelay.client.trust import TrustedDirectory
from labrelay.crypto import age_stream
from labrelay.domain.names import new_id
from labrelay.domain.parties import RECEIVING_ROLES, SENDING_ROLES, PartyEntry
from labrelay.domain.transfers import Manifest
from labrelay.errors import OperationalError, PermissionDenied, UsageError
from labrelay.ports import Clock
from labrelay.refdata import communes, department_regions


@dataclass
class RoutedSend:
    summary: Summary
    sent: list[Sent]
    rejections: Path
    review: Path
    skipped: list[str]  # destinations with no record in this batch


@dataclass
class _Output:
    dest: Destination
    transfer_id: str
    spool: Path
    handle: BinaryIO
    sealer: age_stream.StreamingSealer
    gzip: igzip.IGzipFile
    sink: RecordSink
    entry: PartyEntry


def _open_output(party: Party, dest: Destination, entry: PartyEntry) -> _Output:
    transfer_id = new_id()
    spool = party.outbox / f"{transfer_id}.age"
    handle = os.fdopen(os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
    sealer = age_stream.StreamingSealer(handle, entry.age_recipient)
    compressed = igzip.IGzipFile(fileobj=sealer, mode="wb", mtime=0, compresslevel=GZIP_LEVEL)  # type: ignore[no-untyped-call]
    sink = RecordSink(compressed, dest.rule.fields, dest.rule.format)
    return _Output(dest, transfer_id, spool, handle, sealer, compressed, sink, entry)


def _private_text(path: Path) -> TextIO:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8", newline="")


def send_results(
    party: Party,
    client: RelayClient,
    source: Path,
    ttl: timedelta,
    clock: Clock,
    *,
    restrict: Sequence[str] | None = None,
    input_format: str = "auto",
    progress: Progress | None = None,
    dpo: str | None = None,
    ledger_retention: timedelta = DEFAULT_RETENTION,
) -> RoutedSend:
    """Validate, route and minimise a results file under the signed policy; seal and send one payload per
    recipient. Records are read once, streaming; plaintext goes only through memory and pipes."""
    progress = progress or NoProgress()
    if party.role not in SENDING_ROLES:
        raise PermissionDenied(f"{party.name} is a {party.role.value}; only lab parties send")
    fmt, reader = open_reader(source, input_format)  # local first: is this a results file at all?
    directory = TrustedDirectory(party.authority, client.directory(), clock.now())
    policy = current_policy(client, party.authority)
    regions = set(department_regions().values())
    addressed = {d.name for d in destinations(policy, regions)}
    # A recipient this send names, or one the relay served a forged record for, gets the full check first: a
    # forged, revoked or unknown recipient is refused as such, not routed around.
    for name in sorted((set(restrict or ()) | set(directory.untrusted)) & addressed):
        directory.require(name, RECEIVING_ROLES)
    dpo_entry = choose_dpo(directory, dpo)  # no ledger, no send: the breach response depends on it
    purge(party.path, clock.now())
    enrolled = {e.name for e in directory.in_force() if e.role in RECEIVING_ROLES}
    router = Router(policy, regions, enrolled, restrict=restrict, pseudonym_key=party.pseudonym_key())
    validator = Validator(
        today=clock.now().date(),
        loinc=policy.loinc,
        communes=[c.insee for c in communes()],
        department_regions=department_regions(),
    )
    batch_id = new_id()
    created = clock.now()
    reports = private_dir(party.path / "reports")
    rejections_path = reports / f"{batch_id}.rejections.csv"
    review_path = reports / f"{batch_id}.review.csv"
    if ledger_retention < ttl:
        raise UsageError("the ledger must be kept at least as long as the payloads it describes (--ttl)")
    outputs = [_open_output(party, d, directory.require(d.name, RECEIVING_ROLES)) for d in router.destinations]
    try:
        ledger = LedgerWriter.open(
            party.path, batch_id, dpo_entry, {o.dest.name: o.transfer_id for o in outputs}, party.pseudonym_key()
        )
    except BaseException:
        for out in outputs:
            _discard(out)
        raise
    summary = Summary(
        fmt, ignored_columns=getattr(getattr(reader, "layout", None), "ignored", ()), policy_version=policy.version
    )
    task = progress.task(f"validating and routing {source.name}", None)
    try:
        with _private_text(rejections_path) as rej, _private_text(review_path) as rev:
            run(
                reader,
                validator,
                summary=summary,
                report=RejectionReport(rej),
                review=ReviewFile(rev),
                router=router,
                sinks={o.dest.name: o.sink for o in outputs},
                on_batch=lambda b: task.advance(b.read),
                ledger=ledger.sink,
            )
        if not summary.reconciled:  # fail closed: never send a batch whose counts do not add up
            raise OperationalError(
                f"internal error: {summary.read} records read, {summary.accepted} accepted, "
                f"{summary.rejected} rejected, {summary.held} held; nothing sent"
            )
        states, skipped = _seal_all(party, outputs, batch_id, created, ttl, policy.version)
        facts = [
            transfer_fact(
                o.transfer_id, o.dest.name, o.entry.age_recipient, o.sink.records, created + ttl, o.dest.rule.fields
            )
            for o in outputs
            if o.sink.records
        ]
        ledger.finish(party.name, created, policy.version, facts, ledger_retention)
    except BaseException:
        for out in outputs:
            _discard(out)
        ledger.discard()
        raise
    finally:
        task.done()
    sent = [upload(party, client, state, progress) for state in states]
    return RoutedSend(summary, sent, rejections_path, review_path, skipped)


def _discard(out: _Output) -> None:
    """Leave nothing of a send that failed: not the spool, not the upload state that ``resume`` would pick up."""
    with contextlib.suppress(Exception):
        out.sealer.abort()
    with contextlib.suppress(OSError):
        out.handle.close()
    out.spool.unlink(missing_ok=True)
    (out.spool.parent / f"{out.transfer_id}.json").unlink(missing_ok=True)


def _seal_all(
    party: Party, outputs: list[_Output], batch_id: str, created: datetime, ttl: timedelta, policy_version: str
) -> tuple[list[Path], list[str]]:
    states, skipped = [], []
    for out in outputs:
        out.gzip.close()
        size, sha256 = out.sealer.close()
        out.handle.flush()
        os.fsync(out.handle.fileno())
        out.handle.close()
        if out.sink.records == 0:
            out.spool.unlink()
            skipped.append(out.dest.name)
            continue
        manifest = Manifest(
            transfer_id=out.transfer_id,
            batch_id=batch_id,
            sender=party.name,
            recipient=out.dest.name,
            recipient_key=out.entry.age_recipient,
            size=size,
            sha256=sha256,
            record_count=out.sink.records,
            media_type=out.sink.media_type,
            created=created,
            deadline=created + ttl,
            policy_version=policy_version,
            compression="gzip",
        )
        state = party.outbox / f"{out.transfer_id}.json"
        write_json_atomic(state, {"manifest": party.sign(manifest.to_payload()), "batch_id": batch_id})
        states.append(state)
    return states, skipped
