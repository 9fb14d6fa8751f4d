"""Routing and minimisation under the signed policy: who gets which records, and which of their fields.

For each accepted record, its destinations are the policy's recipients whose selection it meets: CNAM for a
positive result, the ARS of its region of residence (from its INSEE commune code), Santé publique France for every
record. Each destination receives only the fields the policy gives it; a pseudonymised recipient receives a keyed
pseudonym (HMAC-SHA256 of the normalised birth name, first name and birth date) and never a direct identifier.

A record whose region's ARS is not enrolled is held for review and sent to nobody: no recipient gets part of a
picture the lab will have to resend. ``--to`` restricts a send to some destinations, on purpose.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import polars as pl

from labrelay.crypto.pseudonym import hmac_hex_column
from labrelay.domain.policy import Policy, RecipientRule
from labrelay.domain.records import Reason, Result
from labrelay.errors import UsageError


@dataclass(frozen=True, slots=True)
class Destination:
    name: str
    rule: RecipientRule
    region: str | None  # for a regional rule


def destinations(policy: Policy, regions: Iterable[str]) -> list[Destination]:
    """Every party the policy addresses, regional rules expanded over ``regions``."""
    regions = sorted(set(regions))
    return [Destination(name, rule, region) for rule in policy.recipients for name, region in rule.names_for(regions)]


def normalised_trait(expr: pl.Expr) -> pl.Expr:
    """Vectorised ``labrelay.domain.records.normalise_trait``: upper case, no accents, letters and digits only."""
    return expr.str.normalize("NFKD").str.replace_all(r"\p{M}", "").str.to_uppercase().str.replace_all(r"[^A-Z0-9]", "")


def pseudonym_input() -> pl.Expr:
    """What the pseudonym is computed from: ``NOM|PRENOM|YYYY-MM-DD`` after normalisation."""
    return pl.concat_str(
        [
            normalised_trait(pl.col("nom")),
            normalised_trait(pl.col("prenom")),
            pl.col("date_naissance").dt.strftime("%Y-%m-%d"),
        ],
        separator="|",
    )


class Router:
    def __init__(
        self,
        policy: Policy,
        all_regions: Iterable[str],
        enrolled: Collection[str],
        *,
        restrict: Collection[str] | None = None,
        pseudonym_key: str | None = None,
    ) -> None:
        self.policy = policy
        every = destinations(policy, all_regions)
        known = {d.name for d in every}
        if restrict is not None:
            unknown = sorted(set(restrict) - known)
            if unknown:
                raise UsageError(
                    f"{', '.join(unknown)}: not a recipient under policy {policy.version}",
                    hint="labrelay send --as-is --to NAME sends a document without routing",
                )
        wanted = [d for d in every if restrict is None or d.name in restrict]
        missing = [d for d in wanted if d.name not in enrolled]
        national_missing = sorted(d.name for d in missing if d.region is None)
        if national_missing:
            raise UsageError(
                f"policy {policy.version} sends to {', '.join(national_missing)}, which is not enrolled",
                hint="enrol it, or restrict the send with --to",
            )
        self.missing_regions = sorted({d.region for d in missing if d.region is not None})
        self.destinations = [d for d in wanted if d.name in enrolled]
        if not self.destinations:
            raise UsageError("no enrolled recipient to send to under this policy")
        if any(d.rule.pseudonymise for d in self.destinations) and not pseudonym_key:
            raise UsageError(
                "the policy pseudonymises records for some recipients, and this lab has no pseudonym key",
                hint="enrol the lab with the authority that holds the key (labrelay party enroll)",
            )
        self._key = pseudonym_key

    def route(self, accepted: pl.DataFrame) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
        """(records per destination, with only its fields; records held for review, with ``_reason``)."""
        held = accepted.filter(pl.col("_region").is_in(self.missing_regions)) if self.missing_regions else None
        routable = accepted.filter(~pl.col("_region").is_in(self.missing_regions)) if held is not None else accepted
        if any(d.rule.pseudonymise for d in self.destinations) and self._key is not None:
            routable = routable.with_columns(hmac_hex_column(pseudonym_input(), self._key).alias("pseudonyme"))
        out: dict[str, pl.DataFrame] = {}
        for dest in self.destinations:
            chosen = routable
            if dest.rule.select == "positive":
                chosen = chosen.filter(pl.col("resultat") == Result.POSITIVE.value)
            if dest.region is not None:
                chosen = chosen.filter(pl.col("_region") == dest.region)
            out[dest.name] = chosen.select(dest.rule.fields)
        review = (held if held is not None else accepted.clear()).with_columns(
            pl.lit(Reason.NO_RECIPIENT.value).alias("_reason")
        )
        return out, review
