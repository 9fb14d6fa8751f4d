"""The canonical lab-result record: its fields, their bounds, and the reasons a record can be refused.

Every reader (CSV, HL7 v2, FHIR) turns its input into records with these string fields; validation
(``labrelay.batch.validate``) applies one set of rules to all of them. The CSV template uses exactly these names.
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum

FIELDS: tuple[str, ...] = (
    "nir",
    "nom",
    "prenom",
    "date_naissance",
    "sexe",
    "adresse",
    "code_postal",
    "code_commune_insee",
    "commune",
    "telephone",
    "email",
    "prescripteur_rpps",
    "prescripteur_nom",
    "prescripteur_telephone",
    "laboratoire_finess",
    "date_prelevement",
    "date_validation",
    "code_loinc",
    "resultat",
)
"""The lab-results template, in its documented order (input order is free)."""

DERIVED: tuple[str, ...] = ("pseudonyme", "age")
"""Fields labrelay computes for recipients: a keyed pseudonym of the identity, the age in years at sampling."""

ALL_OUTPUT_FIELDS: tuple[str, ...] = ("pseudonyme", *FIELDS, "age")

DIRECT_IDENTIFIERS = frozenset({"nir", "nom", "prenom", "date_naissance", "adresse", "telephone", "email"})
"""Fields that identify a person directly: never given to a pseudonymised recipient."""

REQUIRED = frozenset(
    {
        "nir",
        "nom",
        "prenom",
        "date_naissance",
        "sexe",
        "code_commune_insee",
        "laboratoire_finess",
        "date_prelevement",
        "date_validation",
        "code_loinc",
        "resultat",
    }
)

OPTIONAL: tuple[str, ...] = tuple(f for f in FIELDS if f not in REQUIRED)
"""Template columns a file may leave out: a missing one is read as empty on every record, never a reason to
refuse the file (the values of these fields may be empty anyway)."""

MAX_LENGTH: dict[str, int] = {
    "nir": 15,
    "nom": 200,
    "prenom": 200,
    "date_naissance": 10,
    "sexe": 1,
    "adresse": 300,
    "code_postal": 5,
    "code_commune_insee": 5,
    "commune": 200,
    "telephone": 20,
    "email": 254,
    "prescripteur_rpps": 11,
    "prescripteur_nom": 240,
    "prescripteur_telephone": 20,
    "laboratoire_finess": 9,
    "date_prelevement": 10,
    "date_validation": 10,
    "code_loinc": 10,
    "resultat": 16,
}
"""Upper bounds, in UTF-8 bytes, after trimming. A record longer than ``RAW_MAX`` bytes per field is refused before
anything else looks at it."""

RAW_MAX = 512


class Result(StrEnum):
    POSITIVE = "POSITIF"
    NEGATIVE = "NEGATIF"
    INDETERMINATE = "INDETERMINE"


SNOMED_RESULTS: dict[str, Result] = {"260373001": Result.POSITIVE, "260415000": Result.NEGATIVE}
"""SNOMED CT result codes accepted on input (EU DCC: 260373001 Detected, 260415000 Not detected)."""

RESULT_SNOMED: dict[Result, tuple[str, str]] = {
    Result.POSITIVE: ("260373001", "Detected"),
    Result.NEGATIVE: ("260415000", "Not detected"),
}
"""How FHIR output codes a result. Indeterminate results carry no SNOMED code here (no source we could verify
gives one); FHIR output writes them as text with the HL7 interpretation ``IND``."""

DEFAULT_LOINC: tuple[str, ...] = (
    "94500-6",
    "94309-2",
    "94845-5",
    "94660-8",
    "94531-1",
    "94558-4",
    "95209-3",
    "94563-4",
    "94564-2",
    "94762-2",
)
"""SARS-CoV-2 LOINC codes from the domain reference (docs: ../shared/context/domain-spec.md §3.1). The set in
force is the signed policy's."""


