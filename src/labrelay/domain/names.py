"""Identifiers that appear in URLs, file names and audit events: party names, transfer and batch ids.

They are checked strictly before they reach a path or a query, so that no caller-supplied string can walk out
of a directory or smuggle control characters into a log.
"""

from __future__ import annotations

import ipaddress
import re
import uuid

from labrelay.errors import UsageError

_PARTY = re.compile(r"[a-z][a-z0-9-]{1,62}[a-z0-9]")
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_REGION = re.compile(r"[0-9]{2}")

AUTHORITY_KEYID = "@authority"
"""The key id with which the directory authority signs requests (never a valid party name)."""


def check_party_name(name: object) -> str:
    """Lower-case letters, digits and hyphens, 3 to 64 characters, starting with a letter: ``ars-11``."""
    if not isinstance(name, str) or not _PARTY.fullmatch(name):
        raise UsageError(
            f"invalid party name {name!r}",
            hint="use 3-64 lower-case letters, digits or hyphens, starting with a letter (e.g. ars-11)",
        )
    return name


def check_region(code: object) -> str:
    """An INSEE region code: two digits (``11`` Île-de-France, ``94`` Corse, ``04`` La Réunion)."""
    if not isinstance(code, str) or not _REGION.fullmatch(code):
        raise UsageError(f"invalid region code {code!r}", hint="an INSEE region code has two digits, e.g. 11")
    return code


def is_transfer_id(value: object) -> bool:
    return isinstance(value, str) and bool(_UUID4.fullmatch(value))


def check_transfer_id(value: object) -> str:
    if not isinstance(value, str) or not _UUID4.fullmatch(value):
        raise UsageError(f"invalid transfer id {value!r}", hint="transfer ids are random UUIDs (version 4)")
    return value


def new_id() -> str:
    """A random (version 4) UUID: transfer and batch ids are unguessable, so enumeration finds nothing."""
    return str(uuid.uuid4())


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP (``127.0.0.0/8``, ``::1``, bracketed or not): where plain HTTP is allowed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
