"""Strict readers for the fields of signed JSON objects. A signed object with a wrong type is refused."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from labrelay.domain.timeutil import from_rfc3339
from labrelay.errors import LabrelayError, UntrustedEntry


def require(payload: Mapping[str, Any], name: str, kind: type, error: type[LabrelayError] = UntrustedEntry) -> Any:
    """``payload[name]`` if it is a ``kind`` (a bool is never accepted as an int), else ``error``."""
    value = payload.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise error(f"malformed signed object: field {name!r} missing or not a {kind.__name__}")
    return value


def optional(payload: Mapping[str, Any], name: str, kind: type, error: type[LabrelayError] = UntrustedEntry) -> Any:
    """Like ``require`` but ``None`` (or absence) is allowed."""
    if payload.get(name) is None:
        return None
    return require(payload, name, kind, error)


def instant(payload: Mapping[str, Any], name: str, error: type[LabrelayError] = UntrustedEntry) -> datetime:
    try:
        return from_rfc3339(require(payload, name, str, error))
    except ValueError as exc:
        raise error(f"malformed signed object: field {name!r} is not an RFC 3339 instant") from exc
