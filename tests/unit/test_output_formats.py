"""What ``labrelay fetch --format csv|excel|parquet`` writes (labrelay.client.formats).

RowTagger: the same bytes however the payload is cut into chunks (at every byte, between \\r and \\n), with CRLF,
without a final newline, header only. Excel: formula-like cells escaped, leading zeros kept, BOM, ``;``, CRLF, and
Python's csv module reads back exactly the intended cell texts. Parquet: typed columns, the values, only the
columns present. Bad inputs: one labrelay error naming the file, the record and the column, never a value.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labrelay.client import formats
from labrelay.client.formats import (
    EXTENSIONS,
    OUTPUT_FORMATS,
    RowTagger,
    excel_cell,
    excel_text,
    write_excel,
    write_parquet,
)
from labrelay.errors import LabrelayError, Unreadable, UsageError

BATCH = "0b7e3c5a-9d1f-4e2b-8a6c-3f5e7d9b1a2c"
SENDER = "lab-paris-01"
SUFFIX = f",{BATCH},{SENDER}"


def tag(payload: bytes, cuts: list[int] | None = None) -> bytes:
    """``payload`` through a RowTagger, written in pieces cut at ``cuts`` (byte offsets)."""
    out = io.BytesIO()
    tagger = RowTagger(out, BATCH, SENDER)
    bounds = [0, *sorted(set(cuts or [])), len(payload)]
    for start, end in itertools.pairwise(bounds):
        assert tagger.write(payload[start:end]) == end - start
    tagger.finish()
    return out.getvalue()


def reference(payload: bytes) -> bytes:
    """The obvious, slow tagger: line by line."""
    out = []
    for number, line in enumerate(payload.splitlines(keepends=True)):
        body = line.rstrip(b"\r\n")
        ending = line[len(body) :]
        out.append(body + (b",batch_id,sender" if number == 0 else SUFFIX.encode()) + ending)
    return b"".join(out)


# ------------------------------------------------------------------ RowTagger

PAYLOAD = (
    b"nom,prenom,date_naissance,age,telephone\n"
    b'DUPONT,"Marie, Anne",1990-01-02,35,0612345678\n'
    b'N\'GUYEN,"Le ""Grand""",1985-12-31,40,\n'
    b"\xc3\x89LODIE,\xc3\x89l\xc3\xa9onore,2001-07-14,24,+33612345678\n"
)


def test_a_payload_gets_the_two_columns_on_every_line() -> None:
    assert tag(PAYLOAD) == (
        b"nom,prenom,date_naissance,age,telephone,batch_id,sender\n"
        b'DUPONT,"Marie, Anne",1990-01-02,35,0612345678' + SUFFIX.encode() + b"\n"
        b'N\'GUYEN,"Le ""Grand""",1985-12-31,40,' + SUFFIX.encode() + b"\n"
        b"\xc3\x89LODIE,\xc3\x89l\xc3\xa9onore,2001-07-14,24,+33612345678" + SUFFIX.encode() + b"\n"
    )
    assert tag(PAYLOAD) == reference(PAYLOAD)


@pytest.mark.parametrize(
    "payload",
    [
        PAYLOAD,
        PAYLOAD.replace(b"\n", b"\r\n"),  # CRLF throughout
        PAYLOAD.replace(b"\n", b"\r\n", 2),  # mixed
        PAYLOAD.rstrip(b"\n"),  # no final newline
        PAYLOAD.replace(b"\n", b"\r\n").rstrip(b"\n"),  # ends with a bare \r
        b"nom,prenom\n",  # header only
        b"nom,prenom\r\n",
        b"nom,prenom",  # header only, no newline
        b"a\nb\n",  # one-byte lines
        b"x\r\n\r\n",  # an empty data line
    ],
    ids=[
        "lf",
        "crlf",
        "mixed",
        "no-final-newline",
        "final-bare-cr",
        "header",
        "header-crlf",
        "header-only-no-eol",
        "tiny",
        "empty-line",
    ],
)
def test_every_chunking_gives_the_same_bytes(payload: bytes) -> None:
    whole = tag(payload)
    assert whole == reference(payload)
    for cut in range(len(payload) + 1):  # two chunks, cut at every byte position
        assert tag(payload, [cut]) == whole, cut
    assert tag(payload, list(range(len(payload)))) == whole  # one byte at a time
    for first in range(len(payload)):  # three chunks
        assert tag(payload, [first, first + 1]) == whole


