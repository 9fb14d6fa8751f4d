"""Shared vectors for the browser port of reading, validation, routing and minimisation (web/src): the CLI's answers.

Every expected value is computed here by the Python implementation itself (CsvReader, Validator, Router, RecordSink,
parse_policy, chained as ``labrelay send`` chains them), so that the JavaScript port is tested against the CLI, not
against a second reading of the rules. Run::

    .venv/bin/python tests/vectors/make_web_vectors.py

It writes ``tests/vectors/web_validation.json``. ``tests/unit/test_web_vectors.py`` derives every expected value
again and compares, so the file cannot go stale; ``node web/test/vectors.test.mjs`` runs the same vectors through
the JavaScript modules.

The file holds:

- ``validation``: files (``csv`` as text, or ``csv_base64`` when the bytes are not UTF-8), the date of ``today``,
  optionally ``block_bytes`` (the reader's block size, small to exercise block boundaries), and what the CLI makes
  of them: ``read``, ``ignored`` columns, ``missing`` (optional template columns left out, read as empty),
  ``rejected`` (structural, from the reader), ``rejections`` (from validation), ``accepted`` records (a territory
  no ARS table covers has a null ``_region``), the ``summary`` counts; or ``error`` with its ``code`` (``usage``
  or ``not-results``: a file refused whole) and, for a file that is certainly not results (a workbook, UTF-16
  text, a PDF, an archive, a binary file), its ``kind``; or ``format`` (``hl7``, ``fhir``: results the page leaves
  to the CLI).
- ``routing``: a CSV file, a routing ``policy`` (TOML text), the ``enrolled`` recipients, ``restrict`` (``--to``)
  and a ``pseudonym_key``; ``expected.outputs`` maps each destination to the exact text its RecordSink receives
  (CSV: a header, then the rows), ``expected.missing`` names the recipients addressed but not enrolled,
  ``expected.rejections`` and ``expected.review`` are the rejection report and the review file exactly as
  ``labrelay send`` writes them (one review row per record and recipient whose share is held), and
  ``expected.summary`` is ``Summary.as_dict()`` (with ``held_for``: records and positives held per recipient); or
  ``expected.error`` (the Router refuses).
- ``pseudonyms``: names and birth dates with the pseudonym the CLI computes (route.with_pseudonyms).
- ``policies``: policy texts with the parsed policy, or the error parse_policy raises.
- ``windows_1252``: bytes 0x80-0xFF as the CLI decodes a line that is not UTF-8 (Windows-1252, WHATWG).
- ``records``: the constants of labrelay.domain.records (FIELDS, MAX_LENGTH, Reason...), for web/src/records.js.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
from tests.support.records import CASES, NEEDS_NORMALISING, PADDED, TODAY, VALID, good, line  # noqa: E402  # noqa: E402

from labrelay.batch.csv_reader import BLOCK_BYTES, CsvReader, _decode_line  # noqa: E402
from labrelay.batch.outputs import RecordSink  # noqa: E402
from labrelay.batch.pipeline import (  # noqa: E402
    RejectionReport,
    ReviewFile,
    Summary,
    _kind_of,
    detect_format,
    run,
)
from labrelay.batch.route import Router, with_pseudonyms  # noqa: E402
from labrelay.batch.validate import Validator  # noqa: E402
from labrelay.client.policy import default_policy_text  # noqa: E402
from labrelay.domain import records  # noqa: E402
from labrelay.domain.policy import parse_policy  # noqa: E402
from labrelay.domain.records import FIELDS, FORMULA_FIELDS, OPTIONAL, REQUIRED  # noqa: E402
from labrelay.errors import LabrelayError, NotResults, Unreadable  # noqa: E402
from labrelay.refdata import communes, department_regions  # noqa: E402
from labrelay.synthetic.generator import nir_key  # noqa: E402

OUTPUT = Path(__file__).with_name("web_validation.json")
FILE_NAME = "results.csv"  # how messages name the input file (the CLI names its path)
KEY = hashlib.sha256(b"labrelay web vectors").hexdigest()  # a fixed pseudonym key (64 hex characters)
DEFAULT_POLICY = default_policy_text()
HEADER = ",".join(FIELDS)
APOSTROPHE = "\u2019"  # as Excel writes it (0x92 in Windows-1252)
FULLWIDTH_DUPONT = "\uff24\uff35\uff30\uff2f\uff2e\uff34"


# ------------------------------------------------------------------ deriving: the CLI's answers


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: _iso(v) for k, v in row.items()} for row in frame.to_dicts()]


def _rows(rows: list[tuple[int, str, str]]) -> list[dict[str, Any]]:
    return [{"record": r, "field": f, "reason": why} for r, f, why in rows]


def _write(tmp: str, data: bytes) -> Path:
    path = Path(tmp) / FILE_NAME
    path.write_bytes(data)
    return path


def _validator(today: date, loinc: Any) -> Validator:
    return Validator(
        today=today, loinc=loinc, communes=[c.insee for c in communes()], department_regions=department_regions()
    )


def _refusal(exc: LabrelayError, path: Path, head: bytes | None = None) -> dict[str, Any]:
    """A file refused whole: the message (naming the file as the page does), the error's code and, for a file
    that is certainly not results, what it is (pipeline._kind_of, which the page names in its own words)."""
    out: dict[str, Any] = {"error": str(exc).replace(str(path), FILE_NAME), "code": exc.code}
    kind = _kind_of(head) if head is not None else None
    if kind is not None:
        out["kind"] = kind[0]
    return out


def _open_csv(path: Path, block_bytes: int | None) -> CsvReader | dict[str, Any]:
    """The CSV reader ``labrelay send`` opens for ``path`` (pipeline.open_reader: the file's kind first, then the
    format, then the header), or what it refuses: a file that is not results, or results in HL7 or FHIR (which the
    page leaves to the CLI)."""
    try:
        fmt = detect_format(path)
    except NotResults as exc:
        return _refusal(exc, path, path.read_bytes()[:4096])
    if fmt != "csv":
        return {"format": fmt}
    try:
        return CsvReader(path, block_bytes=block_bytes or BLOCK_BYTES)
    except (NotResults, Unreadable) as exc:
        return _refusal(exc, path)


def derive_validation(data: bytes, *, today: date, block_bytes: int | None = None) -> dict[str, Any]:
    """Read and validate ``data`` batch by batch, as ``labrelay send`` does (pipeline.run without a router)."""
    loinc = parse_policy(DEFAULT_POLICY).loinc
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, data)
        reader = _open_csv(path, block_bytes)
        if not isinstance(reader, CsvReader):
            return reader
        validator = _validator(today, loinc)
        out: dict[str, Any] = {
            "read": 0,
            "ignored": list(reader.layout.ignored),
            "missing": list(reader.layout.missing),
            "rejected": [],
            "rejections": [],
        }
        accepted: list[pl.DataFrame] = []
        rejected = 0
        for batch in reader.batches():
            out["read"] += batch.read
            out["rejected"] += _rows(batch.rejected)
            result = validator.validate(batch.frame, padded=batch.padded)
            out["rejections"] += _rows(list(result.rejections.iter_rows()))
            rejected += len({r for r, _, _ in batch.rejected}) + result.rejected_records
            accepted.append(result.accepted)
    out["accepted"] = [r for f in accepted for r in _records(f)]
    out["summary"] = {"read": out["read"], "accepted": len(out["accepted"]), "rejected": rejected}
    return out


def derive_routing(
    data: bytes,
    *,
    today: date,
    policy: str,
    enrolled: list[str],
    restrict: list[str] | None,
    pseudonym_key: str | None,
    block_bytes: int | None = None,
) -> dict[str, Any]:
    """Validate, route and minimise ``data`` through pipeline.run with one RecordSink per destination, as
    ``labrelay send`` does; return what each sink received, the recipients missing, the rejection report and the
    review file as the CLI writes them, and the summary (``Summary.as_dict``, as ``--summary`` writes it)."""
    parsed = parse_policy(policy)
    try:
        router = Router(
            parsed,
            set(department_regions().values()),
            set(enrolled),
            restrict=restrict,
            pseudonym_key=pseudonym_key,
        )
    except LabrelayError as exc:
        return {"error": str(exc)}
    streams = {d.name: io.BytesIO() for d in router.destinations}
    sinks = {d.name: RecordSink(streams[d.name], d.rule.fields, d.rule.format) for d in router.destinations}
    report, review = io.StringIO(newline=""), io.StringIO(newline="")
    with tempfile.TemporaryDirectory() as tmp:
        reader = _open_csv(_write(tmp, data), block_bytes)
        assert isinstance(reader, CsvReader), reader
        summary = run(
            reader,
            _validator(today, parsed.loinc),
            summary=Summary(
                "csv",
                ignored_columns=reader.layout.ignored,
                missing_columns=reader.layout.missing,
                policy_version=parsed.version,
            ),
            report=RejectionReport(report),
            review=ReviewFile(review),
            router=router,
            sinks=sinks,
        )
    assert summary.reconciled
    return {
        "outputs": {name: stream.getvalue().decode("utf-8") for name, stream in streams.items()},
        "missing": router.missing,
        "rejections": report.getvalue(),
        "review": review.getvalue(),
        "summary": summary.as_dict(),
    }


def derive_pseudonyms(people: list[tuple[str, str, str]], key: str) -> list[str]:
    """The pseudonyms the CLI computes for (nom, prenom, date_naissance), in one frame as route.Router does."""
    frame = pl.DataFrame(
        {
            "nom": [p[0] for p in people],
            "prenom": [p[1] for p in people],
            "date_naissance": [date.fromisoformat(p[2]) for p in people],
        }
    )
    return with_pseudonyms(frame, key)["pseudonyme"].to_list()


def derive_policy(text: str) -> dict[str, Any]:
    try:
        policy = parse_policy(text)
    except LabrelayError as exc:
        return {"error": str(exc)}
    return {
        "version": policy.version,
        "loinc": sorted(policy.loinc),
        "description": policy.description,
        "require_pq": policy.require_pq,
        "recipients": [
            {
                "name": r.name,
                "select": r.select,
                "fields": list(r.fields),
                "format": r.format,
                "by_region": r.by_region,
                "pseudonymise": r.pseudonymise,
                "unparsed": r.unparsed,
            }
            for r in policy.recipients
        ],
    }


# ------------------------------------------------------------------ building files


def csv_file(
    *records: dict[str, str] | str,
    sep: str = ",",
    columns: tuple[str, ...] = FIELDS,
    eol: str = "\n",
    final_eol: bool = True,
    bom: bool = False,
    header: str | None = None,
) -> bytes:
    """A CSV file in the template: the header, then each record (a dict of raw values, or a line as written)."""
    lines = [header if header is not None else sep.join(columns)]
    lines += [r if isinstance(r, str) else line(r, sep, columns) for r in records]
    text = eol.join(lines) + (eol if final_eol else "")
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


def nir(first13: str) -> str:
    return first13 + nir_key(first13)


def corsican(first13: str, dept: str) -> str:
    return first13[:5] + dept + first13[7:]


def zip_of(*members: tuple[str, str]) -> bytes:
    """A ZIP archive holding ``members`` (name, text), byte for byte the same on every run."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), text)
    return buffer.getvalue()


