"""The CSV reader against hostile files: every record is numbered and ends up accepted or refused with a reason."""

from __future__ import annotations

import random  # noqa: TID251 - seeded: reproducible blocks
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from labrelay.batch.csv_reader import CsvLayout, CsvReader, _decode_line, to_utf8
from labrelay.batch.pipeline import RejectionReport, ReviewFile, Summary, open_reader, run
from labrelay.domain.records import FIELDS, INVISIBLE_RANGES, OPTIONAL, Reason
from labrelay.errors import NotResults
from labrelay.synthetic.generator import nir_key
from tests.support.records import PADDED, good, line, validator


def process(path: Path) -> tuple[Summary, dict[int, list[tuple[str, str]]]]:
    rows: list[tuple[int, str, str]] = []

    class Capture(RejectionReport):
        def add(self, new: list[tuple[int, str, str]]) -> None:
            rows.extend(new)

    summary = run(
        CsvReader(path, block_bytes=4096),
        validator(),
        summary=Summary("csv"),
        report=Capture(None),
        review=ReviewFile(None),
    )
    by_record: dict[int, list[tuple[str, str]]] = {}
    for record, field, reason in rows:
        by_record.setdefault(record, []).append((field, reason))
    return summary, by_record


def test_a_hostile_file_is_handled_record_by_record(tmp_path: Path) -> None:
    """Mixed encodings, `;`, BOM, CRLF, over-long fields, NUL bytes, short rows, bad keys, impossible dates,
    unknown codes: each record gets its own verdict, the counts reconcile, and the valid edge cases pass."""
    columns = tuple(reversed(FIELDS))  # header order is free
    corsica_a = "2840520004123"  # born in Corse-du-Sud (2A)
    corsica_a = corsica_a[:5] + "2A" + corsica_a[7:]
    corsica_b = corsica_a[:5] + "2B" + corsica_a[7:]
    abroad = "1790599109042"  # born abroad: 99 + country code 109
    records: list[tuple[str, bytes]] = [
        ("ok, latin-1 accents", line(good(prenom="Hélène", commune="SAINT-ÉTIENNE"), ";", columns).encode("latin-1")),
        ("ok, utf-8 accents", line(good(prenom="Jérôme"), ";", columns).encode("utf-8")),
        ("ok, Corsica 2A", line(good(nir=corsica_a + nir_key(corsica_a)), ";", columns).encode()),
        ("ok, Corsica 2B", line(good(nir=corsica_b + nir_key(corsica_b)), ";", columns).encode()),
        ("ok, born abroad", line(good(nir=abroad + nir_key(abroad)), ";", columns).encode()),
        (
            "ok, DD/MM/YYYY and SNOMED",
            line(good(date_naissance="15/03/1979", resultat="260415000"), ";", columns).encode(),
        ),
        ("bad key", line(good(nir="179037511104200"), ";", columns).encode()),
        ("impossible date", line(good(date_prelevement="2026-02-30"), ";", columns).encode()),
        ("unknown LOINC", line(good(code_loinc="12345-6"), ";", columns).encode()),
        ("unknown commune", line(good(code_commune_insee="75999"), ";", columns).encode()),
        ("NUL byte", line(good(nom="DU\x00PONT"), ";", columns).encode()),
        ("over-long", line(good(adresse="x" * 400), ";", columns).encode()),
        ("short row", ";".join(line(good(), ";", columns).split(";")[:10]).encode()),
        ("long row", (line(good(), ";", columns) + ";extra").encode()),
        ("sex digit 3", line(good(nir="379037511104217"), ";", columns).encode()),
    ]
    body = b"\xef\xbb\xbf" + ";".join(columns).encode() + b"\r\n" + b"\r\n".join(r for _, r in records) + b"\r\n"
    path = tmp_path / "hostile.csv"
    path.write_bytes(body)
    summary, reasons = process(path)
    assert summary.read == len(records)
    assert summary.reconciled
    expected = {
        7: ("nir", Reason.NIR_KEY),
        8: ("date_prelevement", Reason.DATE_UNREAL),
        9: ("code_loinc", Reason.LOINC),
        10: ("code_commune_insee", Reason.COMMUNE_UNKNOWN),
        11: ("nom", Reason.CONTROL),
        12: ("adresse", Reason.TOO_LONG),
        13: ("*", Reason.MISSING_FIELDS),
        14: ("*", Reason.EXTRA_FIELDS),
        15: ("nir", Reason.NIR_SEX),
    }
    assert set(reasons) == set(expected), reasons
    for record, (field, reason) in expected.items():
        assert (field, reason.value) in reasons[record], (record, reasons[record])
    assert summary.accepted == 6
    assert summary.rejected == 9


