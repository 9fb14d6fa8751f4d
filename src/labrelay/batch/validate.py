"""Validation of canonical records, vectorised: one set of rules for every input format.

``Validator.validate(frame)`` takes a batch of records (the canonical fields as strings, plus ``_record``) and
splits it in two:

- **accepted** records, normalised (trimmed; NIR, commune code and FINESS upper case; dates as dates; sex M/F;
  results POSITIF/NEGATIF/INDETERMINE; phone numbers without separators; e-mail as written, its local part being
  case-sensitive), with the derived ``_department``, ``_region`` and ``age`` (years at sampling);
- **rejections**: one row per (record, field, reason), the first rule each field breaks.

A valid record whose residence no ARS table covers (975, 977, 978, 98x) is accepted with a null ``_region``: the
router holds its regional share for review and sends it to the national recipients the policy gives it.

Rules (../shared/context/domain-spec.md): NIR layout, sex digit 1 or 2, key (97 - first 13 mod 97, Corsica 2A→19,
2B→18), born abroad (99); dates real, in YYYY-MM-DD or DD/MM/YYYY, and birth ≤ sample ≤ validation ≤ today; LOINC
in the policy's set; result coded; RPPS 11 digits and FINESS 9 characters (their check digits are unverified in
the reference, so not enforced); INSEE commune code known to La Poste's base; no control characters; bounded
lengths; no identity or address text beginning like a spreadsheet formula (``=``, ``+``, ``-``, ``@``), nor holding
an invisible or direction-changing character (a right-to-left override, a zero-width space: ``INVISIBLE_RANGES``).

Speed: phase one runs a *screen*, a few cheap boolean expressions that together hold exactly when some rule is
broken (lengths in bytes, set lookups that imply the format, one pattern per date), on every record. Phase two
names the broken rules, in order, on the bad records only. A screened-out record that no rule explains is still
rejected ("record is not well-formed"), never accepted. Normalisations run only on the columns that need them.
Length bounds are in UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, NamedTuple

import polars as pl

from labrelay.domain.records import (
    FIELDS,
    FORMULA_FIELDS,
    INVISIBLE_RANGES,
    MAX_LENGTH,
    REQUIRED,
    SNOMED_RESULTS,
    Reason,
    Result,
)

CONTROL = r"[\x00-\x1f\x7f]"
_NIR_SHAPE = r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}"
_NIR = r"[12][0-9]{2}(?:0[1-9]|1[0-2]|[2-9][0-9])(?:0[1-9]|[1-8][0-9]|9[0-5]|2[AB]|9[789])[0-9]{8}"
_ISO_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_FR_DATE = r"[0-9]{2}/[0-9]{2}/[0-9]{4}"
_DATE = f"{_ISO_DATE}|{_FR_DATE}"
_PHONE = r"0[1-9][0-9]{8}|\+[1-9][0-9]{7,14}"
_EMAIL = r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+"
_COMMUNE = r"[0-9]{5}|2[AB][0-9]{3}"
_FINESS = r"[0-9]{9}|2[AB][0-9]{7}"
_FORMULA = r"^[=+\-@\t\r]"
_INVISIBLE = "[" + "".join(f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in INVISIBLE_RANGES) + "]"
_MIN_DATE = date(1900, 1, 1)

DATE_FIELDS = ("date_naissance", "date_prelevement", "date_validation")
PHONE_FIELDS = ("telephone", "prescripteur_telephone")
UPPER_FIELDS = ("nir", "code_commune_insee", "laboratoire_finess", "sexe")
SEX_CODES = {"M": "M", "F": "F", "H": "M", "1": "M", "2": "F"}


def _anchored(pattern: str) -> str:
    return f"^(?:{pattern})$"


def _v(name: str) -> pl.Expr:
    """The field's value, trimmed and normalised (prepared once per batch)."""
    return pl.col(f"v:{name}")


def _d(name: str) -> pl.Expr:
    """The field parsed (dates, result), or null (prepared once per batch)."""
    return pl.col(f"d:{name}")


@dataclass(frozen=True)
class Check:
    field: str
    reason: Reason
    bad: pl.Expr  # true when the record breaks this rule (null counts as false)


class Needs(NamedTuple):
    """The fields whose values need each normalisation in this batch."""

    trim: frozenset[str] = frozenset(FIELDS)
    case: frozenset[str] = frozenset(UPPER_FIELDS)
    separators: frozenset[str] = frozenset(PHONE_FIELDS)
    french_date: frozenset[str] = frozenset(DATE_FIELDS)


@dataclass(frozen=True)
class ValidationResult:
    accepted: pl.DataFrame  # normalised, with "_department", "_region" (null: no ARS table covers it) and "age"
    rejections: pl.DataFrame  # columns: record (Int64), field (String), reason (String)
    rejected_records: int