# ------------------------------------------------------------------ the cases


def validation_cases() -> Iterator[tuple[str, bytes, date, int | None]]:
    """(name, file bytes, today, block size or None) for every validation vector."""
    yield "baseline", csv_file(good()), TODAY, None
    for i, (change, field, reason) in enumerate(CASES):
        yield f"CASES[{i}] {field}: {reason.name}", csv_file(good(**change)), TODAY, None
    for i, change in enumerate(VALID):
        yield f"VALID[{i}] {','.join(change) or 'baseline'}", csv_file(good(**change)), TODAY, None
    yield (
        "normalisation",
        csv_file(good(**NEEDS_NORMALISING)),
        TODAY,
        None,
    )

    # ---- the hostile file of test_csv_reader, byte for byte
    columns = tuple(reversed(FIELDS))
    corsica_a = corsican("2840520004123", "2A")
    corsica_b = corsican("2840520004123", "2B")
    abroad = "1790599109042"
    rows: list[bytes] = [
        line(good(prenom="Hélène", commune="SAINT-ÉTIENNE"), ";", columns).encode("latin-1"),
        line(good(prenom="Jérôme"), ";", columns).encode("utf-8"),
        line(good(nir=nir(corsica_a)), ";", columns).encode(),
        line(good(nir=nir(corsica_b)), ";", columns).encode(),
        line(good(nir=nir(abroad)), ";", columns).encode(),
        line(good(date_naissance="15/03/1979", resultat="260415000"), ";", columns).encode(),
        line(good(nir="179037511104200"), ";", columns).encode(),
        line(good(date_prelevement="2026-02-30"), ";", columns).encode(),
        line(good(code_loinc="12345-6"), ";", columns).encode(),
        line(good(code_commune_insee="75999"), ";", columns).encode(),
        line(good(nom="DU\x00PONT"), ";", columns).encode(),
        line(good(adresse="x" * 400), ";", columns).encode(),
        ";".join(line(good(), ";", columns).split(";")[:10]).encode(),
        (line(good(), ";", columns) + ";extra").encode(),
        line(good(nir="379037511104217"), ";", columns).encode(),
    ]
    body = b"\xef\xbb\xbf" + ";".join(columns).encode() + b"\r\n" + b"\r\n".join(rows) + b"\r\n"
    yield "hostile: BOM, ;, CRLF, latin-1 lines, NUL, short and long rows, reversed columns", body, TODAY, None
    body = body.replace(b"DU\x00PONT", b"DU\x7fPONT")
    yield "hostile: the same with DEL for NUL (a NUL byte in the first 4 KiB makes it a binary file)", body, TODAY, None

    # ---- quoting
    ok = line(good(adresse='"12, rue de la ""Paix"""'))
    multi = line(good(adresse='"12 rue\nsuite"'))
    broken = line(good(nom='"DU"PONT'))
    yield (
        "quoted: separator in quotes, a quoted newline, a blank line, broken quoting (the csv module path)",
        f"{HEADER}\n{ok}\n{multi}\n\n{broken}\n{line(good())}\n".encode(),
        TODAY,
        None,
    )
    yield (
        "quoted: separators and doubled quotes in quotes, every line closes its quotes (the polars path)",
        csv_file(
            good(adresse='"12, rue de la ""Paix"""'),
            good(nom='"DUPONT"', prenom='""', commune='"PARIS, 11"'),
            good(nom='DU"PO"NT'),
            good(prescripteur_nom=' "Paul"'),
            good(adresse='"a""b"'),
        ),
        TODAY,
        None,
    )
    yield "quoted: text after a closing quote", csv_file(good(), good(nom='"DU"PONT'), good()), TODAY, None
    yield "quoted: a space after a closing quote", csv_file(good(), good(nom='"DUPONT" '), good()), TODAY, None
    yield "quoted: a quote never closed", csv_file(good(), good(adresse='"12 rue'), good()), TODAY, None
    yield "quoted: a stray quote in a value", csv_file(good(), good(nom='O"BRIEN'), good()), TODAY, None
    yield (
        "quoted: stray quotes pair up across separators",
        csv_file(good(), good(nom='O"BRIEN', prenom='A"B'), good()),
        TODAY,
        None,
    )
    yield (
        "quoted: a quoted value then \\r before the separator",
        csv_file(good(), good(nom='"DUPONT"\r'), good()),
        TODAY,
        None,
    )

    yield (
        "quoted: stray quotes within 64 bytes of a quoted value (polars splits as if they quoted)",
        csv_file(good(), good(sexe='"F"', adresse='12 rue de la Paix"a,b"'), good()),
        TODAY,
        None,
    )
    yield (
        "quoted: a short record ending in a quoted value",
        csv_file(good(), ",".join(line(good()).split(",")[:8]) + ',"PARIS 11"', good()),
        TODAY,
        None,
    )
    yield (
        "quoted: extra fields open a quote that the record's own fields closed (polars reads on)",
        csv_file(good(), line(good(nom='O"BRIEN')) + ',"extra', good()),
        TODAY,
        None,
    )

    # ---- padding, as test_values_padded_with_spaces_are_trimmed_wherever_they_sit

    for eol in ("\n", "\r\n"):
        records = [good(**{field: value}) for field, value in PADDED.values()]
        yield (
            f"padded: first, middle, last, after and before a separator ({eol!r})",
            csv_file(good(), *records, eol=eol),
            TODAY,
            None,
        )
    yield "padded: spaces only in a required field", csv_file(good(nom="   "), good(code_postal="  ")), TODAY, None

    # ---- columns
    extra = (*FIELDS, "commentaire_interne")
    yield (
        "columns: one not in the template is ignored",
        csv_file({**good(), "commentaire_interne": "secret note"}, columns=extra),
        TODAY,
        None,
    )
    yield (
        "columns: a control character in an ignored column (the polars path refuses the record)",
        csv_file(
            {**good(), "commentaire_interne": "secret\x7fnote"}, good() | {"commentaire_interne": ""}, columns=extra
        ),
        TODAY,
        None,
    )
    yield (
        "columns: a control character in an ignored column (the csv module path does not look)",
        csv_file(
            {**good(), "commentaire_interne": "secret\x7fnote"},
            {**good(), "commentaire_interne": '"two\nlines"'},
            columns=extra,
        ),
        TODAY,
        None,
    )
    yield (
        "columns: header names padded and quoted, in another order",
        csv_file(
            good(),
            header=",".join(f'"{c}"  ' if i % 2 else f"  {c}" for i, c in enumerate(reversed(FIELDS))),
            columns=tuple(reversed(FIELDS)),
        ),
        TODAY,
        None,
    )
    yield (
        "columns: a latin-1 header with an accented ignored column",
        (HEADER + ",prénom_médecin\n").encode("latin-1") + (line(good()) + ",Hélène\n").encode("latin-1"),
        TODAY,
        None,
    )
    yield "columns: header only", csv_file(), TODAY, None
    yield "columns: header only, no newline", HEADER.encode(), TODAY, None

    # ---- files that cannot be read at all
    yield "unreadable: empty", b"", TODAY, None
    yield "unreadable: a blank first line", b"\n" + csv_file(good()), TODAY, None
    yield "unreadable: missing columns", b"a,b,c\n1,2,3\n", TODAY, None
    yield "unreadable: binary", b"\x00\x01\x02binary\xff", TODAY, None
    yield "unreadable: a column twice", (HEADER + ",nir\n").encode(), TODAY, None
    yield (
        "unreadable: a carriage return inside the header",
        (HEADER.replace(",nom,", ",nom\r,") + "\n").encode(),
        TODAY,
        None,
    )
    yield from header_cases()
    yield from kind_cases()
    yield from formula_cases()
    yield from invisible_cases()

    # ---- structure
    short = ",".join(line(good()).split(",")[:10])
    yield "structure: a short record first (polars refuses the block)", csv_file(short, good()), TODAY, None
    yield "structure: a short record after the first", csv_file(good(), short, good()), TODAY, None
    yield "structure: a long record first", csv_file(line(good()) + ",extra", good()), TODAY, None
    yield (
        "structure: long records after the first",
        csv_file(good(), line(good()) + ",extra", line(good()) + ",,"),
        TODAY,
        None,
    )
    yield "structure: blank and space-only lines", csv_file(good(), "", "   ", good(), "", ""), TODAY, None
    yield "structure: CRLF blank lines", csv_file(good(), "", good(), eol="\r\n"), TODAY, None
    yield (
        "structure: no newline after the last record",
        csv_file(good(), good(nom="MARTIN"), final_eol=False),
        TODAY,
        None,
    )
    yield (
        "structure: separator ;, commas in values",
        csv_file(good(adresse="12, rue X", nom="DUPONT, dit Max"), sep=";"),
        TODAY,
        None,
    )
    yield "structure: BOM and CRLF", csv_file(good(), good(prenom="Zoë"), eol="\r\n", bom=True), TODAY, None
    yield (
        "structure: a whole file in latin-1",
        csv_file(good(prenom="Hélène", commune="SAINT-ÉTIENNE"), good(nom="MÜLLER")).decode().encode("latin-1"),
        TODAY,
        None,
    )
    yield (
        "structure: utf-8 and latin-1 lines mixed",
        csv_file(good(prenom="Jérôme")) + line(good(prenom="Hélène")).encode("latin-1") + b"\n",
        TODAY,
        None,
    )
    yield "structure: \\r before a separator", csv_file(good(), good(nom="DUPONT\r"), good()), TODAY, None
    yield (
        "structure: \\r before a separator, in a short record",
        csv_file(good(), short.replace(",", "\r,", 1) + ",", good()),
        TODAY,
        None,
    )
    yield (
        "structure: \\r before a separator, quotes elsewhere",
        csv_file(good(adresse='"1, rue"'), good(nom="DUPONT\r")),
        TODAY,
        None,
    )
    yield "structure: \\r\\r\\n line end", csv_file(good(), good(), eol="\r\r\n"), TODAY, None
    yield "structure: a lone \\r inside a value", csv_file(good(), good(nom="DU\rPONT"), good()), TODAY, None
    yield (
        "structure: \\x1f in a value (polars refuses the block)",
        csv_file(good(), good(nom="DU\x1fPONT")),
        TODAY,
        None,
    )
    yield "structure: NUL and DEL", csv_file(good(nom="DU\x00PONT"), good(prenom="C\x7fline"), good()), TODAY, None
    yield (
        "structure: a value over 512 bytes (the polars path: a field too long)",
        csv_file(good(adresse="é" * 300), good(commune="x" * 600)),
        TODAY,
        None,
    )
    yield (
        "structure: a value over 512 characters (the csv module path: the record too long)",
        csv_file(good(adresse="x" * 600), good(commune='"two\nlines"'), good(adresse="é" * 300)),
        TODAY,
        None,
    )
    big = "x" * 2000
    yield (
        "structure: a line over 512 bytes per column",
        csv_file(good(), good(nom=big, prenom=big, adresse=big, commune=big, prescripteur_nom=big)),
        TODAY,
        None,
    )
    yield "structure: a BOM at the start of the body", csv_file("\ufeff" + line(good()), good()), TODAY, None

    # ---- dates
    yield (
        "dates: formats, leap days, bounds",
        csv_file(
            good(date_naissance="29/02/1980"),
            good(date_naissance="29/02/2000"),
            good(date_naissance="29/02/1900"),
            good(date_naissance="1900-01-01"),
            good(date_naissance="31/12/1899"),
            good(date_naissance="0000-01-01"),
            good(date_naissance="15.03.1979"),
            good(date_naissance="1979-03-15T00"),
            good(date_naissance="15/3/1979"),
            good(date_naissance="00/01/2000"),
            good(date_naissance="1979-13-01"),
            good(date_validation="2026-01-15"),
            good(date_validation="2026-01-16"),
            good(date_prelevement="2026-01-16", date_validation="2026-01-16"),
            good(date_prelevement="1979-03-14"),
            good(date_prelevement="1979-03-15", date_validation="1979-03-15"),
        ),
        TODAY,
        None,
    )
    yield (
        "dates: lenient parses matter for the order of dates (no / in the column)",
        csv_file(
            good(date_naissance="2027- 1-01"),
            good(date_naissance="+2027-1-01"),
            good(date_naissance="1979- 3-15"),
            good(date_prelevement="2026- 1-12"),
        ),
        TODAY,
        None,
    )
    yield (
        "dates: lenient parses matter for the order of dates (a / in the column)",
        csv_file(
            good(date_naissance="+2027-1-01"),
            good(date_naissance="2027- 1-01"),
            good(date_naissance="01/ 1/2027"),
            good(date_naissance="15/03/1979"),
        ),
        TODAY,
        None,
    )
    yield (
        "dates: another today",
        csv_file(good(date_prelevement="2029-12-30", date_validation="2029-12-31")),
        date(2030, 1, 1),
        None,
    )
    yield (
        "dates: ages around the birthday",
        csv_file(
            good(date_naissance="2000-01-10", date_prelevement="2026-01-10"),
            good(date_naissance="2000-01-11", date_prelevement="2026-01-10", date_validation="2026-01-10"),
            good(date_naissance="2024-02-29", date_prelevement="2026-01-10"),
            good(date_naissance="2026-01-10"),
        ),
        TODAY,
        None,
    )

    # ---- NIRs and territories
    yield (
        "NIR: Corsica, abroad, lower case, keys",
        csv_file(
            good(nir=nir(corsican("2840520004123", "2A")), code_commune_insee="2A004", code_postal="20090"),
            good(nir=nir(corsican("2840520004123", "2B")), code_commune_insee="2B033", code_postal="20600"),
            good(nir=nir(corsican("2840520004123", "2A")).lower(), code_commune_insee="2b033"),
            good(nir=corsican("2840520004123", "2A") + "00"),
            good(nir=nir("1790599109042")),
            good(nir=nir("1799799109042")),
            good(nir=nir("1790596109042")),
            good(nir=nir("3790375111042")),
            good(nir="17903751110A2" + "42"),
            good(nir=" " + nir("2790375111042") + " "),
        ),
        TODAY,
        None,
    )
    yield (
        "territories: overseas departments",
        csv_file(
            *(
                good(code_commune_insee=code, code_postal=postal)
                for code, postal in [
                    ("97101", "97142"),
                    ("97209", "97234"),
                    ("97302", "97300"),
                    ("97411", "97490"),
                    ("97608", "97615"),
                ]
            )
        ),
        TODAY,
        None,
    )
    yield (
        "territories: no ARS table (held for review)",
        csv_file(
            *(
                good(code_commune_insee=code, code_postal=postal)
                for code, postal in [
                    ("97501", "97500"),
                    ("97502", "97500"),
                    ("97701", "97133"),
                    ("97801", "97150"),
                    ("98611", "98610"),
                    ("99138", "98000"),
                ]
            ),
            good(),
        ),
        TODAY,
        None,
    )
    yield (
        "case: the NIR column upper-cased only when some value has a-z",
        csv_file(good(nir="\u0131" * 8), good(nir="\u017f" * 8)),
        TODAY,
        None,
    )
    yield (
        "case: the NIR column upper-cased (another value has a-z)",
        csv_file(good(nir="\u0131" * 8), good(nir=nir(corsican("2840520004123", "2A")).lower())),
        TODAY,
        None,
    )

    # ---- the other fields
    yield (
        "fields: e-mail, phones, RPPS, FINESS, postal codes, results",
        csv_file(
            good(email="a\xa0b@example.fr"),
            good(email="a\ufeffb@example.fr"),
            good(email="a\x85b@example.fr"),
            good(email="x" * 64 + "@example.fr"),
            good(email="x" * 65 + "@example.fr"),
            good(email="a@b@example.fr"),
            good(email="a@example"),
            good(email="Jérôme@exemple.fr"),
            good(telephone="+33 6 12 34 56 78"),
            good(telephone="(06)12345678"),
            good(telephone="06-12-34-56-78"),
            good(prescripteur_telephone="+1234567"),
            good(prescripteur_rpps="1000408735a"),
            good(laboratoire_finess="2b0000123"),
            good(laboratoire_finess="2C0000123"),
            good(code_postal="7501a"),
            good(resultat="positif"),
            good(resultat=" NEGATIF "),
            good(resultat="Indéterminé"),
            good(resultat="INDETERMINÉ"),
            good(resultat="NE\u0301GATIF"),
            good(sexe="m"),
            good(sexe="1"),
            good(sexe="Ĥ"),
        ),
        TODAY,
        None,
    )
    yield (
        "fields: several broken at once",
        csv_file(
            good(nir="", nom="", date_naissance="1979-02-30", sexe="X", code_postal="1", email="@", resultat="?"),
            good(**dict.fromkeys(FIELDS, "")),
        ),
        TODAY,
        None,
    )
    yield (
        "fields: names in many scripts",
        csv_file(
            good(nom="ØRSTED", prenom="Łukasz"),
            good(nom="Ἀθῆναι", prenom="Дмитрий"),
            good(nom="王", prenom="😀"),
            good(nom=FULLWIDTH_DUPONT, prenom="\ufb01ona"),
        ),
        TODAY,
        None,
    )

    # ---- blocks: a small block size makes many blocks, some read by polars, some by the csv module
    records = []
    for i in range(28):
        if i % 7 == 3:
            records.append(good(adresse=f'"{i}, rue\nsuite"', prenom=f"Prénom{i}"))
        elif i % 11 == 5:
            records.append(",".join(line(good()).split(",")[:12]))
        elif i % 5 == 1:
            records.append(good(adresse=f'"{i}, ""quoted"" street"', nom=f"NOM{i}"))
        else:
            records.append(good(prenom=f"Prénom{i}", code_postal="7501x" if i % 9 == 8 else "75011"))
    yield "blocks: 1 KiB blocks", csv_file(*records, final_eol=False), TODAY, 1024


