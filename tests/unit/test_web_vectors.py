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

from tests.unit.test_validate import CASES
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


def test_the_file_stays_small() -> None:
    assert make.OUTPUT.stat().st_size < 300 * 1024
