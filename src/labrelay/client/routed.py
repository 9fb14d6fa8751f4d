"""Send lab results: validate, route and minimise under the signed policy, then seal and upload one payload per
recipient, each holding only that recipient's records and fields (gzip, then age, streaming).

The security order of ``labrelay.client.send`` holds here too: the policy is verified against the pinned authority
key, and every recipient resolved and verified in the directory, before a single record is encrypted. A send that
would send nothing (every record rejected, a stricter job's threshold crossed) seals nothing that survives: it is
refused with exit 1 and its reports kept for the lab to read. Held shares (an ARS not enrolled yet) stay in the
batch's review file until ``send_held`` delivers them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from labrelay.batch.outputs import RecordSink
from labrelay.batch.pipeline import NO_ARS, Reader, RejectionReport, ReviewFile, Summary, open_reader, run
from labrelay.batch.route import Destination, Router, destinations
from labrelay.batch.validate import Validator
from labrelay.client.api import RelayClient
from labrelay.client.batches import HELD, ROUTED, SEALING, SENT, BatchEntry, BatchIndex, SourceDigest, digest
from labrelay.client.files import TEMP_PREFIX, SafeDir, TempFile, private_dir
from labrelay.client.keystore import Party
from labrelay.client.ledger import DEFAULT_RETENTION, LedgerWriter, choose_dpo, purge, transfer_fact
from labrelay.client.policy import current_policy, no_longer_in_force, refuse_classic_keys
from labrelay.client.progress import NoProgress, Progress
from labrelay.client.send import (
    NothingSent,
    RejectLimit,
    SendOutcome,
    check_ttl,
    drop_pending,
    find_sent,
    finish_sent,
    keep_manifest,
    pending_of,
    upload_batch,
)
from labrelay.client.spool import SealedSpool
from labrelay.client.trust import TrustedDirectory
from labrelay.crypto.envelopes import envelope_payload
from labrelay.domain.names import new_id
from labrelay.domain.parties import RECEIVING_ROLES, SENDING_ROLES, PartyEntry
from labrelay.domain.records import FIELDS
from labrelay.domain.timeutil import format_duration, to_rfc3339
from labrelay.domain.transfers import Manifest
from labrelay.errors import (
    LabrelayError,
    NotFound,
    OperationalError,
    PermissionDenied,
    SecurityError,
    UsageError,
)
from labrelay.jsonfile import read_json
from labrelay.ports import Clock
from labrelay.refdata import communes, department_regions


@dataclass
class SendOptions:
    ttl: timedelta = timedelta(days=7)
    restrict: Sequence[str] | None = None
    input_format: str = "auto"
    dpo: str | None = None
    ledger_retention: timedelta = DEFAULT_RETENTION
    again: bool = False
    max_rejected: RejectLimit | None = None
    fail_on_held: bool = False


@dataclass
class RoutedSend(SendOutcome):
    summary: Summary | None = None
    rejections: Path | None = None
    review: Path | None = None
    skipped: list[str] = field(default_factory=list)  # destinations with no record in this batch
    missing: list[str] = field(default_factory=list)  # recipients the policy addresses, not enrolled

    def as_dict(self) -> dict[str, Any]:
        return {
            **super().as_dict(),
            "summary": self.summary.as_dict() if self.summary else None,
            "reports": {"rejections": str(self.rejections or ""), "review": str(self.review or "")},
            "not_enrolled": self.missing,
            "nothing_for": self.skipped,
        }


@dataclass
class _Output:
    dest: Destination
    transfer_id: str
    spool: SealedSpool
    sink: RecordSink
    entry: PartyEntry


def _open_output(spools: contextlib.ExitStack, outbox: SafeDir, dest: Destination, entry: PartyEntry) -> _Output:
    spool = spools.enter_context(SealedSpool(outbox, entry.age_recipient))
    sink = RecordSink(spool.stream(gzip=True), dest.rule.fields, dest.rule.format)
    return _Output(dest, new_id(), spool, sink, entry)


class _Reports:
    """The batch's rejection report and review file, written unnamed and named once the run is over."""

    def __init__(self, party: Party, batch_id: str) -> None:
        self.dir = SafeDir.open(private_dir(party.path / "reports"), create=False)
        self.rejections_name = f"{batch_id}.rejections.csv"
        self.review_name = f"{batch_id}.review.csv"
        self._rej = self.dir.temp()
        self._rev = self.dir.temp()
        self.rejections = _text(self._rej)
        self.review = _text(self._rev)

    def publish(self) -> tuple[Path, Path]:
        self.rejections.detach()  # flushed into the file, which stays open for publishing
        self.review.detach()
        self._rej.publish(self.rejections_name)
        self._rev.publish(self.review_name)
        self.dir.close()
        self.published = True
        return self.dir.path / self.rejections_name, self.dir.path / self.review_name

    def discard(self) -> None:
        """Drop the reports unless they were published (a refused batch keeps them)."""
        if getattr(self, "published", False):
            return
        for text in (self.rejections, self.review):
            with contextlib.suppress(ValueError):
                text.detach()
        self._rej.discard()
        self._rev.discard()
        self.dir.close()


