"""HL7 v2.5 ORU^R01 lab results, as French labs send them (ANS profile), to and from canonical records.

One message carries one result. Where each canonical field lives:

| field | HL7 v2 |
|---|---|
| nir | PID-3 repetition whose type (CX.5) is ``INS`` (CX.1; authority ``ASIP-SANTE-INS-NIR``) |
| nom, prenom | PID-5.1, PID-5.2 |
| date_naissance, sexe | PID-7 (YYYYMMDD…), PID-8 |
| adresse, commune, code_postal, code_commune_insee | PID-11.1, .3, .5, .9 (county/parish: the INSEE code) |
| telephone, email | PID-13 repetitions: XTN.1 of a PH/CP one, XTN.4 of the Internet one |
| prescripteur_rpps, prescripteur_nom | ORC-12 (or OBR-16) XCN: idNatPs ``8``+RPPS, family, given |
| prescripteur_telephone | ORC-14.1 |
| laboratoire_finess | ORC-21 XON.10 (``1``+FINESS), else OBX-23.10 |
| date_prelevement | SPM-17, else OBR-7 |
| date_validation | OBR-22 |
| code_loinc, resultat | OBX-3.1 (LN), OBX-5.1 (SNOMED CT) or its text |

Parsing uses the ``hl7`` library; a message it cannot parse, or without exactly one OBX, is one rejected record.
Files may hold many messages (with or without FHS/BHS batch envelopes), segments separated by CR, LF or CRLF.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import hl7

from labrelay.batch.csv_reader import Batch
from labrelay.batch.items import Overlong, StructureError, bounded_lines, numbered_batches
from labrelay.domain.records import FIELDS, RESULT_SNOMED, Result
from labrelay.errors import NotResults

MAX_MESSAGE = 64 * 1024
INS_AUTHORITY = "ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO"  # the INS-NIR *test* OID: synthetic identities
PS_AUTHORITY = "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"
ST_AUTHORITY = "ASIP-SANTE-ST&1.2.250.1.71.4.2.2&ISO"
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\"))


def escape(value: str) -> str:
    for raw, esc in _ESCAPES:
        value = value.replace(raw, esc)
    return value


def _hl7_date(iso: str) -> str:
    return iso.replace("-", "") if len(iso) == 10 and iso[4] == "-" else iso


def _iso(value: str) -> str:
    digits = value[:8]
    if len(digits) == 8 and digits.isascii() and digits.isdigit():
        return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"
    return value  # validation says what is wrong with it


# ------------------------------------------------------------------ writing (synthetic inputs)


def record_to_message(rec: Mapping[str, str], control_id: str, timestamp: str) -> str:
    """One ORU^R01 message (segments joined by CR) for a canonical record."""
    e = {k: escape(v) for k, v in rec.items()}
    first, _, last = rec["prescripteur_nom"].partition(" ")
    prescriber = f"8{e['prescripteur_rpps']}^{escape(last)}^{escape(first)}^^^^^^{PS_AUTHORITY}^D^^^RPPS"
    result = rec["resultat"]
    if result in (Result.POSITIVE, Result.NEGATIVE):
        code, text = RESULT_SNOMED[Result(result)]
        value = f"{code}^{text}^SCT"
    else:
        value = f"{escape(result)}^{escape(result)}^L"
    telecom = "~".join(
        part
        for part in (
            f"{e['telephone']}^PRN^PH" if rec["telephone"] else "",
            f"^NET^Internet^{e['email']}" if rec["email"] else "",
        )
        if part
    )
    segments = [
        f"MSH|^~\\&|LABRELAY|{e['laboratoire_finess']}|SIDEP|ANS|{timestamp}||ORU^R01^ORU_R01|{control_id}|P|2.5"
        "|||||FRA|UNICODE UTF-8",
        f"PID|1||{e['nir']}^^^{INS_AUTHORITY}^INS||{e['nom']}^{e['prenom']}^^^^^L||{_hl7_date(rec['date_naissance'])}"
        f"|{e['sexe']}|||{e['adresse']}^^{e['commune']}^^{e['code_postal']}^FRA^H^^{e['code_commune_insee']}"
        f"||{telecom}",
        f"ORC|RE|||||||||||{prescriber}||{e['prescripteur_telephone']}^WPN^PH|||||||LABORATOIRE^^^^^{ST_AUTHORITY}"
        f"^FINEG^^^1{e['laboratoire_finess']}",
        f"OBR|1|||{e['code_loinc']}^SARS-CoV-2^LN|||{_hl7_date(rec['date_prelevement'])}|||||||||{prescriber}"
        f"||||||{_hl7_date(rec['date_validation'])}|||F",
        f"OBX|1|CWE|{e['code_loinc']}^SARS-CoV-2^LN||{value}||||||F",
        f"SPM|1|||258500001^Nasopharyngeal swab^SCT|||||||||||||{_hl7_date(rec['date_prelevement'])}",
    ]
    return "\r".join(segments)


# ------------------------------------------------------------------ reading


def _field(msg: hl7.Message, segment: str, field: int, component: int = 1, repeat: int = 1) -> str:
    try:
        seg = msg.segment(segment)
    except KeyError:
        return ""
    try:
        value = seg.extract_field(field_num=field, repeat_num=repeat, component_num=component)
    except (IndexError, KeyError, ValueError):
        return ""
    return str(value) if value else ""  # extract_field has already unescaped it


def _repeats(msg: hl7.Message, segment: str, field: int) -> int:
    try:
        value = msg.segment(segment)[field]
    except (KeyError, IndexError):
        return 0
    return len(value) if isinstance(value, hl7.Field) else 1


def message_to_record(text: str) -> dict[str, str]:
    """The canonical record a message carries; ``StructureError`` if it does not carry exactly one."""
    try:
        msg = hl7.parse(text)
        return _extract(msg)
    except StructureError:
        raise
    except Exception as exc:
        raise StructureError(f"not a readable HL7 v2 message ({type(exc).__name__})") from exc


def _extract(msg: hl7.Message) -> dict[str, str]:
    if _field(msg, "MSH", 9, 1) != "ORU" or _field(msg, "MSH", 9, 2) != "R01":
        raise StructureError("not an ORU^R01 message")
    try:
        obx_count = len(msg.segments("OBX"))
    except KeyError:
        obx_count = 0
    if obx_count != 1:
        raise StructureError(f"expected exactly one OBX result, found {obx_count}")
    rec = dict.fromkeys(FIELDS, "")
    for r in range(1, _repeats(msg, "PID", 3) + 1):
        if _field(msg, "PID", 3, 5, r) == "INS":
            rec["nir"] = _field(msg, "PID", 3, 1, r)
    rec["nom"], rec["prenom"] = _field(msg, "PID", 5, 1), _field(msg, "PID", 5, 2)
    rec["date_naissance"], rec["sexe"] = _iso(_field(msg, "PID", 7)), _field(msg, "PID", 8)
    rec["adresse"], rec["commune"] = _field(msg, "PID", 11, 1), _field(msg, "PID", 11, 3)
    rec["code_postal"], rec["code_commune_insee"] = _field(msg, "PID", 11, 5), _field(msg, "PID", 11, 9)
    for r in range(1, _repeats(msg, "PID", 13) + 1):
        kind = _field(msg, "PID", 13, 3, r)
        if kind in ("PH", "CP") and not rec["telephone"]:
            rec["telephone"] = _field(msg, "PID", 13, 1, r) or _field(msg, "PID", 13, 12, r)
        elif kind == "Internet" and not rec["email"]:
            rec["email"] = _field(msg, "PID", 13, 4, r)
    segment = "ORC" if _field(msg, "ORC", 12, 1) else "OBR"
    position = 12 if segment == "ORC" else 16
    ps_id = _field(msg, segment, position, 1)
    rec["prescripteur_rpps"] = ps_id[1:] if len(ps_id) == 12 and ps_id.startswith("8") else ps_id
    given, family = _field(msg, segment, position, 3), _field(msg, segment, position, 2)
    rec["prescripteur_nom"] = " ".join(part for part in (given, family) if part)
    rec["prescripteur_telephone"] = _field(msg, "ORC", 14, 1)
    finess = _field(msg, "ORC", 21, 10) or _field(msg, "OBX", 23, 10)
    rec["laboratoire_finess"] = finess[1:] if len(finess) == 10 and finess.startswith("1") else finess
    rec["date_prelevement"] = _iso(_field(msg, "SPM", 17) or _field(msg, "OBR", 7))
    rec["date_validation"] = _iso(_field(msg, "OBR", 22))
    rec["code_loinc"] = _field(msg, "OBX", 3, 1)
    rec["resultat"] = _field(msg, "OBX", 5, 1)
    return rec


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")  # MSH-18 8859/1 and 8859/15 decode alike for our fields


class _Message:
    """The segments of the message being read. One that grows past ``MAX_MESSAGE`` bytes keeps only its first
    segment (its MSH), and is refused whole."""

    def __init__(self) -> None:
        self.segments: list[str] = []
        self.size = 0
        self.oversized = False

    def add(self, segment: str, size: int) -> None:
        self.size += size
        if self.size > MAX_MESSAGE:
            self.oversized = True
            del self.segments[1:]
        if not self.oversized or not self.segments:
            self.segments.append(segment)

    def end(self) -> str | StructureError | None:
        if not self.segments:
            return None
        if self.oversized:
            return StructureError(f"message longer than {MAX_MESSAGE} bytes")
        return "\r".join(self.segments)


def iter_messages(path: Path) -> Iterator[str | StructureError]:
    """Each message's text (segments joined by CR), or the error that makes it unusable; bounded memory."""
    message = _Message()
    with path.open("rb") as fh:
        for raw in bounded_lines(fh, MAX_MESSAGE, cr=True):
            if isinstance(raw, Overlong):  # too long to hold: its message is too long (its head says which segment)
                line, size = _decode(raw.head).strip("\ufeff"), MAX_MESSAGE + 1
            else:
                line, size = _decode(raw).strip("\ufeff"), len(raw)
                if not line.strip():
                    continue
            kind = line[:3]
            if kind in ("FHS", "BHS", "BTS", "FTS"):
                continue
            if kind == "MSH":
                done = message.end()
                if done is not None:
                    yield done
                message = _Message()
            elif not message.segments:
                yield StructureError("segment outside a message (no MSH before it)")
                continue
            message.add(line, size)
    done = message.end()
    if done is not None:
        yield done


class Hl7Reader:
    """Batches of canonical records from an HL7 v2 file: record number = message number."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as fh:
            head = fh.read(4).lstrip(b"\xef\xbb\xbf")
        if head[:3] not in (b"MSH", b"FHS", b"BHS"):
            raise NotResults(f"{path} does not start with an HL7 v2 message (MSH, FHS or BHS)")

    def batches(self) -> Iterator[Batch]:
        return numbered_batches(_records(item) for item in iter_messages(self.path))


def _records(item: str | StructureError) -> list[dict[str, str]] | StructureError:
    if isinstance(item, StructureError):
        return item
    try:
        return [message_to_record(item)]
    except StructureError as exc:
        return exc