def header_cases() -> Iterator[tuple[str, bytes, date, int | None]]:
    """Header names as spreadsheets write them (csv_reader.header_name), optional columns left out, required ones
    missing."""
    rows = [good(), good(nom="MARTIN", resultat="NEGATIF")]
    yield "headers: upper case", csv_file(*rows, header=HEADER.upper()), TODAY, None
    spread = ";".join(f'  "{f.upper()}" ' if i % 2 else f" {f.title()}\t" for i, f in enumerate(FIELDS))
    yield (
        "headers: quoted, padded with spaces and tabs, title case, a BOM, ; and CRLF",
        csv_file(*rows, header=spread, sep=";", eol="\r\n", bom=True),
        TODAY,
        None,
    )
    quoted = ",".join(f'"{f.upper()}"' if i % 3 else f'" {f} "' for i, f in enumerate(FIELDS))
    yield "headers: quoted as CSV quotes them, spaces inside the quotes", csv_file(*rows, header=quoted), TODAY, None
    bommed = ",".join(("\ufeff" + f.upper()) if f in ("nir", "sexe") else f for f in FIELDS)
    yield "headers: a BOM before some names, and none at the start", csv_file(*rows, header=bommed), TODAY, None
    yield (
        "headers: an empty header cell (a trailing separator) is an ignored column",
        csv_file(*(line(r) + "," for r in rows), header=HEADER + ","),
        TODAY,
        None,
    )
    yield (
        "headers: empty, quoted-empty and padded ignored columns keep their names as written",
        csv_file(*(",".join(["x", line(r), "", "note", "y"]) for r in rows), header=f' Extra\t,{HEADER},"", Note ,'),
        TODAY,
        None,
    )
    yield "headers: a name twice, in two cases", (HEADER + ",NIR \n").encode(), TODAY, None
    yield (
        "headers: two empty names are two ignored columns",
        csv_file(line(good()) + ",a,", header=HEADER + ",,"),
        TODAY,
        None,
    )
    yield "headers: a blank header line of spaces", b"  \t \n" + csv_file(good()), TODAY, None
    for left_out in (("email",), ("email", "telephone"), OPTIONAL):
        columns = tuple(f for f in FIELDS if f not in left_out)
        name = "+".join(left_out) if len(left_out) < 3 else "all optional"
        yield (
            f"optional columns left out: {name}",
            csv_file(*rows, good(prenom="Zoë"), columns=columns),
            TODAY,
            None,
        )
        yield (
            f"optional columns left out: {name} (the csv module path)",
            csv_file(good(nom='"MAR\nTIN"'), *rows, columns=columns),
            TODAY,
            None,
        )
    required = tuple(reversed([f for f in FIELDS if f in REQUIRED]))
    yield (
        "optional columns left out, upper case, in another order",
        csv_file(*rows, columns=required, header=",".join(required).upper()),
        TODAY,
        None,
    )
    yield "missing: nir", csv_file(good(), columns=FIELDS[1:]), TODAY, None
    yield (
        "missing: nir and resultat, names as written",
        (" NOM ;Prenom;" + ";".join(FIELDS[3:18]) + ";Résultat\n").encode(),
        TODAY,
        None,
    )
    yield (
        "missing: forty columns found, thirty shown",
        ("nom," + ",".join(f"col{i}" for i in range(1, 40)) + "\n").encode(),
        TODAY,
        None,
    )
    yield 'missing: empty cells shown as ""', b"nom,,b\n1,2,3\n", TODAY, None
    # The header line left out: the first line is a record, whose values the message must not repeat.
    yield "no header: a record on the first line", (line(good()) + "\n" + line(good()) + "\n").encode(), TODAY, None

    # ---- Windows-1252, as French Excel saves CSV: the typographic apostrophe, Œ, €, and the five undefined bytes
    cp1252 = [
        good(adresse=f"3 rue de l{APOSTROPHE}Œuvre", prenom="Hélène", commune="SAINT-ÉTIENNE"),
        good(nom="CŒUR", prescripteur_nom="Paul « Dédé » DURAND"),
        good(adresse="12 € rue", commune="x\x81y\x8dz\x8f\x90\x9d"),
        good(nom="\x81", prenom="Œ"),
    ]
    body = "\n".join(line(r) for r in cp1252) + "\n"
    undefined = bytes([0x81, 0x8D, 0x8F, 0x90, 0x9D])
    encoded = "".join(ch if ord(ch) not in set(undefined) else f"<{ord(ch):02x}>" for ch in body).encode("cp1252")
    for byte in undefined:
        encoded = encoded.replace(f"<{byte:02x}>".encode(), bytes([byte]))
    yield f"windows-1252: {APOSTROPHE} Œ € « » and undefined bytes", HEADER.encode() + b"\n" + encoded, TODAY, None
    yield (
        "windows-1252: a header with an ignored column, lines mixed with UTF-8",
        (HEADER + f",Remarque{APOSTROPHE}\n").encode("cp1252")
        + (line(good(prenom="Jérôme")) + ",ok\n").encode("utf-8")
        + (line(good(adresse=f"l{APOSTROPHE}Œuvre")) + ",“note”\n").encode("cp1252"),
        TODAY,
        None,
    )