def _text(file: TempFile) -> io.TextIOWrapper:
    return io.TextIOWrapper(file.handle, encoding="utf-8", newline="", write_through=True)


@dataclass
class _Plan:
    """Everything decided before a record is read: the verified policy and recipients, the router, the DPO."""

    directory: TrustedDirectory
    policy_version: str
    router: Router
    validator: Validator
    dpo: PartyEntry


def _plan(party: Party, client: RelayClient, clock: Clock, options: SendOptions) -> _Plan:
    directory = TrustedDirectory(party.authority, client.directory(), clock.now())
    policy = current_policy(client, party.authority, party.path, clock.now())
    regions = set(department_regions().values())
    addressed = {d.name for d in destinations(policy, regions)}
    # A recipient this send names, or one the relay served a forged record for, gets the full check first: a
    # forged, revoked or unknown recipient is refused as such, not routed around.
    for name in sorted((set(options.restrict or ()) | set(directory.untrusted)) & addressed):
        directory.require(name, RECEIVING_ROLES)
    dpo_entry = choose_dpo(directory, options.dpo)  # no ledger, no send: the breach response depends on it
    check_ttl(client, options.ttl)  # first: a --ttl over the relay's maximum is the mistake to name
    if options.ledger_retention < options.ttl:
        raise UsageError(
            f"--ttl {format_duration(options.ttl)} is longer than the ledger is kept "
            f"({format_duration(options.ledger_retention)}): the ledger must outlive the payloads it describes",
            hint="a shorter --ttl, or a longer --ledger-retention",
        )
    purge(party.path, clock.now())
    receivers = [e for e in directory.in_force() if e.role in RECEIVING_ROLES]
    enrolled = {e.name for e in receivers}
    sealed_to = [e for e in receivers if e.name in addressed and (not options.restrict or e.name in options.restrict)]
    refuse_classic_keys(policy, sealed_to, "seal anything to them: nothing was sent")
    router = Router(policy, regions, enrolled, restrict=options.restrict, pseudonym_key=party.pseudonym_key())
    validator = Validator(
        today=clock.now().date(),
        loinc=policy.loinc,
        communes=[c.insee for c in communes()],
        department_regions=department_regions(),
    )
    return _Plan(directory, policy.version, router, validator, dpo_entry)