def test_quoted_fields_separators_and_newlines(tmp_path: Path) -> None:
    """A quoted separator is data; a quoted newline keeps the record whole (and is refused as a control
    character); broken quoting refuses that record only; record numbers stay right across all of it."""
    header = ",".join(FIELDS)
    ok = line(good(adresse='"12, rue de la ""Paix"""'))
    multi = line(good(adresse='"12 rue\nsuite"'))
    broken = line(good(nom='"DU"PONT'))
    path = tmp_path / "q.csv"
    path.write_text(f"{header}\n{ok}\n{multi}\n\n{broken}\n{line(good())}\n", encoding="utf-8")
    summary, reasons = process(path)
    assert summary.read == 4
    assert summary.reconciled
    assert ("adresse", Reason.CONTROL.value) in reasons[2]
    assert ("*", Reason.MALFORMED.value) in reasons[3]
    assert set(reasons) == {2, 3}
    assert summary.accepted == 2


def test_blocks_split_records_exactly(tmp_path: Path) -> None:
    """Tiny blocks (1 KiB) force many splits, some inside quoted fields: same records as one block."""
    rows = [line(good(adresse=f'"{i}, ""quoted"" street"', prenom=f"Prénom{i}")) for i in range(300)]
    path = tmp_path / "many.csv"
    path.write_text(",".join(FIELDS) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    small = pl.concat([b.frame for b in CsvReader(path, block_bytes=1024).batches()])
    large = pl.concat([b.frame for b in CsvReader(path).batches()])
    assert small.height == large.height == 300
    assert small.equals(large)
    assert small["_record"].to_list() == list(range(1, 301))
    assert small["adresse"][7] == '7, "quoted" street'


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty"),
        (b"nom,b,c\n1,2,3\n", "columns found: nom, b, c; expected: nir, nom"),
        (b"a,b,c\n1,2,3\n", r"first line names none of the template's columns \(3 fields, not shown"),
        (b"\x01\x02binary\xff", "not in the lab-results template"),
        (",".join([*FIELDS, "nir"]).encode() + b"\n", "twice"),
        (",".join([*FIELDS, "NIR "]).encode() + b"\n", "twice"),
    ],
)
def test_files_that_are_not_results_at_all(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(NotResults, match=why):
        CsvReader(path)


def test_a_file_without_its_header_line_is_refused_without_repeating_its_first_record(tmp_path: Path) -> None:
    """The header line left out, the first line is a patient's record: the refusal, which goes to JSON documents
    and the nightly script's log, says so without its values (it quoted them as "columns found")."""
    record = good()
    path = tmp_path / "x.csv"
    path.write_text(line(record) + "\n" + line(good(nom="MARTIN")) + "\n", encoding="utf-8")
    with pytest.raises(NotResults) as refused:
        CsvReader(path)
    said = refused.value.diagnostics()
    assert "is the header line missing?" in said
    shown = [v for v in record.values() if len(v) > 3 and v in said.replace(str(path), "")]
    assert shown == []


def _zip_with(name: str) -> bytes:
    import io  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, "<x/>")
    return buffer.getvalue()


HEADER_LINE = ",".join(FIELDS) + "\n"


