"""Header parsing at the HTTP edge: only ASCII digits, only the forms we support."""

from __future__ import annotations

import pytest

from labrelay.errors import UsageError
from labrelay.http.deps import int_header, is_uint, range_start


@pytest.mark.parametrize("value", ["0", "15", "123456789012345"])
def test_uint_accepted(value: str) -> None:
    assert is_uint(value)


@pytest.mark.parametrize("value", ["", "-1", "²", "١٢", "1e3", " 1", "1 ", "1234567890123456", "0x10"])
def test_uint_refused(value: str) -> None:
    assert not is_uint(value)
    with pytest.raises(UsageError):
        int_header({"upload-offset": value}, "upload-offset")


def test_range_forms() -> None:
    assert range_start(None) == 0
    assert range_start("bytes=1024-") == 1024
    for bad in ("bytes=0-10", "bytes=-5", "bytes=²-", "items=1-", "bytes=1-,5-"):
        with pytest.raises(UsageError):
            range_start(bad)
