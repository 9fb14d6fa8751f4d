"""The shape of ``src/labrelay``, read from its source (nothing is imported): functions short enough to read, one
port per class, and every lint opt-out with its reason (docs/development.md, Conventions)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "labrelay"
MAX_FUNCTION_LINES = 80  # a function must be shorter than this, its nested functions included
# Opt-outs read `noqa: CODE[, CODE] - reason` and `type: ignore[code]  # reason` (mypy reads only a comment after
# the bracket: a reason there is a comment of its own).
NOQA = re.compile(r"#\s*noqa\b")
NOQA_WITH_REASON = re.compile(r"#\s*noqa: *[A-Z]+[0-9]+(?: *, *[A-Z]+[0-9]+)* +- +\S")
IGNORE = re.compile(r"#\s*type:\s*ignore\b")
IGNORE_WITH_REASON = re.compile(r"#\s*type:\s*ignore\[[a-z-]+(?: *, *[a-z-]+)*\] +# *(?!noqa\b)\S")


def _modules() -> Iterator[tuple[str, str]]:
    """(path relative to src/, text) of every module of the package."""
    for path in sorted(SRC.rglob("*.py")):
        yield str(path.relative_to(SRC.parent)), path.read_text(encoding="utf-8")


def _functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method under ``node``, nested ones too, with its qualified name."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + child.name, child
            yield from _functions(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}{child.name}.")
        else:
            yield from _functions(child, prefix)


def test_every_function_is_shorter_than_80_lines() -> None:
    """Counted from ``def`` to the function's last line, docstring and nested functions included."""
    long = [
        f"{path}:{fn.lineno} {name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path, text in _modules()
        for name, fn in _functions(ast.parse(text))
        if fn.end_lineno is not None and fn.end_lineno - fn.lineno + 1 >= MAX_FUNCTION_LINES
    ]
    assert long == [], f"functions of {MAX_FUNCTION_LINES} lines or more:\n" + "\n".join(long)


def _defined_names(cls: ast.ClassDef) -> set[str]:
    """What the class body defines: its methods, and names assigned to (``hold = _hold``)."""
    names = {n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    for node in cls.body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _base_names(cls: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else b.attr for b in cls.bases if isinstance(b, ast.Name | ast.Attribute)]


def _ports() -> dict[str, set[str]]:
    """Port → its methods: the ``typing.Protocol`` classes of ``labrelay.ports``."""
    tree = ast.parse((SRC / "ports.py").read_text(encoding="utf-8"))
    return {
        node.name: _defined_names(node)
        for node in tree.body
        if isinstance(node, ast.ClassDef) and "Protocol" in _base_names(node)
    }


def test_no_class_implements_more_than_one_port() -> None:
    """A class implements a port when it defines every method the port names, itself or through its bases in
    src/labrelay (a base is found in the class's module first, else by a name unique in the package). Protocol
    classes are ports, not implementations, wherever they are declared. ``Clock`` counts like any other port: no
    class tells the time and does something else."""
    classes: dict[tuple[str, str], ast.ClassDef] = {}
    for path, text in _modules():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                classes[(path, node.name)] = node
    by_name: dict[str, list[tuple[str, str]]] = {}
    for key in classes:
        by_name.setdefault(key[1], []).append(key)

    def methods(key: tuple[str, str], seen: frozenset[tuple[str, str]] = frozenset()) -> set[str]:
        names = _defined_names(classes[key])
        for base in _base_names(classes[key]):
            found = (key[0], base) if (key[0], base) in classes else None
            if found is None and len(by_name.get(base, [])) == 1:
                found = by_name[base][0]
            if found is not None and found not in seen:
                names |= methods(found, seen | {key})
        return names

    ports = _ports()
    several = []
    for key, node in classes.items():
        if "Protocol" in _base_names(node):
            continue
        have = methods(key)
        implemented = sorted(port for port, needed in ports.items() if needed <= have)
        if len(implemented) > 1:
            several.append(f"{key[0]}:{node.lineno} {node.name} implements {', '.join(implemented)}")
    assert several == [], "classes implementing more than one port:\n" + "\n".join(several)


def test_every_lint_opt_out_gives_its_reason() -> None:
    """``# noqa: CODE - reason`` and ``# type: ignore[code]  # reason``, on the opt-out's own line."""
    bare = []
    for path, text in _modules():
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type != tokenize.COMMENT:
                continue
            comment = token.string
            noqa_ok = all(NOQA_WITH_REASON.match(comment, m.start()) for m in NOQA.finditer(comment))
            ignore_ok = all(IGNORE_WITH_REASON.match(comment, m.start()) for m in IGNORE.finditer(comment))
            if not (noqa_ok and ignore_ok):
                bare.append(f"{path}:{token.start[0]}: {comment}")
    assert bare == [], "lint opt-outs without a reason:\n" + "\n".join(bare)