@pytest.mark.parametrize(
    ("content", "kind", "fix"),
    [
        (_zip_with("[Content_Types].xml") + _zip_with("xl/workbook.xml"), "Excel workbook", "export it as CSV"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), "Excel 97-2003", "export it as CSV"),
        (b"\xff\xfe" + HEADER_LINE.encode("utf-16-le"), "UTF-16 text", "CSV UTF-8"),
        (HEADER_LINE.encode("utf-16-le"), "UTF-16 text", "CSV UTF-8"),
        (HEADER_LINE.encode("utf-16-be"), "UTF-16 text", "CSV UTF-8"),
        (b"%PDF-1.7\n" + bytes(50), "PDF document", "--as-is"),
        (b"\x1f\x8b\x08" + bytes(20), "gzip", "decompress"),
        (b"GIF89a\x00\x00", "binary file", "--as-is"),
    ],
)
@pytest.mark.parametrize("fmt", ["auto", "csv"])
def test_workbooks_utf16_and_documents_are_named_and_refused(
    tmp_path: Path, content: bytes, kind: str, fix: str, fmt: str
) -> None:
    """Whatever the file's name and whatever --format says, a workbook or UTF-16 text is not read as a CSV: one
    line says what it is and how to export it."""
    path = tmp_path / "results.csv"
    path.write_bytes(content)
    with pytest.raises(NotResults, match=kind) as caught:
        open_reader(path, fmt)
    assert fix in caught.value.diagnostics()


def test_one_bad_records_nul_is_that_records_problem_random_bytes_are_binary(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text(HEADER_LINE + line(good()) + "\n" + line(good(nom="DU\x00PONT")) + "\n", encoding="utf-8")
    fmt, reader = open_reader(path)
    summary = run(reader, validator(), summary=Summary(fmt), report=RejectionReport(None), review=ReviewFile(None))
    assert (summary.accepted, summary.rejected) == (1, 1)
    path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(5000)))  # every byte value, evenly: not text
    with pytest.raises(NotResults, match="a binary file"):
        open_reader(path)


def test_header_names_ignore_case_spaces_and_a_bom(tmp_path: Path) -> None:
    header = ";".join(f'  "{f.upper()}" ' if i % 2 else f" {f.title()}\t" for i, f in enumerate(FIELDS))
    path = tmp_path / "upper.csv"
    path.write_bytes(b"\xef\xbb\xbf" + header.encode() + b"\r\n" + line(good(), ";").encode() + b"\r\n")
    reader = CsvReader(path)
    assert reader.layout.columns == FIELDS
    assert reader.layout.ignored == ()
    [batch] = list(reader.batches())
    assert batch.frame.select(FIELDS).row(0) == tuple(good()[f] for f in FIELDS)


@pytest.mark.parametrize(
    "left_out", [("email",), ("email", "telephone"), OPTIONAL], ids=["email", "email+telephone", "all optional"]
)
def test_optional_columns_may_be_left_out_and_read_as_empty(tmp_path: Path, left_out: tuple[str, ...]) -> None:
    columns = tuple(f for f in FIELDS if f not in left_out)
    path = tmp_path / "short.csv"
    rows = [good(), good(nom="MARTIN")]
    path.write_text(",".join(columns) + "\n" + "\n".join(line(r, ",", columns) for r in rows) + "\n")
    reader = CsvReader(path)
    assert reader.layout.missing == tuple(f for f in OPTIONAL if f in left_out)
    summary = run(reader, validator(), summary=Summary("csv"), report=RejectionReport(None), review=ReviewFile(None))
    assert (summary.read, summary.accepted, summary.rejected) == (2, 2, 0)
    [batch] = list(CsvReader(path).batches())
    for name in left_out:
        assert batch.frame[name].to_list() == ["", ""]
    # The record-by-record path (a quoted field across lines sends the block there) reads them the same way.
    path.write_text(
        ",".join(columns) + "\n" + line(good(nom='"MAR\nTIN"'), ",", columns) + "\n" + line(good(), ",", columns) + "\n"
    )
    [batch] = list(CsvReader(path).batches())
    assert batch.frame.height == 2
    assert batch.frame[left_out[0]].to_list() == ["", ""]


