"""The routing and minimisation policy: who receives which records, and which of their fields.

A policy is a TOML document, versioned, signed by the directory authority (``routing-policy`` envelopes), and
registered with the relay. Labs route every batch under the policy in force and name its version in each
manifest; the relay refuses a manifest that names a policy it does not know. ``parse_policy`` refuses, at load,
a policy that gives nothing to anyone or everything to everyone.

The signed object orders and bounds the text (docs/threat-model.md, T30): ``issue``, a number the authority raises
with every policy it signs, says which of two policies is the newer whatever their version strings, so that a lab
refuses an older one once it has seen a newer (a relay cannot roll it back to a looser policy); ``not_after`` ends
its validity. A ``policy-withdrawal`` the authority signs voids a version for good.

Example (the default policy ships as ``labrelay/data/default-policy.toml``)::

    version = "fr-covid-2026.3"
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

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from labrelay.domain.fields import instant, require
from labrelay.domain.names import check_party_name, check_region
from labrelay.domain.parties import is_pq_recipient
from labrelay.domain.records import ALL_OUTPUT_FIELDS, DIRECT_IDENTIFIERS, FIELDS
from labrelay.domain.timeutil import to_rfc3339
from labrelay.errors import UntrustedEntry, UsageError

POLICY_TYPE = "routing-policy"
POLICY_V = 2  # version 1 (before T30) carried neither an issue number nor a validity end: refused
WITHDRAWAL_TYPE = "policy-withdrawal"
DEFAULT_POLICY_VALIDITY = timedelta(days=365)  # as directory entries: `publish-policy --valid-for`
MAX_ISSUE = 2**53 - 1  # an integer every JSON reader (JavaScript's included) reads exactly
RESERVED_VERSIONS = frozenset({"current", "withdrawals"})  # names of routes under /v1/policies/
SELECTIONS = ("all", "positive")
FORMATS = ("csv", "fhir-ndjson")
REGION_SLOT = "{region}"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LOINC = re.compile(r"[0-9]{1,7}-[0-9]")
_SERIAL = re.compile(r"[0-9a-f-]{36}")


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
    require_pq: bool = False
    """Every recipient's age key must be hybrid post-quantum (``age1pq1…``): a classic key is refused at enrolment,
    at send time and at fetch time (docs/protocol.md, "Post-quantum recipients")."""

    def classic_refusal(self, party: str, age_recipient: str) -> str | None:
        """Why ``party``'s key ``age_recipient`` may not be used under this policy, or None if it may."""
        if not self.require_pq or is_pq_recipient(age_recipient):
            return None
        return (
            f"policy {self.version} requires post-quantum recipients and {party}'s age key is classic (X25519): "
            f"{party} must move to a hybrid key with labrelay party rotate --pq"
        )

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
    unknown = set(raw) - {"version", "description", "loinc", "recipients", "require_pq"}
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
    require_pq = raw.get("require_pq", False)
    if not isinstance(require_pq, bool):
        raise PolicyError("policy: require_pq must be true or false")
    return Policy(
        version=version, loinc=frozenset(loinc), recipients=rules, description=description, require_pq=require_pq
    )