def empty_rejections() -> pl.DataFrame:
    return pl.DataFrame(schema={"record": pl.Int64, "field": pl.String, "reason": pl.String})


class Validator:
    """The rules, bound to their reference data: today's date, the policy's LOINC set, the commune base, the
    department → region table."""

    def __init__(
        self, *, today: date, loinc: Iterable[str], communes: Iterable[str], department_regions: Mapping[str, str]
    ) -> None:
        self.today = today
        self.loinc = pl.Series("loinc", sorted(set(loinc)), dtype=pl.String).implode()
        self.communes = pl.Series("communes", sorted(set(communes)), dtype=pl.String).implode()
        self.region_of = dict(department_regions)
        accented = {
            "NÉGATIF": "NEGATIF",
            "INDÉTERMINÉ": "INDETERMINE",
            "INDÉTERMINE": "INDETERMINE",
            "INDETERMINÉ": "INDETERMINE",
        }
        self.results = {r.value: r.value for r in Result} | accented | {c: r.value for c, r in SNOMED_RESULTS.items()}
        self.checks = self._checks()

    # ------------------------------------------------------------ prepared values

    @staticmethod
    def _needs(frame: pl.DataFrame, padded: bool) -> Needs:
        """Which normalisations the batch needs at all: clean data skips the work.

        ``padded=False`` is the reader's word that no value has spaces around it."""
        probes = []
        for name in FIELDS:
            col = pl.col(name).fill_null("")
            if padded:
                probes.append((col.str.starts_with(" ") | col.str.ends_with(" ")).any().alias(f"trim:{name}"))
            if name in UPPER_FIELDS:
                probes.append(col.str.contains("[a-z]").any().alias(f"case:{name}"))
            if name in PHONE_FIELDS:
                probes.append(col.str.contains(r"[ .\-]").any().alias(f"separators:{name}"))
            if name in DATE_FIELDS:
                probes.append(col.str.contains("/", literal=True).any().alias(f"french_date:{name}"))
        row = frame.select(probes).row(0, named=True)
        found: dict[str, set[str]] = {}
        for probe, hit in row.items():
            kind, name = probe.split(":", 1)
            if hit:
                found.setdefault(kind, set()).add(name)
        return Needs(
            frozenset(found.get("trim", ())),
            frozenset(found.get("case", ())),
            frozenset(found.get("separators", ())),
            frozenset(found.get("french_date", ())),
        )

    @staticmethod
    def _prepared(needs: Needs) -> list[pl.Expr]:
        out = []
        for name in FIELDS:
            value = pl.col(name).fill_null("")
            if name in needs.trim:
                value = value.str.strip_chars(" ")
            if name in needs.case:
                value = value.str.to_uppercase()
            if name in needs.separators:
                value = value.str.replace_all(r"[ .\-]", "")
            out.append(value.alias(f"v:{name}"))
        return out

    def _parsed(self, needs: Needs) -> list[pl.Expr]:
        out = []
        for name in DATE_FIELDS:
            value = _v(name)
            iso = value.str.to_date("%Y-%m-%d", strict=False)
            if name in needs.french_date:  # some dates are DD/MM/YYYY: the second parser is needed
                french = value.str.to_date("%d/%m/%Y", strict=False)
                either: pl.Expr = pl.when(value.str.slice(4, 1) == "-").then(iso).otherwise(french)
            else:
                either = iso
            parsed = pl.when(value.str.len_bytes() != 10).then(None).otherwise(either)
            out.append(parsed.alias(f"d:{name}"))
        out.append(
            _v("resultat")
            .str.to_uppercase()
            .replace_strict(self.results, default=None, return_dtype=pl.String)
            .alias("d:resultat")
        )
        return out

    # ------------------------------------------------------------ the rules, as boolean checks

    def _checks(self) -> list[Check]:
        """Every rule, in the order its reason is preferred within a field."""
        checks: list[Check] = []

        def common(name: str) -> None:
            checks.append(Check(name, Reason.TOO_LONG, _v(name).str.len_bytes() > MAX_LENGTH[name]))
            if name in REQUIRED:
                checks.append(Check(name, Reason.REQUIRED, _v(name).str.len_bytes() == 0))
            if name in FORMULA_FIELDS:
                checks.append(Check(name, Reason.FORMULA, _v(name).str.contains(_FORMULA)))
                checks.append(Check(name, Reason.INVISIBLE, _v(name).str.contains(_INVISIBLE)))

        def pattern(name: str, regex: str, reason: Reason, optional: bool) -> None:
            mismatch = ~_v(name).str.contains(_anchored(regex))
            checks.append(Check(name, reason, (_v(name) != "") & mismatch if optional else mismatch))

        nir = _v("nir")
        body = nir.str.slice(0, 13).str.replace("2A", "19", literal=True).str.replace("2B", "18", literal=True)
        key_ok = (97 - body.cast(pl.Int64, strict=False) % 97) == nir.str.slice(13, 2).cast(pl.Int64, strict=False)
        common("nir")
        checks.append(Check("nir", Reason.NIR_FORMAT, ~nir.str.contains(_anchored(_NIR_SHAPE))))
        checks.append(Check("nir", Reason.NIR_SEX, ~nir.str.slice(0, 1).is_in(["1", "2"])))
        checks.append(Check("nir", Reason.NIR_FORMAT, ~nir.str.contains(_anchored(_NIR))))
        checks.append(Check("nir", Reason.NIR_KEY, ~key_ok.fill_null(False)))
        for name in ("nom", "prenom", "adresse", "commune", "prescripteur_nom"):
            common(name)
        for name in DATE_FIELDS:
            common(name)
            checks.append(Check(name, Reason.DATE_FORMAT, ~_v(name).str.contains(_anchored(_DATE))))
            checks.append(Check(name, Reason.DATE_UNREAL, _d(name).is_null()))
            checks.append(Check(name, Reason.DATE_RANGE, _d(name) < pl.lit(_MIN_DATE)))
            checks.append(Check(name, Reason.DATE_FUTURE, _d(name) > pl.lit(self.today)))
        common("sexe")
        checks.append(Check("sexe", Reason.SEX, ~_v("sexe").is_in(list(SEX_CODES))))
        common("code_postal")
        pattern("code_postal", "[0-9]{5}", Reason.POSTAL_CODE, optional=True)
        common("code_commune_insee")
        pattern("code_commune_insee", _COMMUNE, Reason.COMMUNE_FORMAT, optional=False)
        checks.append(
            Check("code_commune_insee", Reason.COMMUNE_UNKNOWN, ~_v("code_commune_insee").is_in(self.communes))
        )
        for name in PHONE_FIELDS:
            common(name)
            pattern(name, _PHONE, Reason.PHONE, optional=True)
        common("email")
        pattern("email", _EMAIL, Reason.EMAIL, optional=True)
        common("prescripteur_rpps")
        pattern("prescripteur_rpps", "[0-9]{11}", Reason.RPPS, optional=True)
        common("laboratoire_finess")
        pattern("laboratoire_finess", _FINESS, Reason.FINESS, optional=False)
        common("code_loinc")
        checks.append(Check("code_loinc", Reason.LOINC, ~_v("code_loinc").is_in(self.loinc)))
        common("resultat")
        checks.append(Check("resultat", Reason.RESULT, _d("resultat").is_null()))
        birth, sample, validated = (_d(n) for n in DATE_FIELDS)
        checks.append(Check("date_prelevement", Reason.DATE_ORDER_BIRTH, sample < birth))
        checks.append(Check("date_validation", Reason.DATE_ORDER_VALIDATION, validated < sample))
        return checks

    def _screen(self, invisible: bool = True) -> pl.Expr:
        """True when a record breaks some rule: equivalent to any of ``self.checks``, at a fraction of the cost.
        ``invisible=False``: the reader knows that no value holds an invisible character (that rule is left out)."""
        too_long = [_v(n).str.len_bytes() > MAX_LENGTH[n] for n in FIELDS]
        missing = [_v(n).str.len_bytes() == 0 for n in sorted(REQUIRED)]
        nir = _v("nir")
        body = nir.str.slice(0, 13).str.replace("2A", "19", literal=True).str.replace("2B", "18", literal=True)
        key_ok = (97 - body.cast(pl.Int64, strict=False) % 97) == nir.str.slice(13, 2).cast(pl.Int64, strict=False)
        dates = [
            ~_v(n).str.contains(_anchored(_DATE))
            | _d(n).is_null()
            | (_d(n) < pl.lit(_MIN_DATE))
            | (_d(n) > pl.lit(self.today))
            for n in DATE_FIELDS
        ]

        def optional(name: str, regex: str) -> pl.Expr:
            return (_v(name).str.len_bytes() > 0) & ~_v(name).str.contains(_anchored(regex))

        birth, sample, validated = (_d(n) for n in DATE_FIELDS)
        rules = [
            *too_long,
            *missing,
            *(_v(n).str.contains(_FORMULA) for n in FORMULA_FIELDS),
            *([pl.concat_str([_v(n) for n in FORMULA_FIELDS]).str.contains(_INVISIBLE)] if invisible else []),
            *dates,
            ~nir.str.contains(_anchored(_NIR)),
            ~key_ok,
            ~_v("sexe").is_in(list(SEX_CODES)),
            optional("code_postal", "[0-9]{5}"),
            ~_v("code_commune_insee").is_in(self.communes),  # every known code is well-formed
            optional("telephone", _PHONE),
            optional("prescripteur_telephone", _PHONE),
            optional("email", _EMAIL),
            optional("prescripteur_rpps", "[0-9]{11}"),
            ~_v("laboratoire_finess").str.contains(_anchored(_FINESS)),
            ~_v("code_loinc").is_in(self.loinc),
            _d("resultat").is_null(),
            sample < birth,
            validated < sample,
        ]
        return pl.any_horizontal([r.fill_null(True) for r in rules]) | pl.col("_control")

    # ------------------------------------------------------------ the batch

    def validate(self, frame: pl.DataFrame, *, padded: bool = True, invisible: bool = True) -> ValidationResult:
        """Split a batch. ``frame`` may carry ``_control`` (the reader's per-record flag); otherwise it is computed.
        ``padded=False``: the reader knows that no value has spaces around it; ``invisible=False``: that no value
        holds a character of ``INVISIBLE_RANGES``."""
        if "_control" not in frame.columns:
            control = pl.concat_str([pl.col(n).fill_null("") for n in FIELDS]).str.contains(CONTROL)
            frame = frame.with_columns(control.alias("_control"))
        needs = self._needs(frame, padded)
        prepared = frame.lazy().with_columns(self._prepared(needs)).with_columns(self._parsed(needs))
        checked = prepared.with_columns(self._screen(invisible).alias("_bad")).collect()
        if checked.select(pl.col("_bad").any()).item():
            bad, good = checked.filter(pl.col("_bad")), checked.filter(~pl.col("_bad"))
        else:  # the common case: no copy
            bad, good = checked.clear(), checked
        region = pl.col("_department").replace_strict(self.region_of, default=None, return_dtype=pl.String)
        accepted = self._normalise(good).with_columns(region.alias("_region"))
        return ValidationResult(accepted, self._report(bad), bad.height)

    def _report(self, bad: pl.DataFrame) -> pl.DataFrame:
        """Phase two, on the bad records only: each field's first broken rule, and control characters per field."""
        if bad.height == 0:
            return empty_rejections()
        by_field: dict[str, list[Check]] = {}
        for check in self.checks:
            by_field.setdefault(check.field, []).append(check)
        columns = []
        for name in FIELDS:
            raw = pl.col(name).fill_null("")
            expr: Any = pl.when(pl.col("_control") & raw.str.contains(CONTROL)).then(pl.lit(Reason.CONTROL.value))
            for check in by_field.get(name, []):
                expr = expr.when(check.bad.fill_null(False)).then(pl.lit(check.reason.value))
            columns.append(expr.otherwise(None).alias(name))
        reasons = bad.select(pl.col("_record").alias("record"), *columns)
        named = (
            reasons.unpivot(index="record", variable_name="field", value_name="reason")
            .drop_nulls("reason")
            .sort("record", maintain_order=True)
        )
        # The screen refused these records; if no rule names why, they are still refused, never accepted.
        unexplained = bad.select(pl.col("_record").alias("record")).join(
            named.select("record").unique(), on="record", how="anti"
        )
        fallback = unexplained.with_columns(pl.lit("*").alias("field"), pl.lit(Reason.MALFORMED.value).alias("reason"))
        return pl.concat([named, fallback]).sort("record", maintain_order=True)

    @staticmethod
    def _normalise(good: pl.DataFrame) -> pl.DataFrame:
        commune = _v("code_commune_insee")
        sample, birth = _d("date_prelevement"), _d("date_naissance")
        # Month and day as one number (MMDD): one comparison, four date-part extractions instead of six.
        before_birthday = (sample.dt.month().cast(pl.Int32) * 100 + sample.dt.day().cast(pl.Int32)) < (
            birth.dt.month().cast(pl.Int32) * 100 + birth.dt.day().cast(pl.Int32)
        )
        values = {n: _v(n).alias(n) for n in FIELDS}
        values.update({n: _d(n).alias(n) for n in DATE_FIELDS})
        values["sexe"] = _v("sexe").replace_strict(SEX_CODES, return_dtype=pl.String).alias("sexe")
        values["resultat"] = _d("resultat").alias("resultat")
        return good.select(
            *(values[n] for n in FIELDS),
            pl.col("_record"),
            commune.str.head(2 + commune.str.starts_with("97").cast(pl.Int64)).alias("_department"),
            (sample.dt.year() - birth.dt.year() - before_birthday.cast(pl.Int32)).alias("age"),
        )