def kind_cases() -> Iterator[tuple[str, bytes, date, int | None]]:
    """Files that are not results (pipeline.check_kind), and results in a format the page leaves to the CLI."""
    text = csv_file(good(), good(nom="MARTIN"))
    yield (
        "kinds: an Excel workbook (.xlsx)",
        zip_of(("[Content_Types].xml", "<Types/>"), ("xl/workbook.xml", "<workbook/>")),
        TODAY,
        None,
    )
    yield (
        "kinds: an OpenDocument spreadsheet (.ods)",
        zip_of(("mimetype", "application/vnd.oasis.opendocument.spreadsheet"), ("content.xml", "<x/>")),
        TODAY,
        None,
    )
    yield (
        "kinds: a Word document (a ZIP)",
        zip_of(("[Content_Types].xml", "<Types/>"), ("word/document.xml", "<w/>")),
        TODAY,
        None,
    )
    yield "kinds: an Excel 97-2003 workbook (.xls)", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), TODAY, None
    yield "kinds: UTF-16 LE with a BOM", b"\xff\xfe" + text.decode().encode("utf-16-le"), TODAY, None
    yield "kinds: UTF-16 BE with a BOM", b"\xfe\xff" + text.decode().encode("utf-16-be"), TODAY, None
    yield "kinds: UTF-16 LE without a BOM", text.decode().encode("utf-16-le"), TODAY, None
    yield "kinds: UTF-16 BE without a BOM", text.decode().encode("utf-16-be"), TODAY, None
    yield "kinds: a PDF", b"%PDF-1.7\n" + bytes(50), TODAY, None
    yield "kinds: gzip", gzip.compress(text, mtime=0), TODAY, None
    yield "kinds: an age file", b"age-encryption.org/v1\n-> X25519 abc\n", TODAY, None
    yield "kinds: a binary file", b"GIF89a\x01\x00\x01\x00\x00\xff", TODAY, None
    yield (
        "kinds: a NUL byte in a record within the first 4 KiB (the file is binary)",
        csv_file(good(), good(nom="DU\x00PONT")),
        TODAY,
        None,
    )
    filler = [good(nom="FIRST"), *[""] * 4096]  # blank lines are no records: the NUL byte lies past 4 KiB
    yield (
        "kinds: a NUL byte in a record after the first 4 KiB (that record is rejected)",
        csv_file(*filler, good(nom="DU\x00PONT"), good(prenom="C\x7fline"), good()),
        TODAY,
        None,
    )
    yield "kinds: a short file of NUL bytes", b"\x00\x00", TODAY, None
    yield "kinds: HL7 v2 (left to the CLI)", b"MSH|^~\\&|LAB|X\rPID|1\r", TODAY, None
    yield "kinds: FHIR (left to the CLI)", b'\xef\xbb\xbf {"resourceType": "Bundle"}\n', TODAY, None
    yield "kinds: CSV that looks like nothing else", b"MS,x\n", TODAY, None


