"""``labrelay breach scope``: which transfers an incident exposed, how, and — with the DPO's key — whom.

Inputs: ledger directories (``DIR/NAME/ledger/`` of each sender), the relay's audit export (NDJSON), an incident.
Outputs, in ``OUT/``: ``scope.json`` (transfers, exposures, counts by category; no personal data), ``scope.md``
(the same for people), and with the DPO's identity ``affected.csv`` (0600): every person whose data was readable,
with the categories of data concerned and what is needed to write to them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from labrelay.batch.persons import PATIENT, PROFESSIONAL
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


def _persons_frame(ledger: LedgerReader, identities: Sequence[AgeIdentity]) -> pl.DataFrame:
    sealed = ledger.persons_file
    plain = io.BytesIO()
    try:
        with sealed.open("rb") as fh:
            # The ledger's metadata holds no hash of its persons index: age's own authentication is the check.
            age_stream.decrypt(fh, plain, identities, expect=None)
    except OSError as exc:
        raise Unreadable(f"{sealed}: {exc}") from None
    except IntegrityError as exc:
        raise IntegrityError(f"{sealed}: cannot be opened with this DPO key ({exc.message})") from None
    data = gzip.decompress(plain.getvalue())
    if not data:
        return pl.DataFrame(schema=dict.fromkeys(_PERSONS_COLUMNS, pl.String))
    return pl.read_csv(io.BytesIO(data), schema=dict.fromkeys(_PERSONS_COLUMNS, pl.String))


_PERSONS_COLUMNS = (
    "kind", "person", "nom", "prenom", "date_naissance", "adresse", "code_postal", "commune", "telephone", "email",
    "transfers",
)  # fmt: skip


def _joined(column: str) -> pl.Expr:
    """In an aggregation: the distinct ``;``-separated values of ``column``, sorted, joined again."""
    return pl.col(column).str.split(";").explode().unique().sort().str.join(";")


def name_persons(scope: Scope, ledgers: Sequence[LedgerReader], identities: Sequence[AgeIdentity]) -> pl.DataFrame:
    """Every person whose data was readable, once, with the categories of data concerned (one row each);
    fills ``scope.persons`` with the counts: patients and professionals whose data was readable, and patients whose
    data was exposed only as ciphertext.

    Ledgers are opened one at a time; only the (row, transfer) links are exploded, never the persons' columns."""
    categories = {f.transfer_id: f.categories for f, _ in scope.findings}
    readable, exposed = list(scope.readable_ids), list(scope.exposed_ids)
    cat_frame = pl.DataFrame(
        {"transfers": list(categories), "cats": [";".join(c) for c in categories.values()]},
        schema={"transfers": pl.String, "cats": pl.String},
    )
    # One person: the keyed pseudonym when there is one, else name and birth date; a prescriber: the RPPS.
    key = (
        pl.when(pl.col("person") != "")
        .then(pl.col("person"))
        .otherwise(pl.concat_str([pl.col("nom"), pl.col("prenom"), pl.col("date_naissance")], separator="|"))
    )
    exposed_who: list[pl.Series] = []
    hits: list[pl.DataFrame] = []
    for ledger in ledgers:
        if not {t["transfer_id"] for t in ledger.meta["transfers"]} & set(exposed):
            continue
        frame = _persons_frame(ledger, identities).with_row_index("_row")
        links = (
            frame.select("_row", "kind", pl.col("transfers").str.split(";"))
            .explode("transfers")
            .filter(pl.col("transfers").is_in(exposed))
            .join(cat_frame, on="transfers", how="left")
            # A prescriber is concerned by a transfer only if it carried professional fields.
            .filter((pl.col("kind") == PATIENT) | pl.col("cats").str.contains("professional"))
        )
        people = (
            frame.drop("transfers")
            .join(links.select("_row").unique(), on="_row", how="semi")
            .with_columns(pl.concat_str([pl.col("kind"), key], separator=":").alias("_who"))
        )
        del frame
        exposed_who.append(people.filter(pl.col("kind") == PATIENT).get_column("_who"))
        per_row = (
            links.filter(pl.col("transfers").is_in(readable))
            .group_by("_row")
            .agg(_joined("transfers"), _joined("cats"))
        )
        if per_row.height:
            hits.append(people.join(per_row, on="_row", how="inner").drop("_row"))
    exposed_patients = pl.concat(exposed_who).n_unique() if exposed_who else 0
    if not hits:
        scope.persons = {
            "readable_patients": 0,
            "readable_professionals": 0,
            "ciphertext_only_patients": exposed_patients,
        }
        return pl.DataFrame(schema={**dict.fromkeys(_PERSONS_COLUMNS, pl.String), "categories": pl.String})
    affected = (
        pl.concat(hits)
        .group_by("_who", maintain_order=True)
        .agg(
            *(pl.col(c).first() for c in _PERSONS_COLUMNS if c != "transfers"),
            _joined("transfers"),
            _joined("cats").alias("categories"),
        )
        .drop("_who")
    )
    # A prescriber's own data is the "professional" category only; a patient's, everything but that category.
    affected = affected.with_columns(
        pl.when(pl.col("kind") == PROFESSIONAL)
        .then(pl.lit("professional"))
        .otherwise(pl.col("categories").str.replace_all(r"(^|;)professional(;|$)", "$1").str.strip_chars(";"))
        .alias("categories")
    )
    readable_patients = affected.filter(pl.col("kind") == PATIENT).height
    scope.persons = {
        "readable_patients": readable_patients,
        "readable_professionals": affected.filter(pl.col("kind") == PROFESSIONAL).height,
        "ciphertext_only_patients": exposed_patients - readable_patients,
    }
    return affected


def write_scope(scope: Scope, out: Path, affected: pl.DataFrame | None) -> list[Path]:
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = [out / "scope.json", out / "scope.md"]
    (out / "scope.md").write_text(render_scope_md(scope), encoding="utf-8")
    path = out / "affected.csv"
    path.unlink(missing_ok=True)  # never leave a list of persons from an earlier scope beside this one
    if affected is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            affected.write_csv(fh)
        written.append(path)
        scope.affected_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
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
