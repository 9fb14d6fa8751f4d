"""Identifiers that appear in URLs, file names and audit events: party names, transfer and batch ids.

They are checked strictly before they reach a path or a query, so that no caller-supplied string can walk out
of a directory or smuggle control characters into a log.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks (``10.0.0.5, 10.1.0.0/16, ::1``); ValueError names a bad one."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def parse_address(text: str) -> str | None:
    """``text`` as a canonical IP address, or None when it is not one (a forwarded header's value is untrusted)."""
    candidate = text.strip()
    if "%" in candidate:  # an IPv6 zone id: free text after the address
        return None
    if candidate.startswith("[") and "]" in candidate:  # [v6]:port
        candidate = candidate[1 : candidate.index("]")]
    elif candidate.count(":") == 1:  # v4:port
        candidate = candidate.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""What a reader cannot see, or what changes how the text around it reads: C0 and C1 controls and DEL, format
characters (bidi marks, embeddings, overrides and isolates, zero-width characters, the byte-order mark, tags), lone
surrogates, line and paragraph separators."""
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def is_hidden(char: str) -> bool:
    """``char`` is one a reader cannot see, or one that changes how the text around it reads (``visible``)."""
    return unicodedata.category(char) in _HIDDEN_CATEGORIES


def escape(char: str) -> str:
    """``char`` as its escape: ``\\n``, ``\\x1b``, ``\\u202e``, ``\\U000e0041``."""
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` as an operator may be shown it: every character ``is_hidden`` (a right-to-left override, a
    zero-width space, an escape, a newline…) replaced by its escape, ``\\u202e``, ``\\x1b``, ``\\n``, so that what is
    shown is what is held, in the order it is held, on one line. Nothing is dropped; other text is left as it is.
    For free text shown in the console, alerts and reports (names and identifiers are refused such characters on
    input; text that came from elsewhere is shown this way)."""
    if text.isascii() and text.isprintable():  # the usual case, at C speed
        return text
    return "".join(escape(char) if is_hidden(char) else char for char in text)
