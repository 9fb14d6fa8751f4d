"""Routing and minimisation under the signed policy: who gets which records, and which of their fields.

For each accepted record, its destinations are the policy's recipients whose selection it meets: CNAM for a
positive result, the ARS of its region of residence (from its INSEE commune code), Santé publique France for every
record. Each destination receives only the fields the policy gives it; a pseudonymised recipient receives a keyed
pseudonym (HMAC-SHA256 of the normalised birth name, first name and birth date) and never a direct identifier.

Each record goes to every recipient in force that the policy gives it. Only the share of a recipient that cannot
take it is held for review: its region's ARS when that ARS is not enrolled yet (``send --held BATCH`` delivers it
once it is), or, for a residence in a territory no ARS table covers, the regional share (a question for a person).
The record still reaches CNAM and Santé publique France when the policy gives it to them: one agency missing never
holds up another's picture. ``--to`` restricts a send to some destinations, on purpose; what it leaves out is not
addressed, so not held.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import polars as pl

from labrelay.crypto.pseudonym import hmac_hex_column
from labrelay.domain.policy import REGION_SLOT, Policy, RecipientRule
from labrelay.domain.records import Reason, Result, normalise_trait
from labrelay.errors import UsageError

HELD_RECIPIENT = "_recipient"
"""In the held frame: the recipient whose share of the record is held (empty when no ARS covers the residence)."""

ROW_ID = "_lid"
"""A routed record's row id, kept in each destination's frame when the persons index asks for it (RecordSink
writes only the destination's fields)."""


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


_UNIT = "\x1f"  # joins name and first name for one normalisation pass: validated fields hold no control character

# The reference normalisation works character by character (NFKD decomposes each one; the marks it adds are dropped;
# upper case and the final filter are per character too), so a character's image under it can be tabulated. The
# Latin letters French names use (U+0080-U+024F) are folded from this table, computed from the reference itself;
# a batch with any other non-ASCII character takes the general path (Unicode normalisation), which is slower.
_LATIN = {chr(cp): normalise_trait(chr(cp)) for cp in range(0x80, 0x250)}
_FOLD_FROM = list(_LATIN)
_FOLD_TO = [_LATIN[ch] for ch in _FOLD_FROM]


def _finish(names: pl.Expr) -> pl.Expr:
    return names.str.to_uppercase().str.replace_all(f"[^A-Z0-9{_UNIT}]", "").str.replace(_UNIT, "|", literal=True)


def pseudonym_input_names() -> pl.Expr:
    """``NOM|PRENOM`` normalised in one pass (joined by a character validation guarantees neither contains): the
    general path, for any text."""
    names = pl.concat_str([pl.col("nom"), pl.col("prenom")], separator=_UNIT)
    return _finish(names.str.normalize("NFKD").str.replace_all(r"\p{M}", ""))


def _names_folded(frame: pl.DataFrame) -> pl.Series:
    """``pseudonym_input_names()`` for ``frame``, by the Latin table when every character allows it."""
    names = pl.concat_str([pl.col("nom"), pl.col("prenom")], separator=_UNIT)
    folded = frame.select(names.str.replace_many(_FOLD_FROM, _FOLD_TO).alias("n"))
    if folded.select((pl.col("n").str.len_bytes() != pl.col("n").str.len_chars()).any()).item():
        return frame.select(pseudonym_input_names().alias("n")).to_series()  # a character beyond the table
    return folded.select(_finish(pl.col("n"))).to_series()


def pseudonym_input() -> pl.Expr:
    """What the pseudonym is computed from: ``NOM|PRENOM|YYYY-MM-DD`` after normalisation."""
    return pl.concat_str([pseudonym_input_names(), pl.col("date_naissance").dt.strftime("%Y-%m-%d")], separator="|")


def with_pseudonyms(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    """``frame`` plus its ``pseudonyme`` column: keyed HMAC-SHA256 of ``pseudonym_input()``.

    (Normalising only the distinct names and joining them back was measured slower: the join copies every
    column.)"""
    names = _names_folded(frame).alias("_names")
    # A date as text is ISO 8601 (YYYY-MM-DD for the years validation admits), as strftime would write it, faster.
    message = pl.concat_str([pl.col("_names"), pl.col("date_naissance").cast(pl.String)], separator="|")
    return frame.with_columns(names).with_columns(hmac_hex_column(message, key).alias("pseudonyme")).drop("_names")


class Router:
    def __init__(
        self,
        policy: Policy,
        all_regions: Iterable[str],
        enrolled: Collection[str],
        *,
        restrict: Collection[str] | None = None,
        pseudonym_key: str | None = None,
        count_only: bool = False,
    ) -> None:
        """``count_only``: the routing is only counted (``labrelay validate``): no pseudonym is computed, and each
        destination's frame holds record numbers instead of its fields."""
        self.policy = policy
        self.count_only = count_only
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
        self.missing = sorted(d.name for d in missing)
        self.destinations = [d for d in wanted if d.name in enrolled]
        self._regional_fields = {"_region", "resultat", ROW_ID, "_record"}.union(
            *(d.rule.fields for d in self.destinations if d.region is not None)
        )
        # Regional rules this send addresses (some of their recipients wanted), and whether it addresses the policy
        # whole (no --to): only then is a residence no ARS covers a held regional share.
        self._regional_rules = [
            rule for rule in policy.recipients if rule.by_region and any(d.rule is rule for d in wanted)
        ]
        self._whole = restrict is None
        if not self.destinations:
            raise UsageError("no enrolled recipient to send to under this policy")
        if any(d.rule.pseudonymise for d in self.destinations) and not pseudonym_key and not count_only:
            raise UsageError(
                "the policy pseudonymises records for some recipients, and this lab has no pseudonym key",
                hint="enrol the lab with the authority that holds the key (labrelay party enroll)",
            )
        self._key = pseudonym_key

    def route(self, accepted: pl.DataFrame) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
        """(records per enrolled destination, with only its fields; the held shares: one row per record and
        recipient that cannot take it yet, with ``_reason`` and ``HELD_RECIPIENT``)."""
        pseudonymised = "pseudonyme" in accepted.columns  # already computed for the persons index
        wants_key = any(d.rule.pseudonymise for d in self.destinations) and not self.count_only
        if wants_key and self._key is not None and not pseudonymised:
            accepted = with_pseudonyms(accepted, self._key)
        positive = pl.col("resultat") == Result.POSITIVE.value
        positives: pl.DataFrame | None = None
        by_region: dict[str, pl.DataFrame] | None = None
        out: dict[str, pl.DataFrame] = {}
        for dest in self.destinations:
            if dest.region is None:
                if dest.rule.select == "positive":
                    positives = accepted.filter(positive) if positives is None else positives
                    chosen = positives
                else:
                    chosen = accepted
            else:  # one partition pass instead of a filter per region
                if by_region is None:  # only the columns some regional destination takes: the copy is the cost
                    wanted = self._regional_columns(accepted)
                    parts = accepted.select(wanted).partition_by("_region", as_dict=True)
                    by_region = {key[0]: part for key, part in parts.items()}
                chosen = by_region.get(dest.region, accepted.clear())
                if dest.rule.select == "positive":
                    chosen = chosen.filter(positive)
            keep = ["_record"] if self.count_only else [*dest.rule.fields]
            out[dest.name] = chosen.select(*keep, *([ROW_ID] if ROW_ID in chosen.columns else []))
        return out, self._held(accepted)

    def _regional_columns(self, accepted: pl.DataFrame) -> list[str]:
        """The columns of ``accepted`` that the regional destinations' frames are cut from, in its order."""
        return [c for c in accepted.columns if c in self._regional_fields]

    def _held(self, accepted: pl.DataFrame) -> pl.DataFrame:
        """The regional shares no enrolled recipient can take: a missing ARS's residents, and (in a send the policy
        addresses whole) residents of a territory no ARS table covers."""
        parts = []
        for rule in self._regional_rules:
            addressed = (
                accepted if rule.select == "all" else accepted.filter(pl.col("resultat") == Result.POSITIVE.value)
            )
            if self.missing_regions:
                missing = addressed.filter(pl.col("_region").is_in(self.missing_regions))
                if missing.height:
                    before, _, after = rule.name.partition(REGION_SLOT)
                    name = pl.concat_str([pl.lit(before), pl.col("_region"), pl.lit(after)])
                    parts.append(
                        missing.with_columns(
                            pl.lit(Reason.NO_RECIPIENT.value).alias("_reason"), name.alias(HELD_RECIPIENT)
                        )
                    )
            if self._whole:
                nowhere = addressed.filter(pl.col("_region").is_null())
                if nowhere.height:
                    parts.append(
                        nowhere.with_columns(
                            pl.lit(Reason.NO_REGION.value).alias("_reason"), pl.lit("").alias(HELD_RECIPIENT)
                        )
                    )
        if not parts:
            return accepted.clear().with_columns(
                pl.lit("", dtype=pl.String).alias("_reason"), pl.lit("", dtype=pl.String).alias(HELD_RECIPIENT)
            )
        return pl.concat(parts, how="vertical_relaxed")