INVISIBLE_SAMPLES = (
    "\u202e",  # right-to-left override
    "\u202a",
    "\u2066",  # left-to-right isolate
    "\u2069",
    "\u200e",  # left-to-right mark
    "\u200f",
    "\u061c",  # Arabic letter mark
    "\u200b",  # zero-width space
    "\u200d",
    "\u2060",  # word joiner
    "\ufeff",  # zero-width no-break space (a BOM inside a field)
    "\u00ad",  # soft hyphen
    "\u0085",  # a C1 control
    "\u009b",  # the 8-bit CSI
    "\u2028",  # line separator
    "\U000e0041",  # a tag character (invisible "A")
)


def invisible_cases() -> Iterator[tuple[str, bytes, date, int | None]]:
    """records.FORMULA_FIELDS holding a bidi control or an invisible character are rejected, wherever it stands;
    visible non-ASCII text is not (T40)."""
    records = [
        good(**{name: ("ab" + char + "c@example.fr") if name == "email" else f"DUP{char}ONT"})
        for name in FORMULA_FIELDS
        for char in INVISIBLE_SAMPLES
    ]
    yield "invisible: bidi controls and invisible characters in each text field", csv_file(*records), TODAY, None
    yield (
        "invisible: leading, trailing, alone; and visible text that is fine",
        csv_file(
            good(nom="\u202eDUPONT"),
            good(prenom="Céline\u200f"),
            good(commune="\u2066"),
            good(nom="ŒUVRAY", prenom="Zoë", adresse="3 rue de l\u2019Église", commune="L'HAŸ-LES-ROSES"),
            good(prescripteur_nom="Dr N\u2019Guessan « Jr »", adresse="12\u00a0bis rue X"),
        ),
        TODAY,
        None,
    )


