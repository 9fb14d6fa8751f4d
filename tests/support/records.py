"""Synthetic records for the reader, validator and routing tests, and the tables the browser's reader and validator
are checked on too (tests/vectors/make_web_vectors.py): one good record, and the changes each rule must refuse or
accept. Made by hand from the project's own rules: no real person's data."""

from __future__ import annotations

from datetime import date

import polars as pl

from labrelay.batch.validate import Validator
from labrelay.domain.records import DEFAULT_LOINC, FIELDS, Reason
from labrelay.refdata import communes, department_regions
from labrelay.synthetic.generator import nir_key

TODAY = date(2026, 1, 15)


def validator() -> Validator:
    return Validator(
        today=TODAY,
        loinc=DEFAULT_LOINC,
        communes=[c.insee for c in communes()],
        department_regions=department_regions(),
    )


def good(**over: str) -> dict[str, str]:
    first13 = "1790375111042"
    rec = {
        "nir": first13 + nir_key(first13),
        "nom": "DUPONT",
        "prenom": "Céline",
        "date_naissance": "1979-03-15",
        "sexe": "F",
        "adresse": "12 rue de la Paix",
        "code_postal": "75011",
        "code_commune_insee": "75111",
        "commune": "PARIS 11",
        "telephone": "0612345678",
        "email": "celine.dupont@example.fr",
        "prescripteur_rpps": "10004087358",
        "prescripteur_nom": "Paul DURAND",
        "prescripteur_telephone": "0145678901",
        "laboratoire_finess": "750712184",
        "date_prelevement": "2026-01-10",
        "date_validation": "2026-01-11",
        "code_loinc": "94500-6",
        "resultat": "POSITIF",
    }
    rec.update(over)
    return rec


def line(rec: dict[str, str], sep: str = ",", columns: tuple[str, ...] = FIELDS) -> str:
    return sep.join(rec[c] for c in columns)


PADDED = {  # where a value can carry spaces (the browser's reader is checked on the same places)
    "first field": ("nir", " " + good()["nir"]),
    "middle field": ("code_loinc", " 94500-6 "),
    "last field": ("resultat", "POSITIF  "),
    "space after separator": ("sexe", " F"),
    "space before separator": ("code_commune_insee", "75111 "),
}


V = validator()


def frame(*records: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame(list(records), schema=dict.fromkeys(FIELDS, pl.String)).with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("_record")
    )


CASES = [
    ({"nir": ""}, "nir", Reason.REQUIRED),
    ({"nir": "12345"}, "nir", Reason.NIR_FORMAT),
    ({"nir": "179137511104242"}, "nir", Reason.NIR_FORMAT),  # month 13
    ({"nir": "179039611104242"}, "nir", Reason.NIR_FORMAT),  # department 96
    ({"nir": "179037511104200"}, "nir", Reason.NIR_KEY),
    ({"nom": " "}, "nom", Reason.REQUIRED),
    ({"nom": "A" * 201}, "nom", Reason.TOO_LONG),
    ({"prenom": "Cé\tline"}, "prenom", Reason.CONTROL),
    ({"date_naissance": "1979-3-15"}, "date_naissance", Reason.DATE_FORMAT),
    ({"date_naissance": "1979/03/15"}, "date_naissance", Reason.DATE_FORMAT),
    ({"date_naissance": "1979-02-29"}, "date_naissance", Reason.DATE_UNREAL),
    ({"date_naissance": "31/04/1979"}, "date_naissance", Reason.DATE_UNREAL),
    ({"date_naissance": "1899-12-31"}, "date_naissance", Reason.DATE_RANGE),
    ({"date_validation": "2026-01-16"}, "date_validation", Reason.DATE_FUTURE),
    ({"date_naissance": "2026-01-12"}, "date_prelevement", Reason.DATE_ORDER_BIRTH),
    ({"date_validation": "2026-01-09"}, "date_validation", Reason.DATE_ORDER_VALIDATION),
    ({"sexe": "X"}, "sexe", Reason.SEX),
    ({"code_postal": "7501"}, "code_postal", Reason.POSTAL_CODE),
    ({"code_commune_insee": "7511"}, "code_commune_insee", Reason.COMMUNE_FORMAT),
    ({"code_commune_insee": "75999"}, "code_commune_insee", Reason.COMMUNE_UNKNOWN),
    ({"telephone": "06 12 34"}, "telephone", Reason.PHONE),
    ({"telephone": "0012345678"}, "telephone", Reason.PHONE),
    ({"email": "no-at-sign"}, "email", Reason.EMAIL),
    ({"prescripteur_rpps": "1234"}, "prescripteur_rpps", Reason.RPPS),
    ({"laboratoire_finess": "75071218"}, "laboratoire_finess", Reason.FINESS),
    ({"code_loinc": "1234-5"}, "code_loinc", Reason.LOINC),
    ({"resultat": "PEUT-ETRE"}, "resultat", Reason.RESULT),
    ({"resultat": "10828004"}, "resultat", Reason.RESULT),  # a SNOMED code the template does not list
    ({"nom": "DUP\u202eTNO"}, "nom", Reason.INVISIBLE),  # a right-to-left override: shows as DUPONT
]


VALID = [
    {},
    {"date_naissance": "29/02/1980"},  # leap day, French format
    {"resultat": "négatif"},
    {"resultat": "INDÉTERMINÉ"},
    {"resultat": "260373001"},
    {"sexe": "h"},
    {"sexe": "2"},
    {"telephone": "06.12.34.56.78"},
    {"telephone": "+41791234567"},
    {"telephone": ""},
    {"email": ""},
    {"nom": "  DUPONT  "},
    {"code_commune_insee": "2a004"},
    {"laboratoire_finess": "2A0000123"},
    {"prescripteur_rpps": "", "prescripteur_nom": "", "prescripteur_telephone": ""},
    {"date_prelevement": "2026-01-11", "date_validation": "2026-01-11"},
]


NEEDS_NORMALISING = {  # every normalisation at once (the browser's validator is checked on it too)
    "sexe": "h",
    "email": "Celine@Example.FR",
    "telephone": "06 12-34.56 78",
    "date_naissance": "15/03/1979",
    "resultat": "260415000",
    "code_commune_insee": "2a004",
    "nom": "  DUPONT ",
}
