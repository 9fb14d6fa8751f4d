"""``labrelay breach scope``: which transfers an incident exposed, how, and — with the DPO's key — whom.

Inputs: ledger directories (``DIR/NAME/ledger/`` of each sender), the relay's audit export (NDJSON), an incident.
Outputs, in ``OUT/``: ``scope.json`` (transfers, exposures, counts by category; no personal data), ``scope.md``
(the same for people), and with the DPO's identity ``affected.csv`` (0600): every person whose data was readable,
with the categories of data concerned and what is needed to write to them.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from labrelay.batch.ledger import PATIENT, PROFESSIONAL
from labrelay.crypto import age_stream
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.breach import Exposure, Finding, Incident, TransferFacts, assess, lifecycles
from labrelay.domain.timeutil import from_rfc3339, to_rfc3339
from labrelay.errors import IntegrityError, Unreadable, UsageError

SCOPE_TYPE = "labrelay.breach-scope.v1"


@dataclass
class Ledger:
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
            )
            for t in self.meta["transfers"]
        ]


def load_ledgers(paths: Sequence[Path]) -> list[Ledger]:
    """Every ledger (``<batch>.json``) in the given directories or files."""
    found: list[Ledger] = []
    for path in paths:
        metas = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for meta_path in metas:
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise Unreadable(f"{meta_path}: not a ledger ({exc})") from None
            if not isinstance(meta, dict) or meta.get("type") != "labrelay.ledger.v1":
                raise Unreadable(f"{meta_path}: not a labrelay ledger")
            found.append(Ledger(meta_path.parent, meta))
    if not found:
        raise UsageError("no ledger found", hint="give each sender's ledger directory: --ledger PARTIES/lab/ledger")
    return found


def read_audit(path: Path) -> Iterator[dict[str, Any]]:
    """The relay's NDJSON audit export, line by line."""
    try:
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    doc = json.loads(line)
                    if not isinstance(doc, dict):
                        raise ValueError(f"line {n} is not an object")
                    yield doc
    except (OSError, ValueError) as exc:
        raise Unreadable(f"{path}: not an audit export ({exc})") from None


@dataclass
class Scope:
    incident: Incident
    findings: list[tuple[TransferFacts, Finding]]
    persons: dict[str, int] = field(default_factory=dict)  # with the DPO key: counts by exposure and kind
    computed_at: datetime | None = None

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
    ledgers: Sequence[Ledger], audit: Iterable[dict[str, Any]], incident: Incident, now: datetime
) -> Scope:
    lives = lifecycles(audit)
    findings = []
    for ledger in ledgers:
        for fact in ledger.facts():
            findings.append((fact, assess(fact, lives.get(fact.transfer_id), incident)))
    findings.sort(key=lambda p: (p[1].exposure.value, p[0].sender, p[0].transfer_id))
    return Scope(incident, findings, computed_at=now)


def _persons_frame(ledger: Ledger, identities: Sequence[AgeIdentity]) -> pl.DataFrame:
    sealed = ledger.persons_file
    plain = io.BytesIO()
    try:
        with sealed.open("rb") as fh:
            age_stream.decrypt(fh, plain, identities)
    except OSError as exc:
        raise Unreadable(f"{sealed}: {exc}") from None
    except IntegrityError as exc:
        raise IntegrityError(f"{sealed}: cannot be opened with this DPO key ({exc.message})") from None
    data = gzip.decompress(plain.getvalue())
    if not data:
        return pl.DataFrame(schema=dict.fromkeys(_LEDGER_COLUMNS, pl.String))
    return pl.read_csv(io.BytesIO(data), schema=dict.fromkeys(_LEDGER_COLUMNS, pl.String))


_LEDGER_COLUMNS = (
    "kind", "person", "nom", "prenom", "date_naissance", "adresse", "code_postal", "commune", "telephone", "email",
    "transfers",
)  # fmt: skip


def name_persons(scope: Scope, ledgers: Sequence[Ledger], identities: Sequence[AgeIdentity]) -> pl.DataFrame:
    """Every person whose data was readable, once, with the categories of data concerned (one row each);
    fills ``scope.persons`` with the counts: patients and professionals whose data was readable, and patients whose
    data was exposed only as ciphertext."""
    categories = {f.transfer_id: f.categories for f, _ in scope.findings}
    readable, exposed = scope.readable_ids, scope.exposed_ids
    frames = []
    for ledger in ledgers:
        mine = {t["transfer_id"] for t in ledger.meta["transfers"]}
        if not mine & exposed:
            continue
        frame = _persons_frame(ledger, identities)
        frames.append(frame.with_columns(pl.col("transfers").str.split(";")).explode("transfers"))
    if not frames:
        scope.persons = {"readable_patients": 0, "readable_professionals": 0, "ciphertext_only_patients": 0}
        return pl.DataFrame(schema={**dict.fromkeys(_LEDGER_COLUMNS, pl.String), "categories": pl.String})
    rows = pl.concat(frames).filter(pl.col("transfers").is_in(list(exposed)))
    cat_frame = pl.DataFrame(
        {"transfers": list(categories), "cats": [";".join(c) for c in categories.values()]},
        schema={"transfers": pl.String, "cats": pl.String},
    )
    rows = rows.join(cat_frame, on="transfers", how="left")
    # A prescriber is concerned by a transfer only if it carried professional fields.
    rows = rows.filter((pl.col("kind") == PATIENT) | pl.col("cats").str.contains("professional"))
    # One person: the keyed pseudonym when there is one, else name and birth date; a prescriber: the RPPS.
    key = (
        pl.when(pl.col("person") != "")
        .then(pl.col("person"))
        .otherwise(pl.concat_str([pl.col("nom"), pl.col("prenom"), pl.col("date_naissance")], separator="|"))
    )
    rows = rows.with_columns(pl.concat_str([pl.col("kind"), key], separator=":").alias("_who"))
    exposed_patients = rows.filter(pl.col("kind") == PATIENT).get_column("_who").n_unique()
    hit = rows.filter(pl.col("transfers").is_in(list(readable)))
    if hit.height == 0:
        scope.persons = {
            "readable_patients": 0,
            "readable_professionals": 0,
            "ciphertext_only_patients": exposed_patients,
        }
        return pl.DataFrame(schema={**dict.fromkeys(_LEDGER_COLUMNS, pl.String), "categories": pl.String})
    affected = (
        hit.group_by("_who", maintain_order=True)
        .agg(
            *(pl.col(c).first() for c in _LEDGER_COLUMNS if c != "transfers"),
            pl.col("transfers").unique().sort().str.join(";"),
            pl.col("cats").str.split(";").explode().unique().sort().str.join(";").alias("categories"),
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
    (out / "scope.json").write_text(json.dumps(scope.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "scope.md").write_text(render_scope_md(scope), encoding="utf-8")
    if affected is not None:
        path = out / "affected.csv"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            affected.write_csv(fh)
        written.append(path)
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
