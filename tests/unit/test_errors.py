"""``labrelay.errors``: the tree its docstring draws is the tree of its classes, with their codes, exit codes and
HTTP statuses."""

from __future__ import annotations

import re

from labrelay import errors
from labrelay.cli.ui import exit_code_for
from labrelay.http.problems import status_for

# "    │   ├── Unavailable           unavailable            1    503   relay unreachable…"
_ROW = re.compile(
    r"    (?P<indent>(?:[│ ]   )*)(?:[├└]── )?(?P<name>[A-Za-z]+)"
    r" +(?P<code>[a-z-]+) +(?P<exit>[0-9]) +(?P<status>[0-9]{3}) +\S"
)


def _documented() -> dict[str, tuple[str | None, str, int, int]]:
    """name → (parent, code, exit code, HTTP status), as the module docstring's tree draws them."""
    doc = errors.__doc__ or ""
    lines = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]  # the block after "::", its header off
    drawn: dict[str, tuple[str | None, str, int, int]] = {}
    parents: list[str] = []
    for line in lines:
        row = _ROW.match(line)
        assert row, f"not a row of the tree: {line!r}"
        depth = len(row["indent"]) // 4 + (1 if row["name"] != "LabrelayError" else 0)
        del parents[depth:]
        drawn[row["name"]] = (parents[-1] if parents else None, row["code"], int(row["exit"]), int(row["status"]))
        parents.append(row["name"])
    return drawn


def _defined() -> dict[str, tuple[str | None, str, int, int]]:
    """The same, from the classes ``labrelay.errors`` defines."""
    out: dict[str, tuple[str | None, str, int, int]] = {}
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.LabrelayError) and cls.__module__ == errors.__name__:
            parent = cls.__base__.__name__ if cls is not errors.LabrelayError else None
            sample = cls("message")
            out[cls.__name__] = (parent, cls.code, exit_code_for(sample), status_for(sample))
    return out


def test_the_docstring_tree_lists_every_error_with_its_parent_code_exit_and_status() -> None:
    drawn, defined = _documented(), _defined()
    assert set(defined) - set(drawn) == set(), "classes missing from the tree in labrelay.errors' docstring"
    assert set(drawn) - set(defined) == set(), "the tree in labrelay.errors' docstring names classes it lacks"
    wrong = {name: (drawn[name], defined[name]) for name in defined if drawn[name] != defined[name]}
    assert not wrong, f"drawn (parent, code, exit, status) vs defined: {wrong}"


def test_every_code_is_unique_and_rebuilds_its_class() -> None:
    defined = _defined()
    assert len({code for _, code, _, _ in defined.values()}) == len(defined)
    for name, (_, code, _, _) in defined.items():
        assert type(errors.error_from_code(code, "message")).__name__ == name
