"""Validation rules one by one, the NIR against an independent implementation, and the cheap screen against the
ordered explanations (they must agree on every record, or a bad record could slip through)."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.fr import nir as stdnum_nir

from labrelay.batch.validate import Validator
from labrelay.domain.records import FIELDS, Reason
from labrelay.synthetic.generator import nir_key
from tests.support.records import CASES, NEEDS_NORMALISING, TODAY, VALID, V, frame, good


def reasons_of(rec: dict[str, str]) -> set[tuple[str, str]]:
    result = V.validate(frame(rec))
    return {(r["field"], r["reason"]) for r in result.rejections.iter_rows(named=True)}


@pytest.mark.parametrize(("change", "field", "reason"), CASES, ids=[f"{c[1]}-{c[2].name}" for c in CASES])
def test_each_rule_names_its_field_and_reason(change: dict[str, str], field: str, reason: Reason) -> None:
    assert (field, reason.value) in reasons_of(good(**change))


@pytest.mark.parametrize("change", VALID, ids=lambda c: ",".join(c) or "baseline")
def test_valid_variants_are_accepted(change: dict[str, str]) -> None:
    result = V.validate(frame(good(**change)))
    assert result.rejections.height == 0, result.rejections.to_dicts()
    assert result.accepted.height == 1


def test_normalisation() -> None:
    result = V.validate(frame(good(**NEEDS_NORMALISING)))
    row = result.accepted.row(0, named=True)
    assert row["sexe"] == "M"
    assert row["email"] == "Celine@Example.FR"  # as written: an address's local part is case-sensitive
    assert row["telephone"] == "0612345678"
    assert row["date_naissance"] == date(1979, 3, 15)
    assert row["resultat"] == "NEGATIF"
    assert row["code_commune_insee"] == "2A004"
    assert row["nom"] == "DUPONT"
    assert row["_region"] == "94"
    assert row["age"] == 46


def test_territories_without_an_ars_table_are_accepted_without_a_region() -> None:
    """Valid: the router sends it to the national recipients and holds only its regional share for review."""
    result = V.validate(frame(good(code_commune_insee="97501", code_postal="97500")))  # Saint-Pierre-et-Miquelon
    assert result.accepted.height == 1
    assert result.accepted["_region"][0] is None


@pytest.mark.threat("T27")
@pytest.mark.parametrize("field", ["nom", "prenom", "adresse", "commune", "prescripteur_nom", "email"])
@pytest.mark.parametrize("start", ["=", "+", "-", "@", " =", "\t", "\r"])
def test_formula_like_values_are_refused(field: str, start: str) -> None:
    """Identity and address text beginning like a spreadsheet formula never reaches a recipient's spreadsheet."""
    value = f'{start}HYPERLINK("http://x.example","a")' if field != "email" else f"{start}cmd@example.fr"
    result = V.validate(frame(good(**{field: value})))
    assert result.accepted.height == 0
    [reason] = result.rejections.filter(pl.col("field") == field)["reason"].to_list()
    expected = Reason.CONTROL.value if start in ("\t", "\r") else Reason.FORMULA.value
    assert reason == expected


def test_formula_characters_inside_a_value_and_the_phone_plus_are_fine() -> None:
    result = V.validate(frame(good(nom="JEAN-PIERRE", adresse="12 rue du 8-Mai", telephone="+33612345678")))
    assert result.accepted.height == 1, result.rejections


@settings(max_examples=300, deadline=None)
@given(
    sex=st.sampled_from("12"),
    year=st.integers(0, 99),
    month=st.integers(1, 12),
    place=st.one_of(
        st.integers(1, 95).map(lambda d: f"{d:02d}{0:03d}"),
        st.sampled_from(["2A004", "2B033"]),
        st.integers(100, 999).map(lambda c: f"99{c}"),
    ),
    order=st.integers(1, 999),
    wrong=st.integers(0, 99),
)
def test_nir_rules_agree_with_python_stdnum(
    sex: str, year: int, month: int, place: str, order: int, wrong: int
) -> None:
    """python-stdnum's fr.nir is an independent implementation of the key (Corsica included)."""
    first13 = f"{sex}{year:02d}{month:02d}{place}{order:03d}"
    for key in (nir_key(first13), f"{wrong:02d}"):
        nir = first13 + key
        ours = ("nir", Reason.NIR_KEY.value) not in reasons_of(good(nir=nir))
        assert ours == stdnum_nir.is_valid(nir), nir


FIELD_VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", "2026-02-30", "29/02/2024", "0612345678", "POSITIF", "94500-6", "2A004", "+33612345678"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FIELDS), FIELD_VALUES), min_size=1, max_size=4))
def test_screen_and_explanations_always_agree(changes: list[tuple[str, str]]) -> None:
    """Phase one (the screen) and phase two (the named rules) must flag exactly the same records; a record the
    screen refuses is never left unexplained, and one it accepts breaks no rule."""
    rec = good()
    for field, value in changes:
        rec[field] = value
    f = frame(rec).with_columns(
        pl.concat_str([pl.col(n).fill_null("") for n in FIELDS]).str.contains(r"[\x00-\x1f\x7f]").alias("_control")
    )
    needs = V._needs(f, True)
    prepared = f.lazy().with_columns(V._prepared(needs)).with_columns(V._parsed(needs)).collect()
    screen = prepared.select(V._screen()).item()
    named = prepared.select(pl.any_horizontal([c.bad.fill_null(False) for c in V.checks]) | pl.col("_control")).item()
    assert screen == named, rec
    result = V.validate(f)
    assert (result.rejections.height > 0) == screen
    if screen:
        assert "record is not well-formed" not in result.rejections["reason"].to_list()


def test_today_is_the_validators_not_the_systems() -> None:
    later = Validator(today=date(2030, 1, 1), loinc=["94500-6"], communes=["75111"], department_regions={"75": "11"})
    assert later.validate(frame(good(date_validation="2029-12-31", date_prelevement="2029-12-30"))).accepted.height
    assert date(2029, 12, 31) > TODAY
