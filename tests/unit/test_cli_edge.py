"""The CLI's edge: how a run ends when it is interrupted, and what a failure's JSON document says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.records import good, line
from tests.support.world import call_cli


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "results.csv"
    path.write_text("nir,nom\n" + line(good()) + "\n", encoding="utf-8")
    return path


def test_ctrl_c_says_interrupted_and_its_json_document_says_so(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Typer turns Ctrl-C (KeyboardInterrupt) into a silent exit 130: no line on stderr, no JSON document for the
    nightly job's log. The run now says it was interrupted, and its document names the command."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("labrelay.client.validate.validate_file", interrupted)
    result = call_cli("validate", results, "--json")
    assert result.code == 130, str(result)
    assert "labrelay: interrupted" in result.err
    doc = json.loads(result.out)
    assert doc["exit_code"] == 130
    assert doc["command"] == "validate"
    assert doc["error"]["message"] == "interrupted before the end"


def test_a_failures_json_document_names_its_command(tmp_path: Path) -> None:
    """docs/running-nightly.md: every document has "command", failures included."""
    result = call_cli("validate", tmp_path / "missing.csv", "--json")
    assert result.code == 1, str(result)  # unreadable: perhaps not there yet
    doc = json.loads(result.out)
    assert doc["command"] == "validate"
    assert doc["ok"] is False
    assert doc["exit_code"] == 1