def formula_cases() -> Iterator[tuple[str, bytes, date, int | None]]:
    """records.FORMULA_FIELDS beginning like a spreadsheet formula are rejected; phone numbers' + is not."""
    records = [
        good(**{name: lead + ("a@example.fr" if name == "email" else "SUM(A1)")})
        for name in FORMULA_FIELDS
        for lead in "=+-@"
    ]
    yield "formula: = + - @ in each identity and address field", csv_file(*records), TODAY, None
    yield (
        "formula: what is not a formula",
        csv_file(
            good(telephone="+33612345678", prescripteur_telephone="+33 1 45 67 89 01"),
            good(nom="D'ARC", prenom="Jean-Pierre", adresse="12-14 rue de la Paix", commune="SAINT-DENIS"),
            good(email="a=b@example.fr", prescripteur_nom="Dr +"),
            good(code_postal="-7501", prescripteur_rpps="+1000408735"),
        ),
        TODAY,
        None,
    )
    yield (
        "formula: after trimming, and behind a tab (a control character first)",
        csv_file(
            good(nom="  =1+1"),
            good(prenom=" @cmd "),
            good(adresse="\t=1+1"),
            good(commune="-\t1"),
            good(email=" -x@example.fr"),
            good(nom="=", prenom="+", resultat="?"),
        ),
        TODAY,
        None,
    )