def send_results(
    party: Party,
    client: RelayClient,
    source: Path,
    clock: Clock,
    options: SendOptions | None = None,
    *,
    progress: Progress | None = None,
    held_from: str | None = None,
    rerouted: bool = False,
) -> RoutedSend:
    """Validate, route and minimise a results file under the signed policy; seal and send one payload per
    recipient. Records are read once, streaming; plaintext goes only through memory and pipes. Once per source:
    a source sent before is finished, not sent again (unless ``options.again``).

    A batch the relay refuses because the policy it was routed under routes nothing any more (a newer one was
    registered while it was sent, or it was withdrawn or expired: ``_forget_stale``) is discarded and, when none of
    it had been sent, routed again once under the policy in force."""
    options = options or SendOptions()
    progress = progress or NoProgress()
    if party.role not in SENDING_ROLES:
        raise PermissionDenied(f"{party.name} is a {party.role.value}; only lab parties send")
    fmt, reader = open_reader(source, options.input_format)  # local first: is this a results file at all?
    source_digest, first = _digest_and_plan(party, client, clock, options, source)
    planned: _Planned | None = first
    known = find_sent(party, source_digest, again=options.again, requested=options.restrict or ())
    if known is not None and isinstance(first.error, UsageError | NotFound):
        raise first.error  # the command itself is wrong (a recipient, a --ttl, the relay's URL): said, not skipped
    if known is not None:
        finished = _finish_known(party, client, clock, known, progress, rerouted=rerouted)
        if finished is not None:
            return finished
        rerouted = True  # forgotten: routed again below, under the policy in force
        planned = None  # planned before the stale batch was forgotten: planned again, under the policy in force
    plan = planned.result() if planned is not None else _plan(party, client, clock, options)
    created = clock.now()
    record = BatchEntry(
        batch_id=new_id(),
        source_sha256=source_digest.sha256,
        source=source.name,
        mode=HELD if held_from else ROUTED,
        created=to_rfc3339(created),
        state=SEALING,
        recipients=sorted(options.restrict or ()),
        again=options.again,
        held_from=held_from,
    )
    routed = _route_and_seal(party, plan, record, (fmt, reader), source_digest, options, created, progress)
    try:
        sent = upload_batch(party, client, record, routed.pending_paths, progress)
    except SecurityError:
        if rerouted or not _forget_stale(party, client, clock, record):
            raise
        return send_results(
            party, client, source, clock, options, progress=progress, held_from=held_from, rerouted=True
        )
    return RoutedSend(
        record.batch_id,
        dict(record.transfers),
        sent,
        source_sha256=source_digest.sha256,
        records=routed.summary.read,
        summary=routed.summary,
        rejections=routed.rejections,
        review=routed.review,
        skipped=routed.skipped,
        missing=plan.router.missing,
    )


@dataclass
class _Planned:
    """The plan made while the source was hashed, or the failure to make it: raised if the source is to be sent,
    or if it says the command itself is wrong (``UsageError``, ``NotFound``: a recipient, a --ttl, the relay's URL).
    A source sent before is otherwise finished whatever the plan would have said, as when it was made after."""

    plan: _Plan | None = None
    error: LabrelayError | None = None

    def result(self) -> _Plan:
        if self.plan is None:
            raise self.error or OperationalError("internal error: a send without a plan")
        return self.plan


