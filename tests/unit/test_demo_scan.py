"""The demo's plaintext search (labrelay.cli.demo_scan): a value found as a value counts; the same letters inside a
random token (base64, hex: nonces, signatures, digests) do not, or the demo would fail now and then by chance. The
one-pass search finds exactly what searching each value on its own (``holds_value``) finds."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from labrelay.cli.demo_scan import NeedleSet, holds_value, scan_tree


def test_a_delimited_value_is_found_wherever_it_stands() -> None:
    for data in (
        b"DUPONT",
        b"nir,nom\n179037511104242,DUPONT\n",
        b'{"nom": "DUPONT", "prenom": "C\xc3\xa9line"}',
        b"name=DUPONT;",
        b"\x00\x01DUPONT\x02",
    ):
        assert holds_value(data, b"DUPONT"), data
        assert NeedleSet([b"DUPONT"]).found_in(data) == {b"DUPONT"}, data


def test_the_same_letters_inside_a_random_token_are_not_a_value() -> None:
    token = base64.b64encode(os.urandom(30)).replace(b"DUPONT", b"")
    for data in (token[:10] + b"DUPONT" + token[10:], b"xDUPONT", b"DUPONT9", b"a1b2DUPONTc3"):
        assert not holds_value(data, b"DUPONT"), data
        assert NeedleSet([b"DUPONT"]).found_in(data) == set(), data
    # ...but one delimited occurrence after an embedded one is still found
    assert holds_value(b"aDUPONTb,DUPONT,", b"DUPONT")
    assert NeedleSet([b"DUPONT"]).found_in(b"aDUPONTb,DUPONT,") == {b"DUPONT"}


def test_values_of_several_runs_and_of_none() -> None:
    """E-mail addresses, accented, hyphenated and two-word names; values with punctuation at an edge; a value with
    no ASCII letter or digit at all."""
    email, celine, full, phone, bare = (
        b"jean.dupont12@example.fr",
        "Céline".encode(),
        b"Marie-Claire Durand",
        b"+33612345678",
        "éàèùç".encode(),
    )
    needles = NeedleSet([email, celine, full, phone, bare])
    text = b'{"to": "jean.dupont12@example.fr", "n": "C\xc3\xa9line"}, Marie-Claire Durand; +33612345678 ' + bare
    assert needles.found_in(text) == {email, celine, full, phone, bare}
    # run into a letter or a digit on one side: not a value (for the phone too, whose own first byte is no letter:
    # holds_value asks of the bytes around the value)
    assert holds_value(b"x+33612345678", phone) is False
    assert needles.found_in(b"xjean.dupont12@example.fr Marie-Claire Durandy x+33612345678") == set()


# Data made of the bytes that matter: letters, digits, delimiters, a UTF-8 accent, NUL; values planted in it.
_ALPHABET = b"aZ09-. @\x00\xc3\xa9"
_chunks = st.binary(max_size=12).map(lambda b: bytes(_ALPHABET[x % len(_ALPHABET)] for x in b))


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(_chunks, min_size=1, max_size=6),
    pieces=st.lists(st.tuples(_chunks, st.integers(0, 5), st.sampled_from([b"", b"x", b"7", b",", b" ", b"\xc3"]))),
    random_prefix=st.binary(max_size=40),
)
def test_the_one_pass_search_finds_exactly_what_holds_value_finds(
    values: list[bytes], pieces: list[tuple[bytes, int, bytes]], random_prefix: bytes
) -> None:
    """Random data with the values planted at every kind of edge (start, end, next to letters, digits, delimiters,
    an accent's first byte, each other): the same values found as by holds_value, one value at a time."""
    data = random_prefix
    for filler, which, edge in pieces:
        data += filler + edge + values[which % len(values)] + edge
    found = NeedleSet(values).found_in(data)
    assert found == {v for v in values if holds_value(data, v)}


def test_the_scan_names_the_file_holding_a_value(tmp_path: Path) -> None:
    """The positive control: a value planted in a file is reported, one embedded in a random token is not."""
    (tmp_path / "random.bin").write_bytes(base64.b64encode(os.urandom(64)) + b"xDUPONTy")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "log").write_bytes(b'{"event": "x", "name": "DUPONT"}\n')
    (tmp_path / "mail").write_bytes(b"to: jean.dupont12@example.fr\n")
    report = scan_tree(tmp_path, NeedleSet({b"DUPONT", b"MARTIN", b"jean.dupont12@example.fr"}))
    assert report.hits == ["mail", "sub/log"]
    assert report.files == 3
    assert report.values == 3
    assert report.bytes == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())


def test_no_values_find_nothing(tmp_path: Path) -> None:
    """An input the demo cannot read values from (HL7, FHIR): nothing searched, nothing found, the files still read."""
    (tmp_path / "log").write_bytes(b"DUPONT\n")
    report = scan_tree(tmp_path, NeedleSet(()))
    assert (report.hits, report.values, report.files) == ([], 0, 1)
