"""The routing and minimisation policy: who receives which records, and which of their fields.

A policy is a TOML document, versioned, signed by the directory authority (``routing-policy`` envelopes), and
registered with the relay. Labs route every batch under the policy in force and name its version in each
manifest; the relay refuses a manifest that names a policy it does not know. ``parse_policy`` refuses, at load,
a policy that gives nothing to anyone or everything to everyone.

Example (the default policy ships as ``labrelay/data/default-policy.toml``)::

    version = "fr-covid-2026.2"
    loinc = ["94500-6", ...]

    [[recipients]]
    name = "cnam"
    select = "positive"          # "all" or "positive"
    fields = ["nir", "nom", ...]
    format = "csv"               # "csv" or "fhir-ndjson"
    unparsed = true              # may receive documents sent unparsed (send --as-is); default false

    [[recipients]]
    name = "ars-{region}"        # one recipient per INSEE region, for the residents of that region
    select = "all"
    by_region = true
    fields = [...]

    [[recipients]]
    name = "spf"
    select = "all"
    pseudonymise = true          # a keyed pseudonym instead of any direct identifier
    fields = ["pseudonyme", "age", "sexe", ...]
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from labrelay.domain.names import check_party_name, check_region
from labrelay.domain.records import ALL_OUTPUT_FIELDS, DIRECT_IDENTIFIERS, FIELDS
from labrelay.errors import UsageError

POLICY_TYPE = "routing-policy"
SELECTIONS = ("all", "positive")
FORMATS = ("csv", "fhir-ndjson")
REGION_SLOT = "{region}"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LOINC = re.compile(r"[0-9]{1,7}-[0-9]")


class PolicyError(UsageError):
    """A policy that cannot be used as written."""

    code = "usage"


@dataclass(frozen=True, slots=True)
class RecipientRule:
    name: str  # a party name, or a template containing "{region}"
    select: str
    fields: tuple[str, ...]
    format: str = "csv"
    by_region: bool = False
    pseudonymise: bool = False
    unparsed: bool = False  # may receive documents sent unparsed (``send --as-is``), which carry every field

    def names_for(self, regions: Iterable[str]) -> list[tuple[str, str | None]]:
        """(party name, region) for each party this rule addresses."""
        if self.by_region:
            return [(self.name.replace(REGION_SLOT, region), region) for region in sorted(regions)]
        return [(self.name, None)]


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    loinc: frozenset[str]
    recipients: tuple[RecipientRule, ...]
    description: str = ""

    def rule_for(self, party: str, regions: Iterable[str]) -> tuple[RecipientRule, str | None] | None:
        for rule in self.recipients:
            for name, region in rule.names_for(regions):
                if name == party:
                    return rule, region
        return None

    def rule_named(self, party: str) -> RecipientRule | None:
        """The rule that addresses ``party`` (a regional rule through the region its name carries), if any."""
        region = region_of_party(party)
        for rule in self.recipients:
            if rule.name == party or (rule.by_region and region and rule.name.replace(REGION_SLOT, region) == party):
                return rule
        return None

    def unparsed_refusal(self, party: str) -> str | None:
        """Why ``party`` may not receive a document sent unparsed under this policy, or None if it may. A
        recipient the policy does not name may not: nothing says what it may receive."""
        rule = self.rule_named(party)
        if rule is None:
            return f"{party} is not a recipient under policy {self.version}"
        if rule.unparsed:
            return None
        given = "pseudonymised records" if rule.pseudonymise else "only the records and fields the policy gives it"
        return f"policy {self.version} gives {party} {given}, never unparsed documents"


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"policy: {what} must be a list of strings")
    return tuple(value)


def _rule(raw: Mapping[str, Any], index: int) -> RecipientRule:  # noqa: PLR0912 - one check per key, in order
    where = f"policy: recipient #{index + 1}"
    unknown = set(raw) - {"name", "select", "fields", "format", "by_region", "pseudonymise", "unparsed"}
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str):
        raise PolicyError(f"{where}: a name is required")
    by_region = raw.get("by_region", False)
    pseudonymise = raw.get("pseudonymise", False)
    unparsed = raw.get("unparsed", False)
    if not all(isinstance(flag, bool) for flag in (by_region, pseudonymise, unparsed)):
        raise PolicyError(f"{where}: by_region, pseudonymise and unparsed are true or false")
    if by_region != (REGION_SLOT in name) or name.count(REGION_SLOT) > 1:
        raise PolicyError(f"{where}: a by_region recipient's name contains {REGION_SLOT} once, and only such a name")
    check_party_name(name.replace(REGION_SLOT, "00"))
    select = raw.get("select", "all")
    if select not in SELECTIONS:
        raise PolicyError(f"{where}: select must be one of {SELECTIONS}")
    fmt = raw.get("format", "csv")
    if fmt not in FORMATS:
        raise PolicyError(f"{where}: format must be one of {FORMATS}")
    fields = _strings(raw.get("fields"), f"{where} fields")
    if not fields:
        raise PolicyError(f"{where} ({name}) receives no field")
    unknown_fields = [f for f in fields if f not in ALL_OUTPUT_FIELDS]
    if unknown_fields:
        raise PolicyError(f"{where}: unknown fields {unknown_fields}")
    if len(set(fields)) != len(fields):
        raise PolicyError(f"{where}: a field is listed twice")
    if pseudonymise:
        leaked = sorted(set(fields) & DIRECT_IDENTIFIERS)
        if leaked:
            raise PolicyError(f"{where} ({name}) is pseudonymised but would receive {leaked}")
        if "pseudonyme" not in fields:
            raise PolicyError(f"{where} ({name}) is pseudonymised: it must receive the pseudonyme")
        if unparsed:  # an unparsed document carries every field it holds: it cannot be pseudonymised
            raise PolicyError(f"{where} ({name}) is pseudonymised: it cannot receive unparsed documents")
    elif "pseudonyme" in fields:
        raise PolicyError(f"{where} ({name}) receives a pseudonyme only when pseudonymise = true")
    return RecipientRule(
        name=name,
        select=select,
        fields=fields,
        format=fmt,
        by_region=by_region,
        pseudonymise=pseudonymise,
        unparsed=unparsed,
    )


def parse_policy(text: str) -> Policy:
    """Parse and check a policy. Refuses anything ambiguous, and policies that give nothing or everything."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy is not valid TOML: {exc}") from exc
    unknown = set(raw) - {"version", "description", "loinc", "recipients"}
    if unknown:
        raise PolicyError(f"policy: unknown keys {sorted(unknown)}")
    version = raw.get("version")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise PolicyError("policy: a version (letters, digits, . _ -, up to 64) is required")
    loinc = _strings(raw.get("loinc"), "loinc")
    if not loinc or not all(_LOINC.fullmatch(code) for code in loinc):
        raise PolicyError("policy: loinc must list the accepted LOINC codes (e.g. 94500-6)")
    recipients_raw = raw.get("recipients")
    if not isinstance(recipients_raw, list) or not recipients_raw:
        raise PolicyError("policy gives nothing: it has no recipient")
    rules = tuple(_rule(r, i) if isinstance(r, dict) else _bad(i) for i, r in enumerate(recipients_raw))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise PolicyError("policy: a recipient is listed twice")
    if all(r.select == "all" and set(FIELDS) <= set(r.fields) for r in rules):
        raise PolicyError("policy gives everything to everyone: minimise at least one recipient's records or fields")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise PolicyError("policy: description must be text")
    return Policy(version=version, loinc=frozenset(loinc), recipients=rules, description=description)


def policy_payload(text: str, issued_at: str) -> dict[str, Any]:
    """The payload the authority signs: the policy's own text, with its version repeated for lookups."""
    return {"type": POLICY_TYPE, "v": 1, "version": parse_policy(text).version, "toml": text, "issued_at": issued_at}


def policy_from_payload(payload: Mapping[str, Any]) -> Policy:
    """The policy a verified payload carries; refused if malformed or if its version field disagrees."""
    if payload.get("type") != POLICY_TYPE or payload.get("v") != 1 or not isinstance(payload.get("toml"), str):
        raise PolicyError("not a version-1 routing policy")
    policy = parse_policy(payload["toml"])
    if payload.get("version") != policy.version:
        raise PolicyError("the signed version does not match the policy's own")
    return policy


def _bad(index: int) -> RecipientRule:
    raise PolicyError(f"policy: recipient #{index + 1} is not a table")


def region_of_party(name: str) -> str | None:
    """``ars-11`` → ``11``: the region a regional party's name carries, if any."""
    match = re.fullmatch(r"[a-z-]+-([0-9]{2})", name)
    return check_region(match.group(1)) if match else None