def test_crlf_gets_the_columns_before_the_cr_even_when_cut_between_cr_and_lf() -> None:
    payload = b"a,b\r\n1,2\r\n3,4\r\n"
    expected = b"a,b,batch_id,sender\r\n1,2" + SUFFIX.encode() + b"\r\n3,4" + SUFFIX.encode() + b"\r\n"
    for cut in (4, 9, 14):  # just after each \r
        assert payload[cut - 1 : cut] == b"\r"
        assert tag(payload, [cut]) == expected


def test_an_empty_payload_writes_nothing_and_a_header_only_one_only_the_header() -> None:
    assert tag(b"") == b""
    assert tag(b"pseudonyme,age\n") == b"pseudonyme,age,batch_id,sender\n"
    assert tag(b"pseudonyme,age") == b"pseudonyme,age,batch_id,sender"


def test_the_stream_interface() -> None:
    sink = io.BytesIO()
    tagger = RowTagger(sink, BATCH, SENDER)
    assert tagger.writable()
    assert tagger.write(b"") == 0
    tagger.write(b"a\n1\n")
    tagger.flush()
    tagger.finish()
    tagger.finish()  # idempotent
    assert sink.getvalue() == b"a,batch_id,sender\n1" + SUFFIX.encode() + b"\n"
    with pytest.raises(ValueError, match="after finish"):
        tagger.write(b"2\n")


@pytest.mark.parametrize("bad", ["", "ABC", "a b", "a,b", "a\n", "lab\r", "é", "a_b", '"', "../x"])
def test_batch_id_and_sender_must_be_lower_case_letters_digits_and_hyphens(bad: str) -> None:
    with pytest.raises(UsageError):
        RowTagger(io.BytesIO(), bad, SENDER)
    with pytest.raises(UsageError):
        RowTagger(io.BytesIO(), BATCH, bad)


def test_a_first_line_without_end_is_refused_past_a_mebibyte() -> None:
    tagger = RowTagger(io.BytesIO(), BATCH, SENDER)
    for _ in range(16):
        tagger.write(b"x" * 65536)
    with pytest.raises(Unreadable, match="not a routed CSV payload"):
        tagger.write(b"x")


_cell = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=12)
_line = st.lists(_cell, min_size=1, max_size=4).map(lambda cells: ",".join(cells).encode())


@st.composite
def payloads_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    lines = draw(st.lists(_line, min_size=1, max_size=8))
    endings = draw(st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=len(lines), max_size=len(lines)))
    payload = b"".join(line + end for line, end in zip(lines, endings, strict=True))
    if draw(st.booleans()):
        payload = payload.rstrip(b"\r\n")  # the last line without its end
    cuts = draw(st.lists(st.integers(0, len(payload)), max_size=6))
    return payload, cuts


@settings(max_examples=300, deadline=None)
@given(payloads_and_cuts())
def test_property_any_payload_any_chunking_is_tagged_as_line_by_line(case: tuple[bytes, list[int]]) -> None:
    payload, cuts = case
    assert tag(payload, cuts) == reference(payload)