def routing_cases() -> Iterator[dict[str, Any]]:
    """Routing vectors: the file, policy, enrolled parties, restriction and key (expected values are added)."""
    mixed = csv_file(
        good(prenom="Céline"),
        good(nom="LÉVÊQUE", prenom="Hélène", resultat="NEGATIF", adresse='"3, rue ""Haute"""'),
        good(nom="Ørsted", prenom="Zoë", email="", telephone="", code_commune_insee="2A004", code_postal="20090"),
        good(nom="O'BRIEN", prenom="ﬁona", resultat="INDETERMINE", code_commune_insee="33063", code_postal="33200"),
        good(prenom="Jérôme", code_commune_insee="97101", code_postal="97142"),
        good(code_commune_insee="97501", code_postal="97500"),
        good(nom="MARTIN", prenom="Élodie", date_naissance="29/02/1980", sexe="2", code_commune_insee="59350"),
        good(code_loinc="12345-6"),
        good(nom="DU PONT", prenom="Jean-Pierre", resultat="260373001", date_naissance="1950-01-10"),
    )
    everyone = ["cnam", "spf", "ars-11", "ars-75", "ars-94", "ars-32"]  # not ars-01: Guadeloupe is held
    one = csv_file(good())  # the Router refuses before reading
    yield {"name": "default policy", "csv": mixed, "policy": DEFAULT_POLICY, "enrolled": everyone}
    yield {
        "name": "restricted to cnam, no key",
        "csv": mixed,
        "policy": DEFAULT_POLICY,
        "enrolled": ["cnam"],
        "restrict": ["cnam"],
        "pseudonym_key": None,
    }
    yield {
        "name": "restricted to spf and ars-11",
        "csv": mixed,
        "policy": DEFAULT_POLICY,
        "enrolled": everyone,
        "restrict": ["spf", "ars-11"],
    }
    yield {
        "name": "restricted to an ARS not enrolled",
        "csv": mixed,
        "policy": DEFAULT_POLICY,
        "enrolled": everyone,
        "restrict": ["ars-01"],
    }
    yield {
        "name": "refused: not a recipient",
        "csv": one,
        "policy": DEFAULT_POLICY,
        "enrolled": everyone,
        "restrict": ["lab-x", "ars-99", "cnam"],
    }
    yield {
        "name": "refused: a national recipient not enrolled",
        "csv": one,
        "policy": DEFAULT_POLICY,
        "enrolled": ["cnam", "ars-11"],
    }
    yield {
        "name": "refused: no pseudonym key",
        "csv": one,
        "policy": DEFAULT_POLICY,
        "enrolled": everyone,
        "pseudonym_key": None,
    }
    custom = """version = "t-2.0"
loinc = ["94500-6", "94309-2"]

[[recipients]]
name = "ars-{region}-pos"
by_region = true
select = "positive"
fields = ["resultat", "nom", "date_naissance", "age", "code_postal", "adresse"]

[[recipients]]
name = "spf"
pseudonymise = true
fields = ["age", "pseudonyme", "sexe", "date_prelevement"]

[[recipients]]
name = "registry"
select = "positive"
fields = ["nir", "email", "telephone", "prescripteur_nom"]
"""
    yield {
        "name": "custom policy: regional positives, fields in another order",
        "csv": mixed,
        "policy": custom,
        "enrolled": ["spf", "registry", "ars-11-pos", "ars-94-pos", "ars-01-pos"],
    }
    blocks = csv_file(
        *(
            good(
                prenom=f"Prénom{i}",
                adresse=f'"{i}, rue\nbis"' if i % 6 == 2 else "1 rue",
                nom="É" * (i % 4 + 1),
                resultat="NEGATIF" if i % 3 else "POSITIF",
            )
            for i in range(16)
        )
    )
    yield {
        "name": "default policy, 1 KiB blocks",
        "csv": blocks,
        "policy": DEFAULT_POLICY,
        "enrolled": everyone,
        "block_bytes": 1024,
    }

    # ---- held shares: only the share of a recipient that cannot take a record is held
    paris = [
        good(nom=f"NOM{i}", resultat="POSITIF" if i % 3 == 0 else "NEGATIF", email="" if i == 4 else "a@example.fr")
        for i in range(7)
    ]
    held = csv_file(
        *paris,
        good(code_commune_insee="33063", code_postal="33200"),
        good(code_commune_insee="97501", code_postal="97500", resultat="NEGATIF"),
        good(code_commune_insee="98611", code_postal="98610"),
        good(nom="=CMD", prenom="x"),
        good(code_commune_insee="75999"),
    )
    not_ile_de_france = [n for n in everyone if n != "ars-11"]
    yield {
        "name": "held: an ARS not enrolled, and territories no ARS covers",
        "csv": held,
        "policy": DEFAULT_POLICY,
        "enrolled": not_ile_de_france,
    }
    yield {
        "name": "held: restricted to cnam and an ARS not enrolled (territories not addressed)",
        "csv": held,
        "policy": DEFAULT_POLICY,
        "enrolled": not_ile_de_france,
        "restrict": ["cnam", "ars-11"],
    }
    yield {
        "name": "held: every record's regional share (nothing for any ARS)",
        "csv": csv_file(*paris),
        "policy": DEFAULT_POLICY,
        "enrolled": ["cnam", "spf", "ars-75"],
    }
    yield {
        "name": "held: every record rejected",
        "csv": csv_file(good(nir="1"), good(code_loinc="1-1"), "short,row"),
        "policy": DEFAULT_POLICY,
        "enrolled": everyone,
    }
    two_regional = """version = "t-3.0"
loinc = ["94500-6"]

[[recipients]]
name = "ars-{region}"
by_region = true
fields = ["nom", "prenom", "resultat", "code_commune_insee"]

[[recipients]]
name = "cire-{region}"
by_region = true
select = "positive"
fields = ["age", "resultat", "code_postal"]

[[recipients]]
name = "registry"
select = "positive"
fields = ["nir", "resultat"]
unparsed = true
"""
    yield {
        "name": "held: two regional rules, each missing somewhere",
        "csv": held,
        "policy": two_regional,
        "enrolled": ["registry", "ars-75", "cire-11", "cire-75"],
    }
    short_columns = tuple(f for f in FIELDS if f not in ("email", "telephone", "prescripteur_rpps"))
    yield {
        "name": "optional columns left out, upper case, Windows-1252: what each recipient receives",
        "csv": (",".join(short_columns).upper() + "\n").encode()
        + "\n".join(
            line(r, ",", short_columns)
            for r in (good(adresse=f"l{APOSTROPHE}Œuvre"), good(nom="CŒUR", resultat="NEGATIF"))
        ).encode("cp1252")
        + b"\n",
        "policy": DEFAULT_POLICY,
        "enrolled": everyone,
    }


PEOPLE = [
    ("DUPONT", "Céline", "1979-03-15"),
    ("DUPONT", "CELINE", "1979-03-15"),
    ("dupont", "céline", "1979-03-15"),
    ("DU PONT", "Jean-Pierre", "1950-01-10"),
    ("O'Brien", "Seán", "1990-12-31"),
    ("LÉVÊQUE", "Hélène", "1980-02-29"),
    ("Ørsted", "Zoë", "2001-07-04"),
    ("Łukasz", "Æsa", "1900-01-01"),
    ("Straße", "ǅemal", "1966-06-06"),
    (FULLWIDTH_DUPONT, "\ufb01ona", "1979-03-15"),
    ("Ἀθῆναι", "Дмитрий", "1979-03-15"),
    ("王", "😀", "1979-03-15"),
    ("Ce\u0301line", "I\u0307smail", "1979-03-15"),
    ("\u0130smail", "\u0131\u0219\u0131k", "1979-03-15"),
    ("Louis XIV", "Ⅻ ² ①", "1979-03-15"),
    ("", "", "1979-03-15"),
]

POLICY_HEAD = 'version = "t-1"\nloinc = ["94500-6"]\n'
EVERYTHING = ", ".join(f'"{f}"' for f in FIELDS)


