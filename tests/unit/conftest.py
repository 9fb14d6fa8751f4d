"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.relay_setup import Setup, make_setup


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """A relay on real storage (SQLite WAL, payload and key directories) with a manual clock."""
    made = make_setup(tmp_path)
    yield made
    made.relay.close()
