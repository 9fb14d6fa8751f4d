"""Synthetic lab results: realistic French identities and Covid test results, none of them real.

Everything is drawn from a seeded ``random.Random``, so the same seed and day give the same file:
- names from Faker's fr_FR lists, kept to those of six letters or more, so that a byte search for a name over
  random ciphertext cannot match by chance (2^-48 per offset): the "no plaintext on the relay" checks stay exact;
- residences from La Poste's base officielle des codes postaux (INSEE commune code, postal code, commune);
- NIRs with a correct key, including Corsica (2A/2B) and people born abroad (99 + country code);
- RPPS and FINESS numbers of the right length whose last digit makes them pass a Luhn check;
- e-mail addresses at the reserved domains example.fr/.com/.net/.org (RFC 2606), which no one can receive;
- phone numbers in the French formats, with random digits. They are not drawn from a range known to be unassigned,
  so like any random NIR they may coincide with a real number; they carry no real person's data.
- SI-DEP LOINC codes and a mix of results (mostly negative);
- on request, defects (a wrong NIR key, an impossible date, an unknown code …), each listed with the reason
  validation must give, so tests know exactly what has to be rejected.

This is the project's only source of personal-looking data (non-negotiable 6).
"""

from __future__ import annotations

import csv
import json
import random
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TextIO

from faker import Faker
from faker.providers.person.fr_FR import Provider as PersonProvider

from labrelay.domain.records import FIELDS, Reason
from labrelay.refdata import Commune, communes, department_of, department_regions

COLUMNS = FIELDS  # the CSV template's columns, in order
"""The lab-results CSV template's columns (docs/lab-results.md, "CSV template"), header names exact."""

MIN_NAME_LETTERS = 6
LOINC_WEIGHTS = {"94500-6": 60, "94309-2": 10, "94558-4": 15, "94845-5": 5, "94563-4": 5, "94762-2": 5}
RESULT_WEIGHTS = {"NEGATIF": 88, "POSITIF": 10, "INDETERMINE": 2}
# INSEE codes of a few countries of birth (NIR positions 8-10 after "99").
BIRTH_COUNTRIES = ("109", "127", "131", "134", "139", "350", "351", "352")
ILE_DE_FRANCE = ("75", "77", "78", "91", "92", "93", "94", "95")
EMAIL_DOMAINS = ("example.fr", "example.com", "example.net", "example.org")


def nir_key(first13: str) -> str:
    """The NIR key: 97 - (first 13 characters mod 97), Corsica 2A → 19 and 2B → 18 (CNAM rule)."""
    digits = first13.replace("2A", "19").replace("2B", "18")
    return f"{97 - int(digits) % 97:02d}"