class Reason(StrEnum):
    """Why a record is refused or held. Stable strings: they appear in rejection reports."""

    MISSING_FIELDS = "record has fewer fields than the header"
    EXTRA_FIELDS = "record has more fields than the header"
    MALFORMED = "record is not well-formed"
    CONTROL = "control character in field"
    FORMULA = "formula-like value"
    INVISIBLE = "invisible or direction-changing character"
    TOO_LONG = "field too long"
    REQUIRED = "required field is empty"
    NIR_FORMAT = "NIR: not 15 characters in the NIR layout"
    NIR_SEX = "NIR: sex digit must be 1 or 2"
    NIR_KEY = "NIR: key does not match"
    DATE_FORMAT = "date: not YYYY-MM-DD or DD/MM/YYYY"
    DATE_UNREAL = "date: no such day"
    DATE_RANGE = "date: before 1900"
    DATE_ORDER_BIRTH = "date: sample taken before birth"
    DATE_ORDER_VALIDATION = "date: validated before the sample was taken"
    DATE_FUTURE = "date: in the future"
    SEX = "sex: not M, F, H, 1 or 2"
    POSTAL_CODE = "postal code: not 5 digits"
    COMMUNE_FORMAT = "INSEE commune code: malformed"
    COMMUNE_UNKNOWN = "INSEE commune code: no such commune"
    PHONE = "phone number: not a French or international number"
    EMAIL = "e-mail: malformed"
    RPPS = "RPPS: not 11 digits"
    FINESS = "FINESS: not 9 characters"
    LOINC = "LOINC: not a SARS-CoV-2 test of this policy"
    RESULT = "result: not POSITIF, NEGATIF, INDETERMINE or a known SNOMED CT code"
    NO_REGION = "residence in a territory no ARS table covers"
    NO_RECIPIENT = "no enrolled recipient for this residence's region"
    STRUCTURE = "message structure"


FORMULA_FIELDS: tuple[str, ...] = ("nom", "prenom", "adresse", "commune", "prescripteur_nom", "email")
"""Text fields of identity and address that recipients open in spreadsheets: a value beginning with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return is refused (``Reason.FORMULA``; tab and CR are control characters, refused
as such first), so that no record can carry a formula into CNAM's or an ARS's spreadsheet; so is one holding an
invisible or direction-changing character (``INVISIBLE_RANGES``, ``Reason.INVISIBLE``). Phone numbers are not
among them: their leading ``+`` is the international prefix, and the phone rule admits nothing else."""

INVISIBLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x0080, 0x009F),  # C1 controls (the 8-bit CSI U+009B among them)
    (0x00AD, 0x00AD),  # soft hyphen
    (0x0600, 0x0605),
    (0x061C, 0x061C),  # Arabic letter mark
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),  # zero-width space, non-joiner, joiner; left-to-right and right-to-left marks
    (0x2028, 0x202E),  # line and paragraph separators; bidi embeddings, pop, overrides (U+202E: right-to-left)
    (0x2060, 0x2064),  # word joiner, invisible operators
    (0x2066, 0x206F),  # bidi isolates and their pop; deprecated format characters
    (0xFEFF, 0xFEFF),  # zero-width no-break space (the byte-order mark)
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),  # language tag
    (0xE0020, 0xE007F),  # tag characters (invisible ASCII)
)
"""Characters refused in the text fields of identity and address (``FORMULA_FIELDS``: ``Reason.INVISIBLE``): every
format character (Unicode category Cf, as of Unicode 14: bidi marks, embeddings, overrides and isolates, zero-width
characters, the byte-order mark, tags…), the C1 controls and the line and paragraph separators. Either they cannot
be seen, or they change how the text around them reads: a name with a right-to-left override shows in CNAM's
spreadsheet as something else than it holds. Listed, not looked up, so that the browser's validator refuses exactly
the same characters whatever its Unicode version (C0 controls are ``Reason.CONTROL``, in every field)."""

REVIEW_REASONS = frozenset({Reason.NO_REGION, Reason.NO_RECIPIENT})
"""Reasons that hold a valid record for human review instead of rejecting it."""


def normalise_trait(text: str) -> str:
    """An identity trait as the pseudonym sees it: upper case, no accents, no punctuation or spaces.

    "Céline" and "CELINE" give the same value. The vectorised version in ``labrelay.batch.route`` must agree with
    this one (tests check it on the same inputs).
    """
    folded = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in folded if not unicodedata.combining(ch)).upper()
    return "".join(ch for ch in stripped if "A" <= ch <= "Z" or "0" <= ch <= "9")