def _digest_and_plan(
    party: Party, client: RelayClient, clock: Clock, options: SendOptions, source: Path
) -> tuple[SourceDigest, _Planned]:
    """The source's SHA-256 (one pass over the file, on a thread: hashlib and the reads release the GIL) while the
    plan is made (the policy and every recipient verified, reference data loaded: mostly waiting on the relay)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="source-digest") as hashing:
        hashed = hashing.submit(digest, source)
        try:
            planned = _Planned(plan=_plan(party, client, clock, options))
        except LabrelayError as exc:
            planned = _Planned(error=exc)
        return hashed.result(), planned


def _finish_known(
    party: Party, client: RelayClient, clock: Clock, known: BatchEntry, progress: Progress, *, rerouted: bool
) -> RoutedSend | None:
    """A source sent before as ``known``: its batch finished. None: the batch was forgotten (routed under a policy
    that routes nothing any more, none of it sent: ``_forget_stale``), and the source is to be routed again."""
    try:
        outcome = finish_sent(party, client, known, progress)
        return RoutedSend(**vars(outcome), review=_review_path(party, known))
    except SecurityError:
        if rerouted or not _forget_stale(party, client, clock, known):
            raise
    return None


@dataclass
class _Routed:
    """A batch validated, routed and sealed: its counts, its reports, its payloads named in the outbox."""

    summary: Summary
    rejections: Path
    review: Path
    pending_paths: list[Path]  # the signed manifests kept beside the payloads, for upload
    skipped: list[str]  # destinations with no record in this batch


def _route_and_seal(
    party: Party,
    plan: _Plan,
    record: BatchEntry,
    opened: tuple[str, Reader],
    source_digest: SourceDigest,
    options: SendOptions,
    created: datetime,
    progress: Progress,
) -> _Routed:
    """Read the source once through the validator and the router into a sealed payload per destination, the
    ledger and the reports; then name them (``_Batch.seal``) and put the batch's transfers on ``record``. On any
    failure nothing of the batch is left in the outbox, and it is off the record."""
    fmt, reader = opened
    layout = getattr(reader, "layout", None)
    summary = Summary(
        fmt,
        ignored_columns=getattr(layout, "ignored", ()),
        missing_columns=getattr(layout, "missing", ()),
        policy_version=plan.policy_version,
    )
    expected = max(source_digest.lines - 1, 0) if fmt == "csv" else None  # CSV: one record a line, less the header
    task = progress.task(f"validating and routing {record.source}", expected, "records")
    try:
        with _Batch(party, plan, record) as work:
            run(
                reader,
                plan.validator,
                summary=summary,
                report=RejectionReport(work.reports.rejections),
                review=ReviewFile(work.reports.review),
                router=plan.router,
                sinks={o.dest.name: o.sink for o in work.outputs},
                on_batch=lambda b: task.advance(b.read),
                persons=work.ledger.sink,
            )
            if not summary.reconciled:  # fail closed: never send a batch whose counts do not add up
                raise OperationalError(
                    f"internal error: {summary.read} records read, {summary.accepted} accepted, "
                    f"{summary.rejected} rejected, {summary.held} held; nothing sent"
                )
            rejections, review = work.reports.publish()
            _refuse_to_send_nothing(summary, options, plan.router, rejections, review)
            pending_paths, skipped = work.seal(created, options, source_digest.sha256)
    except BaseException:
        for pending_path in pending_of(party, record.batch_id):
            drop_pending(pending_path)
        BatchIndex(party.path).drop(record)
        raise
    finally:
        task.done()
    record.transfers = {o.dest.name: o.transfer_id for o in work.outputs if o.sink.records}
    record.summary = summary.as_dict()
    record.reports = {"rejections": str(rejections), "review": str(review)}
    return _Routed(summary, rejections, review, pending_paths, skipped)


class _Batch:
    """The outputs of one routed send while it runs: a spool per destination, the ledger, the reports. On any
    failure, all of it is discarded (the spools and the ledger were never named); the reports survive only once
    published (a refused batch keeps them for the lab to read)."""

    def __init__(self, party: Party, plan: _Plan, record: BatchEntry) -> None:
        self.party = party
        self.plan = plan
        self.record = record
        self.outbox = SafeDir.open(party.ensure_outbox(), create=False)
        self.spools = contextlib.ExitStack()  # closed with the batch: a spool not named by then is discarded
        self.outputs: list[_Output] = []
        self.ledger: LedgerWriter
        self.reports: _Reports

    def __enter__(self) -> _Batch:
        try:
            for dest in self.plan.router.destinations:
                entry = self.plan.directory.require(dest.name, RECEIVING_ROLES)
                self.outputs.append(_open_output(self.spools, self.outbox, dest, entry))
            self.ledger = LedgerWriter.open(
                self.party.path,
                self.record.batch_id,
                self.plan.dpo,
                {o.dest.name: o.transfer_id for o in self.outputs},
                self.party.pseudonym_key(),
            )
            self.reports = _Reports(self.party, self.record.batch_id)
        except BaseException:
            self.__exit__(RuntimeError, None, None)
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.spools.close()
        if exc_type is not None:
            if hasattr(self, "ledger"):
                self.ledger.discard()
            if hasattr(self, "reports"):
                self.reports.discard()
        self.outbox.close()

    def seal(self, created: datetime, options: SendOptions, source_sha256: str) -> tuple[list[Path], list[str]]:
        """Name every sealed payload and keep its signed manifest; the batch is on record (sealing) from here: a
        run killed before leaves nothing named, one killed during this step is cleaned by the next (``tidy``)."""
        BatchIndex(self.party.path).save(self.record)
        pending_paths, skipped = _seal_all(
            self.party, self.outputs, self.record, created, options, self.plan.policy_version, source_sha256
        )
        facts = [
            transfer_fact(
                o.transfer_id,
                o.dest.name,
                o.entry.age_recipient,
                o.sink.records,
                created + options.ttl,
                o.dest.rule.fields,
            )
            for o in self.outputs
            if o.sink.records
        ]
        self.ledger.finish(self.party.name, created, self.plan.policy_version, facts, options.ledger_retention)
        return pending_paths, skipped


def _forget_stale(party: Party, client: RelayClient, clock: Clock, record: BatchEntry) -> bool:
    """The relay refused a payload of ``record``'s batch. If the batch was routed under a policy that routes nothing
    any more, as this lab verifies itself (superseded by a newer issue, withdrawn, expired: T30), its payloads not
    sent yet are discarded: each holds what that policy gave its recipient, and must not go under another. When none
    had been sent, the batch is forgotten: True, its source is routed again under the policy in force. When some had,
    the rest is refused, naming what to send again. False: the refusal was about something else; nothing changes."""
    pending = pending_of(party, record.batch_id)
    manifests = [
        Manifest.from_payload(envelope_payload(read_json(pending_path)["manifest"])) for pending_path in pending
    ]
    version = next((m.policy_version for m in manifests if m.policy_version is not None), None)
    if version is None:
        return False
    why = no_longer_in_force(client, party.authority, party.path, clock.now(), version)
    if why is None:
        return False
    for (
        pending_path
    ) in pending:  # never created on the relay: it refused the first of them, and the rest were not tried
        drop_pending(pending_path)
    dropped = sorted(m.recipient for m in manifests)
    index = BatchIndex(party.path)
    if set(dropped) >= set(record.transfers):
        index.drop(record)
        return True
    record.transfers = {name: tid for name, tid in record.transfers.items() if name not in dropped}
    record.state = SENT
    index.save(record)
    raise PermissionDenied(
        f"batch {record.batch_id}: {why} while it was being sent; its payloads for {', '.join(dropped)} were not "
        "sent, and are discarded",
        hint=f"route them under the policy in force: labrelay send {record.source} --again --to "
        + " --to ".join(dropped),
    )


def held_line(name: str, records: int, positives: int) -> str:
    """``ars-24 not enrolled: 312 records held, 27 positives``."""
    who = f"{name} not enrolled" if name != NO_ARS else "residence in a territory no ARS covers"
    return f"{who}: {records} records held, {positives} positives"


def _refuse_to_send_nothing(
    summary: Summary, options: SendOptions, router: Router, rejections: Path, review: Path
) -> None:
    """Exit 1 with one line, nothing sent, when the batch must not (or cannot) go: its reports stay for the lab."""
    sent = sum(summary.per_recipient.values())
    why = None
    if summary.read == 0:
        why = "the file holds no record"
    elif summary.rejected == summary.read:
        why = f"every one of the {summary.read} records was rejected (reasons in {rejections})"
    elif options.max_rejected is not None and options.max_rejected.crossed(summary.rejected, summary.read):
        why = (
            f"{summary.rejected} of {summary.read} records were rejected, more than --max-rejected "
            f"{options.max_rejected} (reasons in {rejections})"
        )
    elif options.fail_on_held and summary.held:
        held = "; ".join(held_line(n, c.records, c.positives) for n, c in sorted(summary.held_for.items()))
        why = f"{summary.held} records would be held for review and --fail-on-held is set ({held}; see {review})"
    elif sent == 0:
        names = ", ".join(d.name for d in router.destinations)
        why = f"no record of this batch is for {names}" + (f" (held: see {review})" if summary.held else "")
    if why is not None:
        raise NothingSent(f"nothing sent: {why}")


def _seal_all(
    party: Party,
    outputs: list[_Output],
    record: BatchEntry,
    created: datetime,
    options: SendOptions,
    policy_version: str,
    source_sha256: str,
) -> tuple[list[Path], list[str]]:
    pending_paths, skipped = [], []
    for out in outputs:
        sealed = out.spool.seal()
        if out.sink.records == 0:
            out.spool.discard()
            skipped.append(out.dest.name)
            continue
        out.spool.publish(f"{out.transfer_id}.age")
        manifest = Manifest.sealed_for(
            out.entry,
            sealed,
            transfer_id=out.transfer_id,
            batch_id=record.batch_id,
            sender=party.name,
            media_type=out.sink.media_type,
            record_count=out.sink.records,
            created=created,
            ttl=options.ttl,
            source_sha256=source_sha256,
            again=options.again,
            policy_version=policy_version,
            compression="gzip",
        )
        pending_paths.append(keep_manifest(party, manifest))
    return pending_paths, skipped


def _review_path(party: Party, record: BatchEntry) -> Path | None:
    path = record.reports.get("review")
    return Path(path) if path else None


# ------------------------------------------------------------------ held shares, delivered later


@dataclass
class HeldSend:
    """``send --held BATCH``: what was delivered from a batch's held shares, and what stays held."""

    original: str
    delivered: RoutedSend | None
    remaining: dict[str, int]  # recipient (or NO_ARS) → records still held

    def as_dict(self) -> dict[str, Any]:
        return {
            "held_from": self.original,
            "send": self.delivered.as_dict() if self.delivered else None,
            "still_held": {k or "no-ars": v for k, v in sorted(self.remaining.items())},
        }