def policy_texts() -> Iterator[tuple[str, str]]:
    yield "the default policy", DEFAULT_POLICY
    yield "no recipient", POLICY_HEAD
    yield (
        "require_pq not a boolean",
        POLICY_HEAD + 'require_pq = "yes"\n[[recipients]]\nname = "cnam"\nfields = ["nom"]\n',
    )
    yield "a recipient with no field", POLICY_HEAD + '[[recipients]]\nname = "cnam"\nfields = []\n'
    yield (
        "everything to everyone",
        POLICY_HEAD + f'[[recipients]]\nname = "cnam"\nfields = [{EVERYTHING}]\n'
        f'[[recipients]]\nname = "spf"\nfields = [{EVERYTHING}]\n',
    )
    yield (
        "everything to one, but only positives",
        POLICY_HEAD + f'[[recipients]]\nname = "cnam"\nselect = "positive"\nfields = [{EVERYTHING}]\n',
    )
    yield (
        "a pseudonymised recipient given direct identifiers",
        POLICY_HEAD + '[[recipients]]\nname = "spf"\npseudonymise = true\nfields = ["pseudonyme", "nom", "nir"]\n',
    )
    yield (
        "a pseudonymised recipient without the pseudonym",
        POLICY_HEAD + '[[recipients]]\nname = "spf"\npseudonymise = true\nfields = ["age"]\n',
    )
    yield "a pseudonym without pseudonymise", POLICY_HEAD + '[[recipients]]\nname = "spf"\nfields = ["pseudonyme"]\n'
    yield "unknown fields", POLICY_HEAD + '[[recipients]]\nname = "cnam"\nfields = ["salary", "nom"]\n'
    yield "a field twice", POLICY_HEAD + '[[recipients]]\nname = "cnam"\nfields = ["nom", "nom"]\n'
    yield "fields not strings", POLICY_HEAD + '[[recipients]]\nname = "cnam"\nfields = ["nom", 1]\n'
    yield (
        "by_region without {region}",
        POLICY_HEAD + '[[recipients]]\nname = "ars"\nby_region = true\nfields = ["nom"]\n',
    )
    yield "{region} without by_region", POLICY_HEAD + '[[recipients]]\nname = "ars-{region}"\nfields = ["nom"]\n'
    yield (
        "{region} twice",
        POLICY_HEAD + '[[recipients]]\nname = "ars-{region}-{region}"\nby_region = true\nfields = ["nom"]\n',
    )
    yield "by_region not a boolean", POLICY_HEAD + '[[recipients]]\nname = "ars"\nby_region = 1\nfields = ["nom"]\n'
    yield "an invalid party name", POLICY_HEAD + '[[recipients]]\nname = "CNAM"\nfields = ["nom"]\n'
    yield (
        "an invalid party name with a slot",
        POLICY_HEAD + '[[recipients]]\nname = "{region}"\nby_region = true\nfields = ["nom"]\n',
    )
    yield "select unknown", POLICY_HEAD + '[[recipients]]\nname = "cnam"\nselect = "some"\nfields = ["nom"]\n'
    yield "format unknown", POLICY_HEAD + '[[recipients]]\nname = "cnam"\nformat = "xml"\nfields = ["nom"]\n'
    yield (
        "unknown recipient keys",
        POLICY_HEAD + '[[recipients]]\nname = "cnam"\nfields = ["nom"]\nzeta = 1\nalpha = 2\n',
    )
    yield "no name", POLICY_HEAD + '[[recipients]]\nfields = ["nom"]\n'
    yield "a recipient twice", POLICY_HEAD + '[[recipients]]\nname = "cnam"\nfields = ["nom"]\n' * 2
    yield "a recipient not a table", POLICY_HEAD + "recipients = [1]\n"
    yield "no LOINC", 'version = "t-1"\nloinc = []\n[[recipients]]\nname = "cnam"\nfields = ["nom"]\n'
    yield "a bad LOINC", 'version = "t-1"\nloinc = ["94500"]\n[[recipients]]\nname = "cnam"\nfields = ["nom"]\n'
    yield "no version", 'loinc = ["94500-6"]\n[[recipients]]\nname = "cnam"\nfields = ["nom"]\n'
    yield "a bad version", 'version = "-x"\nloinc = ["94500-6"]\n[[recipients]]\nname = "cnam"\nfields = ["nom"]\n'
    yield "unknown keys", 'version = "x"\nloinc = ["94500-6"]\nsurprise = 1\nalso = 2\n'
    yield "description not text", POLICY_HEAD + 'description = 3\n[[recipients]]\nname = "cnam"\nfields = ["nom"]\n'
    yield (
        "unparsed documents for one recipient",
        POLICY_HEAD + '[[recipients]]\nname = "cnam"\nfields = ["nom"]\nunparsed = true\n'
        '[[recipients]]\nname = "ars-{region}"\nby_region = true\nfields = ["nom"]\nunparsed = false\n',
    )
    yield "unparsed not a boolean", POLICY_HEAD + '[[recipients]]\nname = "cnam"\nfields = ["nom"]\nunparsed = "yes"\n'
    yield (
        "unparsed documents for a pseudonymised recipient",
        POLICY_HEAD + '[[recipients]]\nname = "spf"\npseudonymise = true\nfields = ["pseudonyme"]\nunparsed = true\n',
    )
    yield (
        "unparsed and another unknown key",
        POLICY_HEAD + '[[recipients]]\nname = "cnam"\nfields = ["nom"]\nunparsed = true\nverbatim = true\n',
    )


# ------------------------------------------------------------------ the document


def _input(data: bytes) -> dict[str, str]:
    try:
        return {"csv": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"csv_base64": base64.b64encode(data).decode("ascii")}


def constants() -> dict[str, Any]:
    """labrelay.domain.records, for web/src/records.js to match."""
    return {
        "FIELDS": list(records.FIELDS),
        "DERIVED": list(records.DERIVED),
        "ALL_OUTPUT_FIELDS": list(records.ALL_OUTPUT_FIELDS),
        "DIRECT_IDENTIFIERS": sorted(records.DIRECT_IDENTIFIERS),
        "REQUIRED": sorted(records.REQUIRED),
        "MAX_LENGTH": records.MAX_LENGTH,
        "RAW_MAX": records.RAW_MAX,
        "Result": {r.name: r.value for r in records.Result},
        "SNOMED_RESULTS": {code: r.value for code, r in records.SNOMED_RESULTS.items()},
        "DEFAULT_LOINC": list(records.DEFAULT_LOINC),
        "Reason": {r.name: r.value for r in records.Reason},
        "REVIEW_REASONS": sorted(r.value for r in records.REVIEW_REASONS),
        "OPTIONAL": list(records.OPTIONAL),
        "FORMULA_FIELDS": list(records.FORMULA_FIELDS),
        "INVISIBLE_RANGES": [list(r) for r in records.INVISIBLE_RANGES],
    }


def build_windows_1252() -> str:
    """Bytes 0x80-0xFF as the CLI decodes a line that is not UTF-8."""
    return _decode_line(bytes(range(0x80, 0x100)))


def build() -> dict[str, Any]:
    """The whole vector document, every expected value derived from the Python implementation now."""
    validation = []
    for name, data, today, block_bytes in validation_cases():
        case: dict[str, Any] = {"name": name, **_input(data), "today": today.isoformat()}
        if block_bytes:
            case["block_bytes"] = block_bytes
        case["expected"] = derive_validation(data, today=today, block_bytes=block_bytes)
        validation.append(case)
    routing = []
    for spec in routing_cases():
        key = spec.get("pseudonym_key", KEY)
        case = {
            "name": spec["name"],
            **_input(spec["csv"]),
            "today": TODAY.isoformat(),
            "policy": spec["policy"],
            "enrolled": spec["enrolled"],
            "restrict": spec.get("restrict"),
            "pseudonym_key": key,
        }
        if spec.get("block_bytes"):
            case["block_bytes"] = spec["block_bytes"]
        case["expected"] = derive_routing(
            spec["csv"],
            today=TODAY,
            policy=spec["policy"],
            enrolled=spec["enrolled"],
            restrict=spec.get("restrict"),
            pseudonym_key=key,
            block_bytes=spec.get("block_bytes"),
        )
        routing.append(case)
    pseudonyms = [
        {"nom": n, "prenom": p, "date_naissance": d, "pseudonym": h}
        for (n, p, d), h in zip(PEOPLE, derive_pseudonyms(PEOPLE, KEY), strict=True)
    ]
    return {
        "about": "Generated by tests/vectors/make_web_vectors.py from the Python implementation; do not edit.",
        "records": constants(),
        "file_name": FILE_NAME,
        "loinc": sorted(parse_policy(DEFAULT_POLICY).loinc),
        "pseudonym_key": KEY,
        "windows_1252": build_windows_1252(),
        "validation": validation,
        "routing": routing,
        "pseudonyms": pseudonyms,
        "policies": [{"name": name, "toml": text, "expected": derive_policy(text)} for name, text in policy_texts()],
    }


def dumps(document: dict[str, Any]) -> str:
    """Compact JSON, one vector per line (readable diffs, a small file)."""

    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    parts = []
    for key, value in document.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            parts.append(f"{one(key)}:[\n" + ",\n".join(one(v) for v in value) + "\n]")
        else:
            parts.append(f"{one(key)}:{one(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main() -> None:
    text = dumps(build())
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"{OUTPUT.relative_to(ROOT)}: {len(text.encode()) // 1024} KiB")


if __name__ == "__main__":
    main()