def test_a_required_column_left_out_is_named(tmp_path: Path) -> None:
    path = tmp_path / "no-nir.csv"
    path.write_text(",".join(f for f in FIELDS if f != "nir") + "\n")
    with pytest.raises(NotResults, match=r"missing: nir$"):
        CsvReader(path)


def test_windows_1252_as_excel_exports_it(tmp_path: Path) -> None:
    """French Excel saves CSV in Windows-1252: the typographic apostrophe and the oe ligature are read as the text
    they are (ISO-8859-1 made them C1 control codes); the five bytes Windows-1252 leaves undefined are read as
    browsers read them, as the code point of the same value: a C1 control, which no name or address holds (the
    record is refused: "invisible or direction-changing character")."""
    rows = [good(adresse="3 rue de l\u2019Œuvre", prenom="Hélène"), good(adresse="x\x81y")]
    body = HEADER_LINE + "\n".join(line(r) for r in rows) + "\n"
    path = tmp_path / "cp1252.csv"
    path.write_bytes(body.encode("cp1252", errors="ignore").replace(b"xy", b"x\x81y"))
    summary = run(
        CsvReader(path), validator(), summary=Summary("csv"), report=RejectionReport(None), review=ReviewFile(None)
    )
    assert (summary.accepted, summary.rejected) == (1, 1)
    [batch] = list(CsvReader(path).batches())
    assert batch.frame["adresse"].to_list() == ["3 rue de l\u2019Œuvre", "x\x81y"]


def test_unknown_columns_are_ignored_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "extra.csv"
    path.write_text(",".join([*FIELDS, "commentaire_interne"]) + "\n" + line(good()) + ",secret note\n")
    reader = CsvReader(path)
    assert reader.layout.ignored == ("commentaire_interne",)
    [batch] = list(reader.batches())
    assert "commentaire_interne" not in batch.frame.columns


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
@pytest.mark.parametrize(
    "where",
    ["first field", "middle field", "last field", "space after separator", "space before separator"],
)
def test_values_padded_with_spaces_are_trimmed_wherever_they_sit(tmp_path: Path, where: str, eol: bytes) -> None:
    """The reader tells validation when no value can carry spaces, so that clean blocks skip trimming. The probe must
    see padding at the start of a line, at its end (before LF or CRLF) and next to a separator."""
    columns = FIELDS
    padded = PADDED[where]
    rows = [line(good()), line(good(**dict([padded])))]
    path = tmp_path / "padded.csv"
    path.write_bytes(eol.join(x.encode() for x in [",".join(columns), *rows]) + eol)
    summary, reasons = process(path)
    assert reasons == {}
    assert summary.accepted == 2
    [batch] = list(CsvReader(path).batches())
    assert batch.padded


# ---------------------------------------------------------------- one parse or two (issue 22): same batches


def _block(rng: random.Random, sep: str) -> bytes:
    """A few records of the template's width, most well-formed, some with a field too few or too many, quoted
    values (some holding the separator or an escaped quote), stray quotes, blank lines, LF or CRLF."""
    records = []
    for _ in range(rng.randrange(1, 8)):
        width = len(FIELDS) + (rng.choice((-2, -1, 1, 2)) if rng.random() < 0.1 else 0)
        values = []
        for _ in range(width):
            odd = rng.random() < 0.02
            value = "".join(
                rng.choice(["a", "é", " ", sep, '"', '""', "b"] if odd else ["a", "é", " ", "b", sep])
                for _ in range(rng.randrange(4))
            )
            if sep in value or rng.random() < 0.3:
                value = '"' + value.replace('"', '""') + '"'
            elif rng.random() < 0.02:
                value = rng.choice(['"', ' "', '"a"b', 'a"', '"a" ', '""', '"""']) + value
            values.append(value)
        records.append(sep.join(values))
    if rng.random() < 0.05:
        records.insert(rng.randrange(len(records)), "")
    end = rng.choice(["\n", "\r\n"])
    return (end.join(records) + (end if rng.random() < 0.9 else "")).encode()