def send_held(
    party: Party,
    client: RelayClient,
    batch: str,
    clock: Clock,
    options: SendOptions | None = None,
    *,
    progress: Progress | None = None,
) -> HeldSend:
    """Deliver the shares a batch held for recipients that were not enrolled and are now: to each, only its own
    share, routed and minimised under the policy in force. Idempotent like any send; the review file then keeps
    only what is still held."""
    options = options or SendOptions()
    index = BatchIndex(party.path)
    original = index.by_id(batch)
    review_path = _review_path(party, original) or party.path / "reports" / f"{original.batch_id}.review.csv"
    if not review_path.is_file():
        raise UsageError(f"batch {original.batch_id} has no review file ({review_path})", hint="nothing was held")
    held = pl.read_csv(review_path, infer_schema=False).with_columns(pl.all().fill_null(""))
    directory = TrustedDirectory(party.authority, client.directory(), clock.now())
    enrolled = {e.name for e in directory.in_force() if e.role in RECEIVING_ROLES}
    ready = sorted(set(held["recipient"].to_list()) & enrolled)
    if not ready:
        waiting = _counts(held)
        raise NothingSent(
            f"nothing to deliver from batch {original.batch_id}: "
            + ("; ".join(f"{n or 'no ARS'}: {c} records still held" for n, c in sorted(waiting.items())) or "")
            + (" (none of these recipients is enrolled yet)" if waiting else "nothing is held")
        )
    chosen = held.filter(pl.col("recipient").is_in(ready))
    reports = SafeDir.open(private_dir(party.path / "reports"), create=False)
    extract = reports.path / f"{TEMP_PREFIX}held-{original.batch_id}.csv"  # swept if a killed run leaves it
    try:
        chosen.select(FIELDS).write_csv(extract)
        delivered = send_results(
            party,
            client,
            extract,
            clock,
            SendOptions(**{**vars(options), "restrict": ready, "input_format": "csv"}),
            progress=progress,
            held_from=original.batch_id,
        )
        rest = held.filter(~pl.col("recipient").is_in(ready))
        out = reports.temp()
        try:
            rest.write_csv(out.handle)
            out.replace(review_path.name)
        except BaseException:
            out.discard()
            raise
    finally:
        extract.unlink(missing_ok=True)
        reports.close()
    for name in ready:
        original.held_sent[name] = delivered.batch_id
    index.save(original)
    return HeldSend(original.batch_id, delivered, _counts(rest))


def _counts(held: pl.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in held.group_by("recipient").len().iter_rows()}


__all__ = ["SEALING", "HeldSend", "RejectLimit", "RoutedSend", "SendOptions", "held_line", "send_held", "send_results"]
