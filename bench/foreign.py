"""A second, independent generator of lab-results CSV: the template as another lab system exports it.

The project's generator (``labrelay.synthetic.generator``) writes the template as labrelay documents it: UTF-8,
``,``, LF, the template's column order, canonical values. Benchmarks measured only on it would flatter whatever
path that shape takes. This one shares none of its code and writes the same columns with other value shapes:

- Windows-1252, ``;`` separator, CRLF line ends, header names in upper case and another column order, plus a
  column the template does not know (``ID_INTERNE``, ignored);
- every text field quoted (``"DUPONT"``), as a spreadsheet's "quote all text cells" export does, an embedded quote
  doubled; some addresses hold a ``;`` or a right single quotation mark (Windows-1252 0x92);
- values to normalise: lower-case sex codes (``h``, ``f``, ``1``, ``2``), Corsican NIRs as ``2a``/``2b``, dates as
  ``DD/MM/YYYY``, phone numbers with spaces or dots or as ``+33 …``, results in lower case with accents
  (``négatif``) or as SNOMED CT codes, values padded with spaces;
- about 0.5% of records broken in ways the rules must catch (a wrong NIR key, an unknown commune, a date in the
  future, a malformed phone number, an empty name, a formula-like name, a record with a field missing or one too
  many).

Names come from short lists written here; communes from La Poste's base (the reference data validation checks
against). Seeded: the same seed gives the same file. Nothing in it is a real person's data.
"""

from __future__ import annotations

import os
import random  # noqa: TID251 - seeded, reproducible fake data, as in labrelay.synthetic
from datetime import date, timedelta
from pathlib import Path

from labrelay.domain.records import DEFAULT_LOINC
from labrelay.refdata import communes

