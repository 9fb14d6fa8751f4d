"""The browser port's shared vectors (tests/vectors/web_validation.json) are the CLI's own answers, and current.

``node web/test/vectors.test.mjs`` runs the same vectors through web/src. This test derives every expected value
again from the Python implementation: a change to the rules, the reader, the routing or the CSV output fails here
until the file is regenerated (``.venv/bin/python tests/vectors/make_web_vectors.py``) and the JavaScript port is
checked against it again.
"""

from __future__ import annotations

import base64
import json
from datetime import date
from typing import Any

import pytest

from labrelay.batch.pipeline import _SIGNATURES
from tests.support.records import CASES
from tests.vectors import make_web_vectors as make

VECTORS = json.loads(make.OUTPUT.read_text(encoding="utf-8"))


def _bytes(case: dict[str, Any]) -> bytes:
    return case["csv"].encode("utf-8") if "csv" in case else base64.b64decode(case["csv_base64"])


@pytest.mark.parametrize("case", VECTORS["validation"], ids=lambda c: c["name"])
def test_validation_vectors_are_the_clis_answers(case: dict[str, Any]) -> None:
    today = date.fromisoformat(case["today"])
    assert make.derive_validation(_bytes(case), today=today, block_bytes=case.get("block_bytes")) == case["expected"]


@pytest.mark.parametrize("case", VECTORS["routing"], ids=lambda c: c["name"])
def test_routing_vectors_are_the_clis_answers(case: dict[str, Any]) -> None:
    derived = make.derive_routing(
        _bytes(case),
        today=date.fromisoformat(case["today"]),
        policy=case["policy"],
        enrolled=case["enrolled"],
        restrict=case["restrict"],
        pseudonym_key=case["pseudonym_key"],
        block_bytes=case.get("block_bytes"),
    )
    assert derived == case["expected"]


def test_pseudonym_and_policy_vectors_are_the_clis_answers() -> None:
    people = [(p["nom"], p["prenom"], p["date_naissance"]) for p in VECTORS["pseudonyms"]]
    assert make.derive_pseudonyms(people, VECTORS["pseudonym_key"]) == [p["pseudonym"] for p in VECTORS["pseudonyms"]]
    for case in VECTORS["policies"]:
        assert make.derive_policy(case["toml"]) == case["expected"], case["name"]
    assert VECTORS["records"] == make.constants()
    assert VECTORS["windows_1252"] == make.build_windows_1252()


def test_the_file_holds_the_generators_current_cases() -> None:
    """Inputs too: a case added to (or changed in) the generator, or in test_validate.CASES, needs a regenerated
    file."""
    on_disk = [(c["name"], _bytes(c), c["today"], c.get("block_bytes")) for c in VECTORS["validation"]]
    current = [(name, data, today.isoformat(), block) for name, data, today, block in make.validation_cases()]
    assert on_disk == current
    assert [c["name"] for c in VECTORS["routing"]] == [s["name"] for s in make.routing_cases()]
    assert [(p["nom"], p["prenom"], p["date_naissance"]) for p in VECTORS["pseudonyms"]] == make.PEOPLE
    assert [(p["name"], p["toml"]) for p in VECTORS["policies"]] == list(make.policy_texts())


def test_every_rule_case_is_a_vector() -> None:
    """Each of test_validate.CASES is a one-record file whose vector names the case's field and reason."""
    by_name = {c["name"]: c for c in VECTORS["validation"]}
    for i, (_, field, reason) in enumerate(CASES):
        case = by_name[f"CASES[{i}] {field}: {reason.name}"]
        assert {"record": 1, "field": field, "reason": reason.value} in case["expected"]["rejections"]


def test_every_kind_of_file_the_cli_refuses_is_a_vector() -> None:
    """Each kind pipeline.check_kind names (a workbook, UTF-16 text, a PDF, an archive, an age file, a binary file)
    is the expected refusal of some vector, so the page names each as the CLI does."""
    kinds = {c["expected"].get("kind") for c in VECTORS["validation"]} - {None}
    named = {kind for _, kind, _ in _SIGNATURES} | {
        "an OpenDocument spreadsheet (.ods)",
        "an Excel workbook (.xlsx)",
        "a ZIP archive (or an Office document)",
        "a binary file",
    }
    assert kinds == named


def test_every_routing_vector_reconciles_and_holds_shares_per_recipient() -> None:
    """read == accepted + rejected + held in every routing vector; held_for counts the records of the review file's
    rows per recipient (a record no ARS covers is one record, even where two regional rules hold it); and the held
    vectors do hold shares (of an ARS not enrolled, and of a territory no ARS covers)."""
    held_for: set[str] = set()
    for case in VECTORS["routing"]:
        summary = case["expected"].get("summary")
        if summary is None:
            continue
        assert summary["read"] == summary["accepted"] + summary["rejected"] + summary["held_for_review"]
        rows = case["expected"]["review"].splitlines()[1:]
        records = {tuple(row.split(",", 2)[:2]) for row in rows}  # (record, recipient)
        assert sum(c["records"] for c in summary["held_for"].values()) == len(records), case["name"]
        held_for |= set(summary["held_for"])
    assert {"no-ars", "ars-11", "cire-11"} <= held_for


def test_the_file_stays_small() -> None:
    assert make.OUTPUT.stat().st_size < 450 * 1024