def luhn_complete(partial: str) -> str:
    """``partial`` plus the digit that makes the whole pass a Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return partial + str((10 - total % 10) % 10)


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in folded.lower() if ch.isalnum())


def _long(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({n for n in names if sum(ch.isalpha() for ch in n) >= MIN_NAME_LETTERS and " " not in n}))


@dataclass(frozen=True, slots=True)
class _Prescriber:
    rpps: str
    name: str
    phone: str


class Generator:
    """Deterministic synthetic results for a given seed and "today"."""

    def __init__(self, seed: int = 1, today: date | None = None, window_days: int = 30) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - seeded fake data, never keys
        self.today = today or date(2026, 1, 15)
        self.window_days = window_days
        faker = Faker("fr_FR")
        faker.seed_instance(seed)
        self.male = _long(PersonProvider.first_names_male)
        self.female = _long(PersonProvider.first_names_female)
        self.last = tuple(n.upper() for n in _long(PersonProvider.last_names))
        self.streets = tuple(sorted({faker.street_name() for _ in range(3000)}))
        regions = department_regions()
        all_communes = communes()
        routable = [c for c in all_communes if department_of(c.insee) in regions]
        self.unroutable = tuple(c for c in all_communes if department_of(c.insee) not in regions)
        self.communes = tuple(routable)
        self.idf = tuple(c for c in routable if department_of(c.insee) in ILE_DE_FRANCE)
        self.birthplaces = tuple(sorted({c.insee for c in routable}))
        self.labs = tuple(self._finess() for _ in range(40))
        self.prescribers = tuple(self._prescriber() for _ in range(2000))
        self.loinc = tuple(LOINC_WEIGHTS)
        self.loinc_w = tuple(LOINC_WEIGHTS.values())
        self.results = tuple(RESULT_WEIGHTS)
        self.results_w = tuple(RESULT_WEIGHTS.values())

    # ------------------------------------------------------------ parts

    def _digits(self, n: int) -> str:
        return f"{self.rng.randrange(10**n):0{n}d}"

    def _finess(self) -> str:
        commune = self.rng.choice(self.idf if self.rng.random() < 0.5 else self.communes)
        dep = department_of(commune.insee)
        prefix = dep if dep.isascii() and dep.isdigit() and len(dep) == 2 else "75"
        return luhn_complete(prefix + self._digits(6))

    def mobile(self) -> str:
        """06 + 8 digits, or 073-079 + 7 digits (the mobile ranges of the national numbering plan)."""
        if self.rng.random() < 0.7:
            return "06" + self._digits(8)
        return "07" + self.rng.choice("3456789") + self._digits(7)

    def landline(self) -> str:
        return "0" + self.rng.choice("12345") + self._digits(8)

    def _prescriber(self) -> _Prescriber:
        first = self.rng.choice(self.male + self.female)
        last = self.rng.choice(self.last)
        return _Prescriber(rpps=luhn_complete("10" + self._digits(8)), name=f"{first} {last}", phone=self.landline())

    def _residence(self) -> Commune:
        roll = self.rng.random()
        if roll < 0.001 and self.unroutable:
            return self.rng.choice(self.unroutable)  # a residence no ARS table covers: for review
        if roll < 0.4:
            return self.rng.choice(self.idf)
        return self.rng.choice(self.communes)

    def _nir(self, sex: str, birth: date) -> str:
        if self.rng.random() < 0.05:
            place = "99" + self.rng.choice(BIRTH_COUNTRIES)
        else:
            place = self.rng.choice(self.birthplaces)
        first13 = sex + f"{birth.year % 100:02d}{birth.month:02d}" + place + f"{self.rng.randint(1, 999):03d}"
        return first13 + nir_key(first13)

    # ------------------------------------------------------------ records

    def record(self) -> dict[str, str]:
        rng = self.rng
        female = rng.random() < 0.52
        first = rng.choice(self.female if female else self.male)
        last = rng.choice(self.last)
        birth = date(1925, 1, 1) + timedelta(days=rng.randrange(35000))
        sampled = self.today - timedelta(days=rng.randint(1, self.window_days))
        validated = min(sampled + timedelta(days=rng.choice((0, 0, 1, 1, 2))), self.today)
        home = self._residence()
        doctor = rng.choice(self.prescribers)
        phone = self.mobile() if rng.random() < 0.85 else self.landline()
        return {
            "nir": self._nir("2" if female else "1", birth),
            "nom": last,
            "prenom": first,
            "date_naissance": birth.isoformat(),
            "sexe": "F" if female else "M",
            "adresse": f"{rng.randint(1, 180)} {rng.choice(self.streets)}",
            "code_postal": home.postal_code,
            "code_commune_insee": home.insee,
            "commune": home.name,
            "telephone": phone,
            "email": f"{_ascii(first)}.{_ascii(last)}{rng.randint(1, 999)}@{rng.choice(EMAIL_DOMAINS)}",
            "prescripteur_rpps": doctor.rpps,
            "prescripteur_nom": doctor.name,
            "prescripteur_telephone": doctor.phone,
            "laboratoire_finess": rng.choice(self.labs),
            "date_prelevement": sampled.isoformat(),
            "date_validation": validated.isoformat(),
            "code_loinc": rng.choices(self.loinc, self.loinc_w)[0],
            "resultat": rng.choices(self.results, self.results_w)[0],
        }

    def records(self, count: int) -> Iterator[dict[str, str]]:
        for _ in range(count):
            yield self.record()


# ------------------------------------------------------------------ defects (for tests: what must be rejected)


def _with_key(first13: str) -> str:
    return first13 + nir_key(first13)


DEFECTS: dict[str, tuple[str, Reason, Callable[[dict[str, str], random.Random], None]]] = {
    "nir-key": (
        "nir",
        Reason.NIR_KEY,
        lambda r, g: r.__setitem__("nir", r["nir"][:13] + f"{(int(r['nir'][13:]) + 1) % 100:02d}"),
    ),
    "nir-sex": ("nir", Reason.NIR_SEX, lambda r, g: r.__setitem__("nir", _with_key("3" + r["nir"][1:13]))),
    "impossible-date": (
        "date_prelevement",
        Reason.DATE_UNREAL,
        lambda r, g: r.__setitem__("date_prelevement", r["date_prelevement"][:5] + "02-30"),
    ),
    "sample-before-birth": (
        "date_prelevement",
        Reason.DATE_ORDER_BIRTH,
        lambda r, g: (
            r.__setitem__("date_naissance", r["date_prelevement"][:4] + "-12-31")
            if r["date_prelevement"][5:] != "12-31"
            else None
        ),
    ),
    "validated-before-sample": (
        "date_validation",
        Reason.DATE_ORDER_VALIDATION,
        lambda r, g: r.__setitem__("date_validation", "2000-01-01"),
    ),
    "future-date": ("date_validation", Reason.DATE_FUTURE, lambda r, g: r.__setitem__("date_validation", "2099-01-01")),
    "unknown-loinc": ("code_loinc", Reason.LOINC, lambda r, g: r.__setitem__("code_loinc", "12345-6")),
    "uncoded-result": ("resultat", Reason.RESULT, lambda r, g: r.__setitem__("resultat", "PEUT-ETRE")),
    "short-rpps": (
        "prescripteur_rpps",
        Reason.RPPS,
        lambda r, g: r.__setitem__("prescripteur_rpps", r["prescripteur_rpps"][:10]),
    ),
    "short-finess": (
        "laboratoire_finess",
        Reason.FINESS,
        lambda r, g: r.__setitem__("laboratoire_finess", r["laboratoire_finess"][:8]),
    ),
    "unknown-commune": (
        "code_commune_insee",
        Reason.COMMUNE_UNKNOWN,
        lambda r, g: r.__setitem__("code_commune_insee", "99999"),
    ),
    "control-character": (
        "nom",
        Reason.CONTROL,
        lambda r, g: r.__setitem__("nom", r["nom"][:3] + "\x07" + r["nom"][3:]),
    ),
    "over-long": ("adresse", Reason.TOO_LONG, lambda r, g: r.__setitem__("adresse", "rue " + "A" * 400)),
    "bad-email": ("email", Reason.EMAIL, lambda r, g: r.__setitem__("email", "at-nowhere")),
    "bad-phone": ("telephone", Reason.PHONE, lambda r, g: r.__setitem__("telephone", "06123")),
    "missing-name": ("nom", Reason.REQUIRED, lambda r, g: r.__setitem__("nom", "")),
    "formula-name": (
        "prenom",
        Reason.FORMULA,
        lambda r, g: r.__setitem__("prenom", g.choice("=+-@") + 'HYPERLINK("http://x.example")'),
    ),
}


def records_with_defects(
    count: int, *, seed: int, today: date | None, rate: float
) -> Iterator[tuple[dict[str, str], tuple[str, str, str] | None]]:
    """Synthetic records; a fraction ``rate`` carries one defect: (defect name, field, expected reason)."""
    gen = Generator(seed=seed, today=today)
    chooser = random.Random(seed + 1)  # noqa: S311 - seeded fake data, never keys
    names = sorted(DEFECTS)
    for rec in gen.records(count):
        defect = None
        if rate and chooser.random() < rate:
            name = chooser.choice(names)
            field, reason, apply = DEFECTS[name]
            before = dict(rec)
            apply(rec, chooser)
            if rec != before:
                defect = (name, field, reason.value)
        yield rec, defect


# ------------------------------------------------------------------ writers


def write_csv(out: TextIO, count: int, *, seed: int = 1, today: date | None = None, delimiter: str = ",") -> int:
    """Write ``count`` synthetic records in the lab-results CSV template; return how many."""
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(COLUMNS)
    gen = Generator(seed=seed, today=today)
    written = 0
    for rec in gen.records(count):
        writer.writerow([rec[c] for c in COLUMNS])
        written += 1
    return written


def write_csv_file(path: Path, count: int, *, seed: int = 1, today: date | None = None) -> int:
    with path.open("w", encoding="utf-8", newline="") as fh:
        return write_csv(fh, count, seed=seed, today=today)


FORMATS = ("csv", "hl7", "fhir")


def write_file(
    path: Path, count: int, *, fmt: str = "csv", seed: int = 1, today: date | None = None, defects: float = 0.0
) -> tuple[int, int]:
    """Write ``count`` synthetic records as CSV, HL7 v2 (one ORU^R01 per record) or FHIR (NDJSON of Bundles).

    With ``defects`` > 0, writes ``PATH.defects.csv`` too: ``record,defect,field,reason`` for every injected defect.
    Returns (records, defects)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    from labrelay.batch.fhir import bundle_for  # noqa: PLC0415 - the writers live with their readers
    from labrelay.batch.hl7 import record_to_message  # noqa: PLC0415 - the writers live with their readers

    sidecar: list[tuple[int, str, str, str]] = []
    stamp = (today or date(2026, 1, 15)).strftime("%Y%m%d") + "120000"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        if writer is not None:
            writer.writerow(COLUMNS)
        for number, (rec, defect) in enumerate(
            records_with_defects(count, seed=seed, today=today, rate=defects), start=1
        ):
            if defect is not None:
                sidecar.append((number, *defect))
            if writer is not None:
                writer.writerow([rec[c] for c in COLUMNS])
            elif fmt == "hl7":
                out.write(record_to_message(rec, f"MSG{number:09d}", stamp) + "\r")
            else:
                ident = str(uuid.UUID(int=(seed << 64) + number))
                out.write(json.dumps(bundle_for(rec, ident), ensure_ascii=False, separators=(",", ":")) + "\n")
    if defects:
        with Path(f"{path}.defects.csv").open("w", encoding="utf-8", newline="") as fh:
            side = csv.writer(fh, lineterminator="\n")
            side.writerow(["record", "defect", "field", "reason"])
            side.writerows(sidecar)
    return count, len(sidecar)