SURNAMES = (
    "Lefèvre", "Gaillard", "Bérenger", "Mercier", "Rousseau", "Fontaine", "Chevalier", "Lemaître", "Guérin",
    "Boucher", "Faucheux", "Noël", "Dubœuf", "Hébert", "Marchand", "Perrault", "Vasseur", "Thibault", "Lacroix",
    "Bréval", "Courtois", "Deschamps", "Étienne", "Garnier", "Jourdain", "Lévêque", "Maréchal", "Pelletier",
    "Rivière", "Sénéchal", "Tessier", "Valentin", "d\u2019Aubign\u00e9", "Le Goff", "N\u2019Diaye",
)  # fmt: skip
FIRST_NAMES = (
    "Hélène", "Jérôme", "Cécile", "François", "Anaïs", "Loïc", "Zoé", "Noémie", "Gaëlle", "Benoît", "Thérèse",
    "Mathéo", "Léa", "Raphaël", "Inès", "Maëlys", "Clément", "Élodie", "Joël", "Agnès", "Bastien", "Camille",
    "Danièle", "Frédéric", "Géraldine", "Ingrid", "Jean-Loup", "Marie-Ange", "Océane", "Pascal",
)  # fmt: skip
STREETS = ("rue", "avenue", "boulevard", "chemin", "allée", "impasse", "place")
HEADER = (
    "ID_INTERNE", "CODE_LOINC", "RESULTAT", "DATE_PRELEVEMENT", "DATE_VALIDATION", "NOM", "PRENOM", "SEXE",
    "DATE_NAISSANCE", "NIR", "ADRESSE", "CODE_POSTAL", "COMMUNE", "CODE_COMMUNE_INSEE", "TELEPHONE", "EMAIL",
    "PRESCRIPTEUR_NOM", "PRESCRIPTEUR_RPPS", "PRESCRIPTEUR_TELEPHONE", "LABORATOIRE_FINESS",
)  # fmt: skip
TEXT = frozenset({"NOM", "PRENOM", "ADRESSE", "COMMUNE", "EMAIL", "PRESCRIPTEUR_NOM"})
DEFECTS = ("nir_key", "commune", "future", "phone", "empty_name", "formula", "short", "long")


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class Foreign:
    def __init__(self, seed: int, today: date) -> None:
        self.rng = random.Random(seed)
        self.today = today
        self.places = [c for c in communes() if c.insee[:2] not in ("98",)]

    def _nir(self, sex: str, birth: date, insee: str) -> str:
        dept, commune = insee[:2], insee[2:]
        if insee.startswith("97"):
            dept, commune = insee[:3], insee[3:]
            body = f"{sex}{birth.year % 100:02d}{birth.month:02d}{dept}{commune}{self.rng.randrange(1000):03d}"
        elif self.rng.random() < 0.03:
            body = f"{sex}{birth.year % 100:02d}{birth.month:02d}99{self.rng.randrange(100, 500):03d}"
            body += f"{self.rng.randrange(1000):03d}"
        else:
            body = f"{sex}{birth.year % 100:02d}{birth.month:02d}{dept}{commune}{self.rng.randrange(1000):03d}"
        number = int(body.upper().replace("2A", "19").replace("2B", "18"))
        return body.lower() + f"{97 - number % 97:02d}"

    def _phone(self) -> str:
        digits = f"0{self.rng.choice('167')}{self.rng.randrange(10**8):08d}"
        shape = self.rng.random()
        if shape < 0.4:
            return " ".join(digits[i : i + 2] for i in range(0, 10, 2))
        if shape < 0.6:
            return ".".join(digits[i : i + 2] for i in range(0, 10, 2))
        if shape < 0.75:
            return "+33 " + digits[1] + " " + " ".join(digits[i : i + 2] for i in range(2, 10, 2))
        return digits

    def _email(self, first: str, surname: str) -> str:
        local = f"{first[:3]}.{surname[:4]}{self.rng.randrange(1000)}"
        return f"{local}@exemple.test".replace(" ", "").replace("\u2019", "")

    def _date(self, day: date) -> str:
        return day.strftime("%d/%m/%Y") if self.rng.random() < 0.8 else day.isoformat()

    def record(self) -> list[str]:
        rng = self.rng
        place = rng.choice(self.places)
        male = rng.random() < 0.5
        birth = date(1925, 1, 1) + timedelta(days=rng.randrange(36000))
        sampled = self.today - timedelta(days=rng.randrange(1, 40))
        validated = sampled + timedelta(days=rng.randrange(0, 2))
        validated = min(validated, self.today)
        surname, first = rng.choice(SURNAMES), rng.choice(FIRST_NAMES)
        street = f"{rng.randrange(1, 300)} {rng.choice(STREETS)} {rng.choice(SURNAMES)}"
        if rng.random() < 0.05:
            street += " ; bât. B"
        if rng.random() < 0.02:
            street += ' dit "le haut"'
        result = rng.choices(("négatif", "positif", "indéterminé", "260373001", "260415000"), (70, 8, 2, 15, 5))[0]
        values = {
            "ID_INTERNE": f"X{rng.randrange(10**9):09d}",
            "CODE_LOINC": rng.choice(DEFAULT_LOINC),
            "RESULTAT": result,
            "DATE_PRELEVEMENT": self._date(sampled),
            "DATE_VALIDATION": self._date(validated),
            "NOM": surname.upper() if rng.random() < 0.5 else surname,
            "PRENOM": first,
            "SEXE": rng.choice(("h", "1", "m")) if male else rng.choice(("f", "2")),
            "DATE_NAISSANCE": self._date(birth),
            "NIR": self._nir("1" if male else "2", birth, place.insee),
            "ADRESSE": street,
            "CODE_POSTAL": place.postal_code,
            "COMMUNE": place.name.title(),
            "CODE_COMMUNE_INSEE": place.insee.lower(),
            "TELEPHONE": self._phone() if rng.random() < 0.9 else "",
            "EMAIL": self._email(first, surname) if rng.random() < 0.7 else "",
            "PRESCRIPTEUR_NOM": f"Dr {rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES).upper()}",
            "PRESCRIPTEUR_RPPS": f"1{rng.randrange(10**10):010d}",
            "PRESCRIPTEUR_TELEPHONE": self._phone(),
            "LABORATOIRE_FINESS": f"{rng.choice((75, 13, 69, 33, 59))}{rng.randrange(10**7):07d}",
        }
        if rng.random() < 0.1:
            values["CODE_COMMUNE_INSEE"] = f" {values['CODE_COMMUNE_INSEE']} "
        if rng.random() < 0.005:
            self._break(values, rng.choice(DEFECTS))
        row = [_quoted(values[c]) if c in TEXT else values[c] for c in HEADER]
        if values.get("_shape") == "short":
            row.pop()
        elif values.get("_shape") == "long":
            row.append("")
        return row

    def _break(self, values: dict[str, str], defect: str) -> None:
        if defect == "nir_key":
            nir = values["NIR"]
            values["NIR"] = nir[:13] + f"{(int(nir[13:]) % 96) + 1:02d}"
        elif defect == "commune":
            values["CODE_COMMUNE_INSEE"] = "99999"
        elif defect == "future":
            values["DATE_PRELEVEMENT"] = (self.today + timedelta(days=3)).strftime("%d/%m/%Y")
        elif defect == "phone":
            values["TELEPHONE"] = "12 34"
        elif defect == "empty_name":
            values["NOM"] = ""
        elif defect == "formula":
            values["PRENOM"] = "=HYPERLINK(1)"
        else:
            values["_shape"] = defect


def write_foreign(path: Path, records: int, *, seed: int = 22, today: date = date(2026, 1, 15)) -> Path:
    """``records`` records into ``path`` (written under a temporary name, then renamed)."""
    gen = Foreign(seed, today)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="cp1252", newline="") as out:
        out.write(";".join(HEADER) + "\r\n")
        for _ in range(records):
            out.write(";".join(gen.record()) + "\r\n")
    tmp.replace(path)
    return path


def foreign_batch(records: int, work: Path) -> Path:
    """The cached foreign batch of ``records`` records under ``work``."""
    path = work / f"foreign-{records}.csv"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        write_foreign(path, records)
    return path
