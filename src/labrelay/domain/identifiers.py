"""The identifier an entry may carry: a lab's FINESS, another party's organisation (SIREN or SIRET).

The authority checks it when it signs an enrolment request (docs/enrolment.md); the signed entry carries it, so
every client shows the same one. What is refused and what is only a warning:

- **FINESS** (labs only): 9 characters, the first two a department (two digits, or ``2A``/``2B`` in Corsica),
  the other seven digits. Anything else is refused. The last digit is said to be a Luhn key (every real FINESS we
  tried passes), but no official text says so: a Luhn mismatch is a warning, never a refusal, and a Corsican
  FINESS's key is not checked at all (how its letters would count is unknown).
- **SIREN** (9 digits) or **SIRET** (14 digits: the SIREN and a 5-digit establishment number), for any role but a
  lab. Anything else is refused. Their last digit is a Luhn key by INSEE's rule, but some SIRETs (La Poste's
  establishments) follow another one: a mismatch is a warning as well.

Patterns are ASCII-only and matched whole (``fullmatch``): ``str.isdigit`` would accept "²".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from labrelay.errors import UsageError


class Scheme(StrEnum):
    FINESS = "finess"
    SIREN = "siren"
    SIRET = "siret"


_FORMATS = {
    Scheme.FINESS: re.compile(r"(?:[0-9]{2}|2[AB])[0-9]{7}"),
    Scheme.SIREN: re.compile(r"[0-9]{9}"),
    Scheme.SIRET: re.compile(r"[0-9]{14}"),
}
_HINTS = {
    Scheme.FINESS: "a FINESS has 9 characters: 9 digits, or 2A/2B then 7 digits in Corsica (e.g. 750712184)",
    Scheme.SIREN: "a SIREN has 9 digits (e.g. 180035024)",
    Scheme.SIRET: "a SIRET has 14 digits: the SIREN and a 5-digit establishment number",
}


@dataclass(frozen=True, slots=True)
class Identifier:
    """A checked identifier: ``Identifier(Scheme.FINESS, "750712184")``. A malformed one is never built."""

    scheme: Scheme
    value: str

    def __post_init__(self) -> None:
        if not _FORMATS[self.scheme].fullmatch(self.value):
            raise UsageError(f"invalid {self.scheme.value.upper()} {str(self.value)[:20]!r}", hint=_HINTS[self.scheme])

    def __str__(self) -> str:
        return f"{self.scheme.value.upper()} {self.value}"

    def to_payload(self) -> dict[str, str]:
        return {"scheme": self.scheme.value, "value": self.value}

    @classmethod
    def from_payload(cls, doc: object) -> Identifier:
        """From a signed object's ``identifier`` field (``UsageError`` when malformed; callers re-raise theirs)."""
        if not isinstance(doc, Mapping) or set(doc) != {"scheme", "value"}:
            raise UsageError("malformed identifier: an object with exactly a scheme and a value")
        scheme, value = doc.get("scheme"), doc.get("value")
        if scheme not in {s.value for s in Scheme} or not isinstance(value, str):
            raise UsageError("malformed identifier: unknown scheme or a value that is not a string")
        return cls(Scheme(scheme), value)

    def warnings(self) -> list[str]:
        """What the authority should look at before signing: a check digit that does not hold. Never a refusal."""
        if not self.value.isdigit():  # matched an ASCII pattern: only a Corsican FINESS has letters
            return [f"{self}: Corsican FINESS, its check digit is not checked (the rule for 2A/2B is unknown)"]
        if not luhn_ok(self.value):
            rule = "unofficial for FINESS" if self.scheme is Scheme.FINESS else "La Poste's SIRETs are an exception"
            return [f"{self}: the last digit is not a Luhn check digit ({rule}); check the number at its source"]
        return []


def finess(text: str) -> Identifier:
    """A lab's FINESS as typed (spaces ignored); ``UsageError`` when malformed."""
    return Identifier(Scheme.FINESS, text.replace(" ", ""))


def organisation(text: str) -> Identifier:
    """An organisation's SIREN (9 digits) or SIRET (14 digits) as typed (spaces ignored); ``UsageError`` else."""
    value = text.replace(" ", "")
    scheme = Scheme.SIRET if len(value) == 14 else Scheme.SIREN
    if len(value) not in (9, 14):
        raise UsageError(
            f"invalid organisation identifier {text[:20]!r}",
            hint="a SIREN (9 digits) or a SIRET (14 digits), e.g. 180035024",
        )
    return Identifier(scheme, value)


def check_for_role(identifier: Identifier | None, role: str) -> None:
    """A FINESS belongs to a lab; a SIREN or SIRET to any other party (``UsageError`` otherwise)."""
    if identifier is None:
        return
    if (identifier.scheme is Scheme.FINESS) != (role == "lab"):
        raise UsageError(
            f"a {role} cannot carry a {identifier.scheme.value.upper()}",
            hint="labs carry their FINESS (--finess), other parties their organisation's SIREN or SIRET "
            "(--organisation)",
        )


def luhn_ok(digits: str) -> bool:
    """The Luhn rule on a string of ASCII digits: from the right, every second digit doubled (minus 9 above 9),
    the sum a multiple of 10."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - ord("0")
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def optional_identifier(payload: Mapping[str, Any]) -> Identifier | None:
    """A signed object's ``identifier``, absent in entries signed before identifiers existed."""
    return None if "identifier" not in payload else Identifier.from_payload(payload["identifier"])
