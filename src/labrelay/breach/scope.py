"""``labrelay breach scope``: which transfers an incident exposed, how, and — with the DPO's key — whom.

Inputs: ledger directories (``DIR/NAME/ledger/`` of each sender), the relay's audit export (NDJSON), an incident.
Outputs, in ``OUT/``: ``scope.json`` (transfers, exposures, counts by category; no personal data), ``scope.md``
(the same for people), and with the DPO's identity ``affected.csv`` (0600): every person whose data was readable,
with the categories of data concerned and what is needed to write to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from labrelay.batch.persons import PATIENT, PROFESSIONAL
from labrelay.breach.blocks import BLOCK_BYTES, CsvBlocks, Malformed, parse
from labrelay.crypto import age_stream
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.audit import AuditEntry, AuditEvent, Outcome, chain_hash
from labrelay.domain.breach import Exposure, Finding, Incident, TransferFacts, assess, lifecycles
from labrelay.domain.timeutil import from_rfc3339, to_rfc3339
from labrelay.errors import IntegrityError, Unreadable, UsageError

SCOPE_TYPE = "labrelay.breach-scope.v1"


@dataclass
class LedgerReader:
    """One sender's breach ledger of one batch, read back from disk: its metadata, and where its sealed persons
    index is (opened only with the DPO's key, by ``name_persons``)."""

    folder: Path
    meta: dict[str, Any]

    @property
    def persons_file(self) -> Path:
        return self.folder / str(self.meta["persons_file"])

    def facts(self) -> list[TransferFacts]:
        return [
            TransferFacts(
                transfer_id=str(t["transfer_id"]),
                sender=str(self.meta["sender"]),
                recipient=str(t["recipient"]),
                records=int(t["records"]),
                deadline=from_rfc3339(str(t["deadline"])),
                categories=tuple(t["categories"]),
                created=from_rfc3339(str(self.meta["created"])),
            )
            for t in self.meta["transfers"]
        ]


def load_ledgers(paths: Sequence[Path]) -> list[LedgerReader]:
    """Every ledger (``<batch>.json``) in the given directories or files."""
    found: list[LedgerReader] = []
    for path in paths:
        metas = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for meta_path in metas:
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise Unreadable(f"{meta_path}: not a ledger ({exc})") from None
            if not isinstance(meta, dict) or meta.get("type") != "labrelay.ledger.v1":
                raise Unreadable(f"{meta_path}: not a labrelay ledger")
            if meta.get("batch_id") in {f.meta.get("batch_id") for f in found}:
                continue  # the same ledger given twice counts once
            found.append(LedgerReader(meta_path.parent, meta))
    if not found:
        raise UsageError("no ledger found", hint="give each sender's ledger directory: --ledger PARTIES/lab/ledger")
    return found


@dataclass
class AuditRead:
    """What the export itself proves: its links chain, without a gap, from ``first_seq``."""

    links: int = 0
    first_seq: int | None = None
    last_seq: int | None = None


def read_audit(path: Path, seen: AuditRead | None = None) -> Iterator[dict[str, Any]]:
    """The relay's NDJSON audit export, line by line, each link checked against its hash and its predecessor:
    an export with a line removed, changed or inserted (the relay may be the compromised party) is refused."""
    seen = seen or AuditRead()
    prev: str | None = None
    try:
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                doc = json.loads(line)
                if not isinstance(doc, dict):
                    raise ValueError(f"line {n} is not an object")
                _check_link(doc, prev, n)
                prev = str(doc["hash"])
                seen.first_seq = seen.first_seq or int(doc["seq"])
                seen.last_seq = int(doc["seq"])
                seen.links += 1
                yield doc
    except OSError as exc:
        raise Unreadable(f"{path}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(
            f"{path}: the audit export does not verify ({exc})",
            hint="export it again, and run labrelay audit verify on the relay's database",
        ) from None


def _check_link(doc: dict[str, Any], prev: str | None, line: int) -> None:
    entry = AuditEntry(
        at=from_rfc3339(str(doc["at"])),
        event=AuditEvent(doc["event"]),
        outcome=Outcome(doc["outcome"]),
        actor=doc.get("actor"),
        transfer_id=doc.get("transfer_id"),
        reason=doc.get("reason"),
        details=doc.get("details") or {},
    )
    if prev is not None and doc["prev"] != prev:
        raise ValueError(f"line {line} (record {doc['seq']}) does not follow the line before")
    if chain_hash(entry, int(doc["seq"]), str(doc["prev"])) != doc["hash"]:
        raise ValueError(f"line {line} (record {doc['seq']}) does not match its hash")


@dataclass
class Scope:
    incident: Incident
    findings: list[tuple[TransferFacts, Finding]]
    persons: dict[str, int] = field(default_factory=dict)  # with the DPO key: counts by exposure and kind
    computed_at: datetime | None = None
    unledgered: list[dict[str, str]] = field(default_factory=list)  # exposed at the relay, in no ledger given
    unmatched: list[str] = field(default_factory=list)  # incident names and ids that match nothing
    audit: AuditRead = field(default_factory=AuditRead)
    affected_sha256: str | None = None  # binds affected.csv to this scope (notify checks it)

    def by_exposure(self, exposure: Exposure) -> list[tuple[TransferFacts, Finding]]:
        return [(f, x) for f, x in self.findings if x.exposure is exposure]

    @property
    def readable_ids(self) -> set[str]:
        return {f.transfer_id for f, _ in self.by_exposure(Exposure.READABLE)}

    @property
    def exposed_ids(self) -> set[str]:
        return {f.transfer_id for f, x in self.findings if x.exposure in (Exposure.CIPHERTEXT, Exposure.READABLE)}

    def categories(self, exposure: Exposure) -> list[str]:
        return sorted({c for f, _ in self.by_exposure(exposure) for c in f.categories})

    def as_dict(self) -> dict[str, Any]:
        counts = Counter(x.exposure.value for _, x in self.findings)
        return {
            "type": SCOPE_TYPE,
            "computed_at": to_rfc3339(self.computed_at) if self.computed_at else None,
            "incident": {
                "storage_copied_at": _opt(self.incident.storage_copied_at),
                "window": [to_rfc3339(t) for t in self.incident.window] if self.incident.window else None,
                "transfers": sorted(self.incident.transfers),
                "compromised": {k: to_rfc3339(v) for k, v in sorted(self.incident.compromised.items())},
                "description": self.incident.describe(),
            },
            "transfers": {exposure.value: counts.get(exposure.value, 0) for exposure in Exposure},
            "records": {
                exposure.value: sum(f.records for f, _ in self.by_exposure(exposure))
                for exposure in (Exposure.CIPHERTEXT, Exposure.READABLE, Exposure.RECIPIENT_SIDE)
            },
            "categories": {
                exposure.value: self.categories(exposure) for exposure in (Exposure.CIPHERTEXT, Exposure.READABLE)
            },
            "persons": self.persons or None,
            "audit": {
                "records": self.audit.links,
                "first_seq": self.audit.first_seq,
                "last_seq": self.audit.last_seq,
                "complete": self.audit.first_seq == 1,
            },
            "unledgered": self.unledgered,
            "affected_sha256": self.affected_sha256,
            "unmatched": self.unmatched,
            "findings": [
                {
                    "transfer_id": f.transfer_id,
                    "sender": f.sender,
                    "recipient": f.recipient,
                    "records": f.records,
                    "deadline": to_rfc3339(f.deadline),
                    "categories": list(f.categories),
                    "exposure": x.exposure.value,
                    "why": x.why,
                }
                for f, x in self.findings
                if x.exposure is not Exposure.NONE
            ],
        }


def _opt(instant: datetime | None) -> str | None:
    return to_rfc3339(instant) if instant else None


def compute_scope(
    ledgers: Sequence[LedgerReader], audit: Path | Iterable[dict[str, Any]], incident: Incident, now: datetime
) -> Scope:
    """Assess every ledger transfer; ``audit`` is the export's path (verified as it is read) or its documents."""
    read = AuditRead()
    try:
        lives = lifecycles(read_audit(audit, read) if isinstance(audit, Path) else audit)
    except ValueError as exc:
        raise IntegrityError(f"the audit export has a record without a valid instant ({exc})") from None
    findings = []
    for ledger in ledgers:
        for fact in ledger.facts():
            findings.append((fact, assess(fact, lives.get(fact.transfer_id), incident)))
    findings.sort(key=lambda p: (p[1].exposure.value, p[0].sender, p[0].transfer_id))
    scope = Scope(incident, findings, computed_at=now, audit=read)
    known = {f.transfer_id for f, _ in findings}
    # What the relay held that no ledger given describes (an --as-is document, a purged or missing ledger): its
    # exposure is still assessed, its content is unknown.
    for tid, life in sorted(lives.items()):
        if tid in known or life.created is None:
            continue
        far = life.created + timedelta(days=366)
        facts = TransferFacts(tid, life.sender or "?", life.recipient or "?", 0, far, ())
        finding = assess(facts, life, incident)
        if finding.exposure is not Exposure.NONE:
            scope.unledgered.append({"transfer_id": tid, "sender": facts.sender, "recipient": facts.recipient,
                                     "exposure": finding.exposure.value, "why": finding.why})  # fmt: skip
    parties = {f.recipient for f, _ in findings} | {f.sender for f, _ in findings}
    parties |= {life.recipient for life in lives.values() if life.recipient}
    scope.unmatched = sorted(
        [f"--compromised {name}" for name in incident.compromised if name not in parties]
        + [f"--transfer {tid}" for tid in incident.transfers if tid not in lives and tid not in known]
    )
    return scope


_PERSONS_COLUMNS = (
    "kind", "person", "nom", "prenom", "date_naissance", "adresse", "code_postal", "commune", "telephone", "email",
    "transfers",
)  # fmt: skip
AFFECTED_COLUMNS = (*(c for c in _PERSONS_COLUMNS if c != "transfers"), "transfers", "categories")

BUCKET_ROWS = 200_000  # rows of links per bucket of persons, and persons per slice of the output
_HASH_SEED = 0x1AB5E1A7


def _open_persons(ledger: LedgerReader, identities: Sequence[AgeIdentity], blocks: CsvBlocks) -> None:
    """Decrypt a ledger's persons index into ``blocks``, as it is read. A later error (a chunk that does not
    authenticate, a cut stream) refuses the whole scope: the caller drops all it wrote of the earlier blocks."""
    sealed = ledger.persons_file
    try:
        with sealed.open("rb") as fh:
            # The ledger's metadata holds no hash of its persons index: age's own authentication is the check.
            age_stream.decrypt(fh, blocks, identities, expect=None)  # type: ignore[arg-type]  # a write-only sink
        blocks.close()
    except OSError as exc:
        raise Unreadable(f"{sealed}: {exc}") from None
    except Malformed as exc:
        raise IntegrityError(f"{sealed}: not a persons index ({exc.message})") from None
    except IntegrityError as exc:
        raise IntegrityError(f"{sealed}: cannot be opened with this DPO key ({exc.message})") from None


def _joined(column: str) -> pl.Expr:
    """In an aggregation: the distinct ``;``-separated values of ``column``, sorted, joined again."""
    return pl.col(column).str.split(";").explode().unique().sort().str.join(";")


# One person: the keyed pseudonym when there is one, else name and birth date; a prescriber: the RPPS.
_KEY = (
    pl.when(pl.col("person") != "")
    .then(pl.col("person"))
    .otherwise(pl.concat_str([pl.col("nom"), pl.col("prenom"), pl.col("date_naissance")], separator="|"))
)


@dataclass
class _Spill:
    """The persons found so far, spread over ``buckets`` by a hash of who they are (a person is always in the same
    bucket), in Arrow IPC files of a private temporary directory: each bucket is then reduced on its own."""

    folder: Path
    buckets: int
    parts: int = 0

    def write(self, kind: str, frame: pl.DataFrame, bucket: pl.Expr | None = None) -> None:
        """Add ``frame``'s rows to their buckets: by who they are, or by ``bucket``."""
        if not frame.height:
            return
        self.parts += 1
        bucket = (pl.col("_who").hash(_HASH_SEED) % self.buckets) if bucket is None else bucket
        for (number,), part in (
            frame.with_columns(bucket.alias("_bucket")).partition_by("_bucket", as_dict=True).items()
        ):
            _write_private_ipc(part.drop("_bucket"), self.folder / f"{kind}-{number}-{self.parts}.arrow")

    def read(self, kind: str, bucket: int) -> pl.DataFrame | None:
        files = sorted(self.folder.glob(f"{kind}-{bucket}-*.arrow"))
        return pl.concat([pl.read_ipc(f) for f in files]) if files else None


def _write_private_ipc(frame: pl.DataFrame, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        frame.write_ipc(fh)


def name_persons(
    scope: Scope,
    ledgers: Sequence[LedgerReader],
    identities: Sequence[AgeIdentity],
    out: Path,
    *,
    block_bytes: int = BLOCK_BYTES,
    bucket_rows: int = BUCKET_ROWS,
) -> Path:
    """Write ``out/affected.csv`` (0600): every person whose data was readable, once, with the categories of data
    concerned, in the order they first appear in the ledgers; fill ``scope.persons`` with the counts (patients and
    professionals whose data was readable, patients whose data was exposed only as ciphertext) and
    ``scope.affected_sha256``.

    In bounded memory, whatever the ledgers' size: each persons index is decrypted as a stream and handled in
    blocks of ``block_bytes``; the persons found are spilled by a hash of who they are into buckets of about
    ``bucket_rows`` links, in a private temporary directory beside the output (the DPO's machine, 0700); each
    bucket is then reduced to its distinct persons, and the list written slice by slice in order of first
    appearance. Only a block, a bucket or a slice is ever in memory."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    categories = {f.transfer_id: f.categories for f, _ in scope.findings}
    readable, exposed = list(scope.readable_ids), list(scope.exposed_ids)
    cat_frame = pl.DataFrame(
        {"transfers": list(categories), "cats": [";".join(c) for c in categories.values()]},
        schema={"transfers": pl.String, "cats": pl.String},
    )
    opened = [ledger for ledger in ledgers if {t["transfer_id"] for t in ledger.meta["transfers"]} & set(exposed)]
    rows = sum(_rows_of(ledger) for ledger in opened)
    buckets = max(1, -(-rows // bucket_rows))
    with tempfile.TemporaryDirectory(prefix=".scope-", dir=out) as tmp:  # 0700, removed whatever happens
        spill = _Spill(Path(tmp), buckets)
        seq = 0  # every row of every ledger opened, numbered: the order of first appearance

        def on_block(block: bytes) -> None:
            nonlocal seq
            frame = parse(block, _PERSONS_COLUMNS).with_columns(
                (pl.int_range(pl.len(), dtype=pl.Int64) + seq).alias("_seq")
            )
            seq += frame.height
            links = (
                frame.select("_seq", "kind", pl.col("transfers").str.split(";"))
                .explode("transfers")
                .filter(pl.col("transfers").is_in(exposed))
                .join(cat_frame, on="transfers", how="left")
                # A prescriber is concerned by a transfer only if it carried professional fields.
                .filter((pl.col("kind") == PATIENT) | pl.col("cats").str.contains("professional"))
            )
            people = (
                frame.drop("transfers")
                .join(links.select("_seq").unique(), on="_seq", how="semi")
                .with_columns(pl.concat_str([pl.col("kind"), _KEY], separator=":").alias("_who"))
            )
            spill.write("exposed", people.filter(pl.col("kind") == PATIENT).select("_who"))
            per_row = (
                links.filter(pl.col("transfers").is_in(readable))
                .group_by("_seq")
                .agg(_joined("transfers"), _joined("cats"))
            )
            if per_row.height:
                spill.write("hits", people.join(per_row, on="_seq", how="inner"))

        for ledger in opened:
            _open_persons(ledger, identities, CsvBlocks(on_block, _PERSONS_COLUMNS, block_bytes=block_bytes, gzip=True))
        counts = _reduce(spill, bucket_rows)
        scope.persons = {
            "readable_patients": counts[PATIENT],
            "readable_professionals": counts[PROFESSIONAL],
            "ciphertext_only_patients": counts["exposed"] - counts[PATIENT],
        }
        path = out / "affected.csv"
        scope.affected_sha256 = _write_affected(spill, counts["slices"], Path(tmp) / "affected.csv", path)
    return path


def _write_affected(spill: _Spill, slices: int, partial: Path, path: Path) -> str:
    """Write the reduced slices in order of first appearance to ``partial`` (0600), hash what was written, then
    move it to ``path`` whole or not at all; the hex SHA-256 of the list."""
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w+b") as fh:
        fh.write(pl.DataFrame(schema=dict.fromkeys(AFFECTED_COLUMNS, pl.String)).write_csv().encode())
        for number in range(slices):
            part = spill.read("slice", number)
            if part is not None:
                for piece in part.sort("_seq").drop("_seq").iter_slices(20_000):
                    fh.write(piece.write_csv(include_header=False).encode())
        fh.flush()
        fh.seek(0)
        digest = hashlib.sha256()
        while chunk := fh.read(1 << 20):  # what was written, read back by the descriptor that wrote it
            digest.update(chunk)
    os.replace(partial, path)  # whole or not at all
    return digest.hexdigest()


def _rows_of(ledger: LedgerReader) -> int:
    """How many rows a persons index holds, to size the buckets: what its metadata declares, or at least one row
    per 128 bytes of the sealed file (about 90 are written per row). Sizing only: a wrong figure costs memory or
    time, never a person."""
    try:
        declared = int(ledger.meta.get("patients", 0)) + int(ledger.meta.get("professionals", 0))
    except (TypeError, ValueError):
        declared = 0
    try:
        floor = ledger.persons_file.stat().st_size // 128
    except OSError:
        floor = 0  # reported when it is opened
    return max(declared, floor)


def _reduce(spill: _Spill, bucket_rows: int) -> dict[str, int]:
    """Each bucket to its distinct persons (their details from their first readable row; the union of their
    transfers and categories), spilled again by slices of the order of first appearance; the counts."""
    counts = {PATIENT: 0, PROFESSIONAL: 0, "exposed": 0}
    last_seq = -1
    for bucket in range(spill.buckets):
        exposed = spill.read("exposed", bucket)
        counts["exposed"] += exposed.get_column("_who").n_unique() if exposed is not None else 0
        hits = spill.read("hits", bucket)
        if hits is None:
            continue
        # Most persons have one row: theirs is already their entry (``_joined`` made it); the others are merged.
        twice = pl.col("_who").is_duplicated()
        merged = (
            hits.filter(twice)
            .sort("_seq")
            .group_by("_who")
            .agg(
                pl.col("_seq").first(),
                *(pl.col(c).first() for c in _PERSONS_COLUMNS if c != "transfers"),
                _joined("transfers"),
                _joined("cats"),
            )
        )
        columns = ("_seq", *(c for c in _PERSONS_COLUMNS if c != "transfers"), "transfers", "cats")
        persons = (
            pl.concat([hits.filter(~twice).select(columns), merged.select(columns)])
            # A prescriber's own data is the "professional" category only; a patient's, all but that category.
            .with_columns(
                pl.when(pl.col("kind") == PROFESSIONAL)
                .then(pl.lit("professional"))
                .otherwise(pl.col("cats").str.replace_all(r"(^|;)professional(;|$)", "$1").str.strip_chars(";"))
                .alias("categories")
            )
            .select("_seq", *AFFECTED_COLUMNS)
        )
        del hits, merged
        kinds = persons.get_column("kind")
        counts[PATIENT] += int((kinds == PATIENT).sum())
        counts[PROFESSIONAL] += int((kinds == PROFESSIONAL).sum())
        if persons.height:
            last_seq = max(last_seq, int(persons.select(pl.col("_seq").max()).item()))
        # A person's first row is theirs alone: a slice of ``bucket_rows`` rows holds at most as many persons.
        spill.write("slice", persons, pl.col("_seq") // bucket_rows)
    counts["slices"] = last_seq // bucket_rows + 1
    return counts


def write_scope(scope: Scope, out: Path, *, named: bool) -> list[Path]:
    """``scope.json`` and ``scope.md``; with ``named``, beside the ``affected.csv`` that ``name_persons`` wrote
    (its SHA-256 in ``scope.json``), else any earlier ``affected.csv`` is deleted."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = [out / "scope.json", out / "scope.md"]
    (out / "scope.md").write_text(render_scope_md(scope), encoding="utf-8")
    path = out / "affected.csv"
    if named and scope.affected_sha256 is None:
        raise IntegrityError("internal error: persons named without the hash of their list")
    if named:
        written.append(path)
    else:
        path.unlink(missing_ok=True)  # never leave a list of persons from an earlier scope beside this one
    (out / "scope.json").write_text(json.dumps(scope.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return written


def render_scope_md(scope: Scope) -> str:
    doc = scope.as_dict()
    lines = ["# Périmètre de l'incident", "", *(f"- {d}" for d in doc["incident"]["description"]), ""]
    lines += ["| exposition | transferts | enregistrements |", "|---|---|---|"]
    for exposure in (Exposure.READABLE, Exposure.CIPHERTEXT, Exposure.RECIPIENT_SIDE):
        lines.append(
            f"| {exposure.value} | {doc['transfers'][exposure.value]} | {doc['records'].get(exposure.value, 0)} |"
        )
    if scope.persons:
        lines += [
            "",
            f"Personnes dont les données étaient lisibles : {scope.persons['readable_patients']} patients, "
            f"{scope.persons['readable_professionals']} professionnels de santé.",
            "Patients dont les données n'ont été exposées que chiffrées : "
            f"{scope.persons['ciphertext_only_patients']}.",
        ]
    lines += ["", "| transfert | destinataire | enregistrements | exposition | motif |", "|---|---|---|---|---|"]
    for f in doc["findings"]:
        lines.append(f"| {f['transfer_id']} | {f['recipient']} | {f['records']} | {f['exposure']} | {f['why']} |")
    return "\n".join(lines) + "\n"
