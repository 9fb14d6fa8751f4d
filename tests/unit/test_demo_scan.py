"""The demo's plaintext search (labrelay.cli.demo): a value found as a value counts; the same letters inside a
random token (base64, hex: nonces, signatures, digests) do not, or the demo would fail now and then by chance."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from labrelay.cli.demo import _scan, holds_value


def test_a_delimited_value_is_found_wherever_it_stands() -> None:
    for data in (
        b"DUPONT",
        b"nir,nom\n179037511104242,DUPONT\n",
        b'{"nom": "DUPONT", "prenom": "C\xc3\xa9line"}',
        b"name=DUPONT;",
        b"\x00\x01DUPONT\x02",
    ):
        assert holds_value(data, b"DUPONT"), data


def test_the_same_letters_inside_a_random_token_are_not_a_value() -> None:
    token = base64.b64encode(os.urandom(30)).replace(b"DUPONT", b"")
    for data in (token[:10] + b"DUPONT" + token[10:], b"xDUPONT", b"DUPONT9", b"a1b2DUPONTc3"):
        assert not holds_value(data, b"DUPONT"), data
    # ...but one delimited occurrence after an embedded one is still found
    assert holds_value(b"aDUPONTb,DUPONT,", b"DUPONT")


def test_the_scan_names_the_file_holding_a_value(tmp_path: Path) -> None:
    (tmp_path / "random.bin").write_bytes(base64.b64encode(os.urandom(64)) + b"xDUPONTy")
    (tmp_path / "log").write_bytes(b'{"event": "x", "name": "DUPONT"}\n')
    assert _scan(tmp_path, {b"DUPONT", b"MARTIN"}) == ["log"]