@dataclass(frozen=True, slots=True)
class SignedPolicy:
    """A routing policy as the authority signed it: the policy, and what orders and bounds it."""

    policy: Policy
    issue: int  # raised by the authority with every policy it signs: the order of policies, not their version strings
    issued_at: datetime
    not_after: datetime  # the end of its validity: nobody routes under it from then on
    text: str  # its TOML text, as signed

    @property
    def version(self) -> str:
        return self.policy.version

    @property
    def text_sha256(self) -> str:
        """The SHA-256 of its text: one issue, one text."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def label(self) -> str:
        """``fr-covid-2026.3 (issue 4)``: how messages name a policy."""
        return f"{self.policy.version} (issue {self.issue})"

    def expired(self, now: datetime) -> bool:
        return now >= self.not_after


def policy_payload(text: str, issued_at: datetime, *, issue: int, not_after: datetime) -> dict[str, Any]:
    """The payload the authority signs: the policy's own text, with its version repeated for lookups, the issue
    number that orders it after every policy signed before, and the end of its validity."""
    version = parse_policy(text).version
    if version in RESERVED_VERSIONS:
        raise PolicyError(f"policy: {version!r} cannot be a version (it names a route of the relay)")
    if isinstance(issue, bool) or not 0 < issue <= MAX_ISSUE:
        raise PolicyError("policy: the issue number is a positive integer")
    if not issued_at < not_after:
        raise PolicyError("policy: its validity must end after it is issued")
    return {
        "type": POLICY_TYPE,
        "v": POLICY_V,
        "version": version,
        "toml": text,
        "issue": issue,
        "issued_at": to_rfc3339(issued_at),
        "not_after": to_rfc3339(not_after),
    }


def signed_policy_from_payload(payload: Mapping[str, Any]) -> SignedPolicy:
    """The policy a verified payload carries, with its issue and validity; refused if malformed, if its version
    field disagrees with the text, or if it was signed before policies carried an issue and a validity end."""
    if payload.get("type") != POLICY_TYPE:
        raise PolicyError("not a routing policy")
    if payload.get("v") == 1:
        raise UntrustedEntry(
            f"routing policy {str(payload.get('version'))[:64]!r} was signed with no issue number and no end of "
            "validity (before labrelay refused policy rollbacks): refusing it",
            hint="the authority signs it again: labrelay authority publish-policy",
        )
    if payload.get("v") != POLICY_V or not isinstance(payload.get("toml"), str):
        raise PolicyError(f"not a version-{POLICY_V} routing policy")
    policy = parse_policy(payload["toml"])
    if payload.get("version") != policy.version:
        raise PolicyError("the signed version does not match the policy's own")
    issue = require(payload, "issue", int, PolicyError)
    if not 0 < issue <= MAX_ISSUE:
        raise PolicyError(f"routing policy {policy.version}: malformed issue number")
    issued_at = instant(payload, "issued_at", PolicyError)
    not_after = instant(payload, "not_after", PolicyError)
    if not issued_at < not_after:
        raise PolicyError(f"routing policy {policy.version}: empty validity period")
    return SignedPolicy(policy, issue, issued_at, not_after, payload["toml"])


@dataclass(frozen=True, slots=True)
class PolicyWithdrawal:
    """A signed withdrawal: the authority voids every issue of ``version``, for good. Nobody routes under it again
    (to route under the same rules, the authority publishes them under a new version)."""

    version: str
    withdrawn_at: datetime
    reason: str
    serial: str

    def __post_init__(self) -> None:
        if not _VERSION.fullmatch(self.version):
            raise UntrustedEntry("policy withdrawal: malformed version")
        if not (0 < len(self.reason) <= 200) or not self.reason.isprintable():
            raise UntrustedEntry("policy withdrawal: the reason must be 1-200 printable characters")
        if not _SERIAL.fullmatch(self.serial):
            raise UntrustedEntry("policy withdrawal: malformed serial")

    def to_payload(self) -> dict[str, Any]:
        return {
            "type": WITHDRAWAL_TYPE,
            "v": 1,
            "version": self.version,
            "withdrawn_at": to_rfc3339(self.withdrawn_at),
            "reason": self.reason,
            "serial": self.serial,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PolicyWithdrawal:
        if payload.get("type") != WITHDRAWAL_TYPE or payload.get("v") != 1:
            raise UntrustedEntry("not a version-1 policy withdrawal")
        return cls(
            version=require(payload, "version", str),
            withdrawn_at=instant(payload, "withdrawn_at"),
            reason=require(payload, "reason", str),
            serial=require(payload, "serial", str),
        )


def _bad(index: int) -> RecipientRule:
    raise PolicyError(f"policy: recipient #{index + 1} is not a table")


def region_of_party(name: str) -> str | None:
    """``ars-11`` → ``11``: the region a regional party's name carries, if any."""
    match = re.fullmatch(r"[a-z-]+-([0-9]{2})", name)
    return check_region(match.group(1)) if match else None
