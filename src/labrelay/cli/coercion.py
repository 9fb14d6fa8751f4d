"""Option values that need no conversion skip Typer's pydantic coercion (decision 0018).

Typer (0.29) converts every option's value through a pydantic ``TypeAdapter``, built on first use: importing
pydantic and building the adapters was about a fifth of a small ``labrelay fetch``. Most of our values need no
conversion at all: a string for a ``str`` option, an ASCII number for an ``int``, a path for a ``Path``, a flag's
own ``True`` or ``False``. Those are
converted here, exactly as Typer would; anything else (a bound not met, a value that is not plainly a number, a
list, a choice, a parser) goes to Typer's own coercion, unchanged, so its checks and error messages stay Typer's.
If Typer's internals are not the ones this was written for, nothing is changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from typer import core as typer_core
    from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
    from typer._param_types import coerce_cli_path
except ImportError:  # pragma: no cover - another Typer: its own coercion throughout
    RuntimeParam = None  # type: ignore[assignment,misc]  # the marker that nothing is hooked


def install() -> None:
    """Have Typer build the direct conversion for every plain ``str``, ``int``, ``bool`` and ``Path`` parameter
    (options, arguments, the help options Click adds itself); idempotent."""
    typer_build = getattr(typer_core, "build_runtime_param", None) if RuntimeParam is not None else None
    if typer_build is None or getattr(typer_build, "labrelay", False):
        return

    def build(descriptor: TypeDescriptor) -> RuntimeParam:
        if _plain(descriptor):
            return _Direct(descriptor.parameter_info, descriptor.annotation, descriptor)
        return build_runtime_param(descriptor)  # Typer's own

    build.labrelay = True  # type: ignore[attr-defined]  # marks the hook, so that it is installed once
    setattr(typer_core, "build_runtime_param", build)  # noqa: B010 - not exported by typer.core


def _plain(descriptor: Any) -> bool:
    info = descriptor.parameter_info
    if info.parser is not None or getattr(info, "click_type", None) is not None:
        return False
    if descriptor.is_list or descriptor.is_tuple or descriptor.is_choice or descriptor.is_file:
        return False
    annotation = descriptor.annotation
    if annotation is int:
        return not info.clamp
    if annotation is Path:
        return info.path_type is None
    return annotation in (str, bool)


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class _Direct(RuntimeParam):
        """A plain value converted directly; any other value by Typer's own coercion (built when first needed)."""

        descriptor: TypeDescriptor

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            info = self.parameter_info
            if (self.annotation is str and isinstance(value, str)) or (self.annotation is bool and value in (0, 1)):
                return bool(value) if self.annotation is bool else value
            number = _plain_int(value) if self.annotation is int else None
            if (
                number is not None
                and (info.min is None or number >= info.min)
                and (info.max is None or number <= info.max)
            ):
                return number
            if self.annotation is Path and isinstance(value, str | Path) and str(value):
                path = value if isinstance(value, Path) else Path(value)
                return coerce_cli_path(path, info, path_type=Path, param=param, ctx=ctx)
            return build_runtime_param(self.descriptor)._coerce_value(value, param=param, ctx=ctx)


def _plain_int(value: Any) -> int | None:
    """An int, or a string of ASCII digits (what every reading of an integer agrees on); None otherwise."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None