def _reader(sep: str) -> CsvReader:
    reader = CsvReader.__new__(CsvReader)
    reader.layout = CsvLayout(sep, FIELDS, (), False)
    reader._schema = dict.fromkeys(FIELDS, pl.String)
    reader._clean = True
    return reader


@pytest.mark.parametrize("seed", range(4))
def test_one_parse_gives_what_two_parses_give(seed: int) -> None:
    """The one-parse path takes a block only when it is sure to read it as the two-parse path does: on random
    blocks (short and long records, quoted separators, escaped and stray quotes, blank lines, CRLF), every batch it
    gives equals the two-parse path's, rejections included."""
    rng = random.Random(seed)
    taken = 0
    for _ in range(400):
        sep = rng.choice(",;")
        data = _block(rng, sep)
        reader = _reader(sep)
        once = reader._parsed_once(data, 7, quotes=data.count(b'"'), cr=data.count(b"\r"))
        if once is None:
            continue
        taken += 1
        twice = reader._parsed_twice(data, 7, control=False)
        assert twice is not None, data
        assert (once.rejected, once.read) == (twice.rejected, twice.read), data
        assert_frame_equal(once.frame, twice.frame)
    assert taken > 60  # the test means something: a fair share of the blocks take one parse


def test_a_long_or_short_record_deep_in_a_large_block_is_still_found() -> None:
    """Polars parses a large block in several chunks; a record with a field too many (which the one-parse path
    leaves to polars to refuse) or too few, far from the block's start, is still rejected as such."""
    rec = line(good()).encode() + b"\n"
    reader = _reader(",")
    for broken, reason in ((rec[:-1] + b",x\n", Reason.EXTRA_FIELDS), (rec.split(b",", 1)[1], Reason.MISSING_FIELDS)):
        data = rec * 30_000 + broken + rec * 30_000
        batch = reader._fast(data, 0)
        assert batch is not None
        assert batch.rejected == [(30_001, "*", str(reason))]
        assert batch.frame.height == 60_000


def test_windows_1252_blocks_read_as_line_by_line() -> None:
    """A block that is not UTF-8 is decoded whole as Windows-1252 only when no line of it is UTF-8 beyond ASCII:
    the same text as decoding each line, on random mixes of both encodings."""
    rng = random.Random(22)
    pieces = [b"a", b"\xe9", b"\x92", b"\xc3\xa9", b"\xe2\x80\x99", b"\n", b"\x81", b"\xed\xa0\x80", b"\xc3", b"\xf0"]
    for _ in range(5000):
        block = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
        expected = b"\n".join(_decode_line(part).encode() for part in block.split(b"\n"))
        assert to_utf8(block) == expected, block


@pytest.mark.threat("T40")
def test_every_invisible_character_marks_its_block() -> None:
    """The reader skips the invisible-character rule only for a block without any lead byte of one: every
    character of INVISIBLE_RANGES, in any value, keeps the rule (and refuses the record) in the whole pipeline."""
    reader = _reader(",")
    clean = line(good()).encode() + b"\n"
    assert reader._fast(clean * 3, 0).invisible is False  # type: ignore[union-attr]
    for lo, hi in INVISIBLE_RANGES:
        for cp in {lo, hi, (lo + hi) // 2}:
            data = clean + line(good(nom=f"DU{chr(cp)}PONT")).encode() + b"\n"
            batch = reader._fast(data, 0)
            assert batch is not None
            assert batch.invisible, hex(cp)
            result = validator().validate(batch.frame, padded=batch.padded, invisible=batch.invisible)
            assert result.rejections.filter(pl.col("record") == 2)["reason"].to_list() in (
                [Reason.INVISIBLE.value],
                [Reason.CONTROL.value],  # the C1 controls are control characters to the reader as well
            ), hex(cp)