def test_the_formats_module_does_not_load_polars() -> None:
    """fetch --format csv must start fast: tagging needs no polars, nor does importing the module."""
    code = (
        "import sys, io, json\n"
        "from labrelay.client.formats import RowTagger\n"
        f"t = RowTagger(io.BytesIO(), {BATCH!r}, {SENDER!r}); t.write(b'a\\n1\\n'); t.finish()\n"
        "print(json.dumps('polars' in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout.strip()) is False


def test_output_formats_and_extensions() -> None:
    assert OUTPUT_FORMATS == ("csv", "excel", "parquet")
    assert set(EXTENSIONS) == set(OUTPUT_FORMATS)
    assert EXTENSIONS == {"csv": ".csv", "excel": ".csv", "parquet": ".parquet"}


# ------------------------------------------------------------------ tagged CSV files (what --format csv writes)


def tagged_file(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """A tagged CSV as fetch writes it: polars-style quoting (Python's csv module quotes the same cells), LF."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(tag(buffer.getvalue().encode("utf-8")))
    return path


CNAM_LIKE = ["nir", "nom", "prenom", "date_naissance", "code_postal", "code_commune_insee", "telephone",
             "prescripteur_rpps", "laboratoire_finess", "date_prelevement", "date_validation", "resultat"]  # fmt: skip
NASTY = [
    # cell text in the file → cell text in the spreadsheet
    ('=HYPERLINK("http://x";"clic")', '\'=HYPERLINK("http://x";"clic")'),
    ("+33612345678", "'+33612345678"),
    ("-2+3", "'-2+3"),
    ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
    ("0612345678", '="0612345678"'),
    ("01000", '="01000"'),
    ("12345678901", '="12345678901"'),  # 11 digits: an RPPS would show as 1.23E+10
    ("275017512345678", '="275017512345678"'),  # a NIR: 15 digits
    ("1234567890", "1234567890"),  # 10 digits, no leading zero: a number Excel shows exactly
    ("75001", "75001"),
    ("2A004", "2A004"),
    ("0612 34", "0612 34"),  # not all digits: text already
    ("a;b", "a;b"),
    ('dit "le grand"', 'dit "le grand"'),
    ("Élodie", "Élodie"),
    ("'quoted", "'quoted"),
    ("", ""),
    ("\uff10\uff11\uff12", "\uff10\uff11\uff12"),  # full-width digits are not ASCII digits: left alone
]


def test_excel_text_escapes_formulas_and_keeps_leading_zeros() -> None:
    for value, expected in NASTY:
        assert excel_text(value) == expected, value


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=16), min_size=1, max_size=20))
def test_property_no_cell_of_the_sender_can_start_a_formula(values: list[str]) -> None:
    """Whatever the text: either it cannot start a formula, or it is the ="digits" form we write; and the
    vectorised rule (polars) is the scalar one."""
    for value in values:
        cell = excel_text(value)
        assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r") or re.fullmatch(r'="[0-9]+"', cell)
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    assert frame.select(excel_cell("v")).to_series().to_list() == [excel_text(v) for v in values]


def read_excel_output(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf"), "UTF-8 with a BOM"
    return list(csv.reader(io.StringIO(data[3:].decode("utf-8"), newline=""), delimiter=";"))


def test_excel_output_round_trips_to_the_intended_cells(tmp_path: Path) -> None:
    header = ["nom", "telephone", "code_postal"]
    rows = [[value, "0612345678", "01000"] for value, _ in NASTY]
    source = tagged_file(tmp_path / "in.csv", header, rows)
    out = io.BytesIO()
    assert write_excel(source, out) == len(rows)
    data = out.getvalue()
    assert data.startswith(b"\xef\xbb\xbfnom;telephone;code_postal;batch_id;sender\r\n")
    assert data.endswith(b"\r\n")
    assert data.count(b"\r\n") == len(rows) + 1
    assert b"\n" not in data.replace(b"\r\n", b""), "CRLF line ends only"
    cells = read_excel_output(data)
    assert cells[0] == [*header, "batch_id", "sender"]
    for (value, expected), row in zip(NASTY, cells[1:], strict=True):
        assert row == [expected, '="0612345678"', '="01000"', BATCH, SENDER], value
    # Every cell that could start a formula is escaped, or is the ="digits" form.
    for row in cells[1:]:
        for cell in row:
            assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r") or re.fullmatch(r'="[0-9]+"', cell), cell


def test_excel_quotes_only_what_csv_requires(tmp_path: Path) -> None:
    source = tagged_file(tmp_path / "in.csv", ["nom", "prenom"], [["a;b", 'x"y'], ["plain", "Zoé"]])
    out = io.BytesIO()
    write_excel(source, out)
    assert out.getvalue().decode("utf-8-sig").splitlines()[1:] == [
        f'"a;b";"x""y";{BATCH};{SENDER}',
        f"plain;Zoé;{BATCH};{SENDER}",
    ]


def test_excel_of_a_header_only_file_is_its_header(tmp_path: Path) -> None:
    source = tagged_file(tmp_path / "in.csv", ["pseudonyme", "age"], [])
    out = io.BytesIO()
    assert write_excel(source, out) == 0
    assert out.getvalue() == b"\xef\xbb\xbfpseudonyme;age;batch_id;sender\r\n"


def cnam_rows() -> list[list[str]]:
    return [
        ["275017512345678", "DUPONT", "Marie", "1975-01-31", "01000", "01053", "0612345678", "10001234567",
         "750000001", "2026-01-10", "2026-01-11", "POSITIF"],
        ["185032A00412345", "N'GUYEN", "Lê", "1985-03-02", "", "2A004", "+33612345678", "",
         "2A0000019", "2026-01-12", "2026-01-12", "POSITIF"],
    ]  # fmt: skip


def test_parquet_has_typed_columns_and_the_values(tmp_path: Path) -> None:
    source = tagged_file(tmp_path / "in.csv", CNAM_LIKE, cnam_rows())
    out = tmp_path / "out.parquet"
    assert write_parquet(source, out) == 2
    frame = pl.read_parquet(out)
    assert frame.columns == [*CNAM_LIKE, "batch_id", "sender"]
    assert frame.schema["date_naissance"] == pl.Date
    assert frame.schema["date_prelevement"] == pl.Date
    assert frame.schema["date_validation"] == pl.Date
    typed = {"date_naissance", "date_prelevement", "date_validation"}
    assert all(frame.schema[c] == pl.String for c in frame.columns if c not in typed)
    first = frame.row(0, named=True)
    assert first["nir"] == "275017512345678"
    assert first["code_postal"] == "01000"
    assert first["code_commune_insee"] == "01053"
    assert first["telephone"] == "0612345678"
    assert first["prescripteur_rpps"] == "10001234567"
    assert first["date_naissance"] == date(1975, 1, 31)
    assert first["batch_id"] == BATCH
    assert first["sender"] == SENDER
    second = frame.row(1, named=True)
    assert second["nir"] == "185032A00412345"  # born in Corsica: letters in the NIR
    assert second["code_postal"] is None  # an empty field is null
    assert second["code_commune_insee"] == "2A004"
    assert second["telephone"] == "+33612345678"


def test_parquet_for_spf_types_age_and_writes_to_a_stream(tmp_path: Path) -> None:
    header = ["pseudonyme", "age", "sexe", "code_commune_insee", "date_prelevement", "date_validation"]
    rows = [["ab" * 32, "0", "F", "01053", "2026-01-10", "2026-01-11"], ["cd" * 32, "101", "M", "75056", "2026-01-12",
            "2026-01-12"]]  # fmt: skip
    source = tagged_file(tmp_path / "in.csv", header, rows)
    out = io.BytesIO()
    assert write_parquet(source, out) == 2
    frame = pl.read_parquet(io.BytesIO(out.getvalue()))
    assert dict(frame.schema) == {
        "pseudonyme": pl.String,
        "age": pl.Int16,
        "sexe": pl.String,
        "code_commune_insee": pl.String,
        "date_prelevement": pl.Date,
        "date_validation": pl.Date,
        "batch_id": pl.String,
        "sender": pl.String,
    }
    assert frame["age"].to_list() == [0, 101]
    assert frame["code_commune_insee"].to_list() == ["01053", "75056"]


def test_parquet_of_a_header_only_file_has_the_schema_and_no_row(tmp_path: Path) -> None:
    source = tagged_file(tmp_path / "in.csv", ["pseudonyme", "age", "date_prelevement"], [])
    out = tmp_path / "out.parquet"
    assert write_parquet(source, out) == 0
    frame = pl.read_parquet(out)
    assert frame.height == 0
    assert frame.schema["age"] == pl.Int16
    assert frame.schema["date_prelevement"] == pl.Date


def test_a_file_read_in_many_blocks_gives_the_same_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks cut only between whole records, a quoted line break included (not one labrelay writes, but CSV)."""
    rows = [[f"NOM{i}", f"A{i};\nB" if i % 7 == 0 else f"P{i}", f"20{i % 25:02d}-01-0{1 + i % 9}"] for i in range(300)]
    source = tagged_file(tmp_path / "in.csv", ["nom", "prenom", "date_naissance"], rows)
    whole_excel, whole_parquet = io.BytesIO(), io.BytesIO()
    assert write_excel(source, whole_excel) == 300
    assert write_parquet(source, whole_parquet) == 300
    monkeypatch.setattr(formats, "BLOCK_BYTES", 97)
    small_excel, small_parquet = io.BytesIO(), io.BytesIO()
    assert write_excel(source, small_excel) == 300
    assert write_parquet(source, small_parquet) == 300
    assert small_excel.getvalue() == whole_excel.getvalue()
    assert pl.read_parquet(small_parquet.getvalue()).equals(pl.read_parquet(whole_parquet.getvalue()))


# ------------------------------------------------------------------ bad inputs


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


HEADER = b"nom,date_naissance,age,batch_id,sender\n"
ROW = f"DUPONT,1990-01-02,35,{BATCH},{SENDER}\n".encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "header"),
        (b"nom,date_naissance,age\nDUPONT,1990-01-02,35\n", "header"),  # a payload fetch did not tag
        (b"\xef\xbb\xbfnom;age;batch_id;sender\r\n", "header"),  # the excel output
        (b"nom,inconnu,batch_id,sender\n", "header"),  # not a field of any policy
        (b"nom,nom,batch_id,sender\n", "header"),
        (b"batch_id,sender\n", "header"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "header"),  # still gzip-compressed
        (b"PK\x03\x04\x14\x00\x06\x00", "header"),  # a workbook
        (HEADER + ROW + b"DUPONT,1990-01-02\n", "record 2 has fewer fields"),
        (HEADER + ROW + ROW.replace(b"\n", b",extra\n"), "malformed record"),
        (HEADER + ROW + b"DUPONT,\xff\xfe,35," + f"{BATCH},{SENDER}\n".encode(), "malformed record"),
        (HEADER + ROW.replace(b"1990-01-02", b"1990-02-30"), "record 1, column date_naissance"),
        (HEADER + ROW.replace(b"1990-01-02", b"02/01/1990"), "record 1, column date_naissance"),
        (HEADER + ROW + ROW.replace(b",35,", b",trente,"), "record 2, column age"),
        (HEADER + ROW.replace(b",35,", b",-3,"), "record 1, column age"),
        (HEADER + ROW + b'"DUPONT,1990-01-02,35\n', "malformed record"),  # an unterminated quote
    ],
)
@pytest.mark.parametrize("convert", [write_excel, write_parquet])
def test_a_file_that_is_not_a_tagged_csv_is_one_clear_error(
    tmp_path: Path, data: bytes, message: str, convert: object
) -> None:
    source = write(tmp_path / "in.csv", data)
    with pytest.raises(Unreadable) as caught:
        convert(source, io.BytesIO())  # type: ignore[operator]
    text = caught.value.diagnostics()
    assert message in text
    assert "\n" not in text
    assert str(source) in text
    for value in ("DUPONT", "1990-02-30", "02/01/1990", "trente"):  # never a value: health data
        assert value not in text


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    for convert in (write_excel, write_parquet):
        with pytest.raises(Unreadable, match="cannot read"):
            convert(tmp_path / "nowhere.csv", io.BytesIO())


def test_a_full_disk_is_storage_full(tmp_path: Path) -> None:
    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    source = write(tmp_path / "in.csv", HEADER + ROW)
    for convert in (write_excel, write_parquet):
        with pytest.raises(LabrelayError) as caught:
            convert(source, Full())  # type: ignore[arg-type]
        assert caught.value.code == "storage-full"
