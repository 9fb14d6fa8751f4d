"""docs/threat-model.md and the test suite agree: every proved line names tests that exist and carry its marker,
and every ``@pytest.mark.threat`` marker names a proved line. Tests are found by reading the test files (AST), so
this holds whatever subset of the suite a session runs."""

from __future__ import annotations

import ast
import re

from tests.support.world import REPO

ROW = re.compile(r"^\| (T\d+) \|(.*)\|$")


def table() -> dict[str, tuple[str, list[str]]]:
    rows = {}
    for line in (REPO / "docs" / "threat-model.md").read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            cells = [c.strip() for c in match.group(2).split("|")]
            rows[match.group(1)] = (cells[-2], re.findall(r"`(test_\w+)`", cells[-1]))
    return rows


def markers() -> dict[str, set[str]]:
    """Test function name → the threat ids it is marked with, across tests/."""
    found: dict[str, set[str]] = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                ids = found.setdefault(node.name, set())
                for deco in node.decorator_list:
                    if (
                        isinstance(deco, ast.Call)
                        and isinstance(deco.func, ast.Attribute)
                        and deco.func.attr == "threat"
                        and deco.args
                        and isinstance(deco.args[0], ast.Constant)
                    ):
                        ids.add(str(deco.args[0].value))
    return found


def test_every_proved_line_has_tests_that_exist_and_carry_its_marker() -> None:
    rows, tests = table(), markers()
    assert len(rows) >= 10
    for tid, (status, names) in rows.items():
        assert status == "proved", f"{tid} is in the table but not proved: open items go under 'Not yet covered'"
        assert names, f"{tid} is proved but names no test"
        for name in names:
            assert name in tests, f"{tid} names {name}, which is not in the test suite"
        assert any(tid in tests[name] for name in names), f"no test named on {tid} carries threat({tid!r})"


def test_every_marker_points_at_a_proved_line() -> None:
    rows = table()
    for name, ids in markers().items():
        for tid in ids:
            assert tid in rows, f"{name} is marked {tid}, which docs/threat-model.md does not have"
            assert rows[tid][0] == "proved", f"{name} is marked {tid}, a line that is not proved"
            assert name in rows[tid][1], f"{name} proves {tid} but the document does not name it there"
