"""FHIR R4 Bundles of lab results, to and from canonical records.

Input: a file of Bundles, one per line (NDJSON), or one Bundle (JSON, up to ``MAX_JSON`` bytes). Each Observation
with a LOINC code is one record; the resources it references give the rest:

| field | FHIR R4 (FR Core where it says) |
|---|---|
| nir | Patient.identifier with system ``urn:oid:1.2.250.1.213.1.4.8`` (INS-NIR) or ``.10`` (INS-NIR test) |
| nom, prenom | Patient.name (official, else first): family, given[0] |
| date_naissance, sexe | Patient.birthDate, Patient.gender (male → M, female → F) |
| adresse, commune, code_postal | Patient.address[0].line[0], .city, .postalCode |
| code_commune_insee | Patient.address[0] extension ``fr-core-address-insee-code`` (valueCoding.code) |
| telephone, email | Patient.telecom (system phone, email) |
| prescripteur_* | the Practitioner that the ServiceRequest in Observation.basedOn names as requester |
| laboratoire_finess | Organization.identifier (system ``https://finess.esante.gouv.fr``) in Observation.performer |
| date_prelevement | Specimen.collection.collectedDateTime (else Observation.effectiveDateTime) |
| date_validation | DiagnosticReport.issued for the report listing the Observation (else Observation.issued) |
| code_loinc, resultat | Observation.code (LOINC), Observation.valueCodeableConcept (SNOMED CT code, else its text) |

We read the elements we need from JSON, checking their types, instead of validating whole resources with a FHIR
model library: see docs/decisions/0007-fhir-by-hand.md. Output (``bundle_for``) writes the same shapes; a
recipient's Bundle carries only the fields the policy gives it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from labrelay.batch.csv_reader import Batch
from labrelay.batch.items import Overlong, StructureError, bounded_lines, numbered_batches
from labrelay.domain.records import FIELDS, RESULT_SNOMED, Result
from labrelay.errors import NotResults

MAX_JSON = 64 * 1024 * 1024
MAX_LINE = 1024 * 1024
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"
INS_NIR_TEST = "urn:oid:1.2.250.1.213.1.4.10"
RPPS = "https://rpps.esante.gouv.fr"
FINESS = "https://finess.esante.gouv.fr"
INSEE_EXT = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code"
COMMUNE_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune"
PSEUDONYM_SYSTEM = "urn:labrelay:pseudonym:hmac-sha256"
AGE_EXT = "urn:labrelay:fhir:age-at-sampling"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


# ------------------------------------------------------------------ writing


def bundle_for(rec: Mapping[str, Any], ident: str) -> dict[str, Any]:
    """A collection Bundle for one record (``ident``: a UUID naming it). Fields absent from ``rec`` are left out."""
    namespace = uuid.UUID(ident)

    def ref(kind: str) -> str:
        return f"urn:uuid:{uuid.uuid5(namespace, kind)}"

    patient = ref("pat")
    entries = [_entry(patient, _patient(rec))]
    observation = _observation(rec, patient)
    if _has(rec, "date_prelevement"):
        observation["effectiveDateTime"] = str(rec["date_prelevement"])
        entries.append(_entry(ref("spe"), _specimen(rec, patient)))
        observation["specimen"] = {"reference": ref("spe")}
    if _has(rec, "laboratoire_finess"):
        organization = {
            "resourceType": "Organization",
            "identifier": [{"system": FINESS, "value": rec["laboratoire_finess"]}],
        }
        entries.append(_entry(ref("org"), organization))
        observation["performer"] = [{"reference": ref("org")}]
    if _has(rec, "prescripteur_rpps") or _has(rec, "prescripteur_nom"):
        entries.append(_entry(ref("pra"), _practitioner(rec)))
        entries.append(_entry(ref("req"), _service_request(rec, patient, ref("pra"))))
        observation["basedOn"] = [{"reference": ref("req")}]
    entries.append(_entry(ref("obs"), observation))
    if _has(rec, "date_validation"):
        entries.append(_entry(ref("rep"), _report(rec, patient, ref("obs"))))
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _has(rec: Mapping[str, Any], name: str) -> bool:
    return rec.get(name) not in (None, "")


def _entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": full_url, "resource": resource}


def _patient(rec: Mapping[str, Any]) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient"}
    if _has(rec, "nir"):
        patient["identifier"] = [{"system": INS_NIR_TEST, "value": rec["nir"]}]
    if _has(rec, "pseudonyme"):
        patient["identifier"] = [{"system": PSEUDONYM_SYSTEM, "value": rec["pseudonyme"]}]
    if _has(rec, "nom") or _has(rec, "prenom"):
        name: dict[str, Any] = {"use": "official"}
        if _has(rec, "nom"):
            name["family"] = rec["nom"]
        if _has(rec, "prenom"):
            name["given"] = [rec["prenom"]]
        patient["name"] = [name]
    if _has(rec, "sexe"):
        patient["gender"] = {"M": "male", "F": "female"}.get(str(rec["sexe"]), "unknown")
    if _has(rec, "date_naissance"):
        patient["birthDate"] = str(rec["date_naissance"])
    if _has(rec, "age"):
        patient["extension"] = [{"url": AGE_EXT, "valueInteger": int(rec["age"])}]
    address: dict[str, Any] = {}
    if _has(rec, "adresse"):
        address["line"] = [rec["adresse"]]
    if _has(rec, "commune"):
        address["city"] = rec["commune"]
    if _has(rec, "code_postal"):
        address["postalCode"] = rec["code_postal"]
    if _has(rec, "code_commune_insee"):
        address["extension"] = [
            {"url": INSEE_EXT, "valueCoding": {"system": COMMUNE_SYSTEM, "code": rec["code_commune_insee"]}}
        ]
    if address:
        patient["address"] = [address]
    telecom = [{"system": "phone", "value": rec["telephone"]}] if _has(rec, "telephone") else []
    telecom += [{"system": "email", "value": rec["email"]}] if _has(rec, "email") else []
    if telecom:
        patient["telecom"] = telecom
    return patient


def _observation(rec: Mapping[str, Any], patient: str) -> dict[str, Any]:
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": rec.get("code_loinc", "")}]},
        "subject": {"reference": patient},
    }
    result = str(rec.get("resultat", ""))
    if result in (Result.POSITIVE, Result.NEGATIVE):
        code, display = RESULT_SNOMED[Result(result)]
        observation["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": code, "display": display}]}
    elif result:
        observation["valueCodeableConcept"] = {"text": result}
        observation["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": "IND"}]}]
    return observation


def _specimen(rec: Mapping[str, Any], patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Specimen",
        "subject": {"reference": patient},
        "type": {"coding": [{"system": SNOMED, "code": "258500001"}]},
        "collection": {"collectedDateTime": str(rec["date_prelevement"])},
    }


def _practitioner(rec: Mapping[str, Any]) -> dict[str, Any]:
    practitioner: dict[str, Any] = {"resourceType": "Practitioner"}
    if _has(rec, "prescripteur_rpps"):
        practitioner["identifier"] = [{"system": RPPS, "value": rec["prescripteur_rpps"]}]
    if _has(rec, "prescripteur_nom"):
        given, _, family = str(rec["prescripteur_nom"]).partition(" ")
        practitioner["name"] = [{"family": family, "given": [given]}]
    if _has(rec, "prescripteur_telephone"):
        practitioner["telecom"] = [{"system": "phone", "value": rec["prescripteur_telephone"]}]
    return practitioner


def _service_request(rec: Mapping[str, Any], patient: str, practitioner: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": patient},
        "requester": {"reference": practitioner},
        "code": {"coding": [{"system": LOINC, "code": rec.get("code_loinc", "")}]},
    }


def _report(rec: Mapping[str, Any], patient: str, observation: str) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "11502-2"}]},
        "subject": {"reference": patient},
        "issued": f"{rec['date_validation']}T12:00:00+00:00",
        "result": [{"reference": observation}],
    }


# ------------------------------------------------------------------ reading


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _coding(concept: Any, system: str) -> str:
    for coding in _list(_dict(concept).get("coding")):
        if _dict(coding).get("system") == system:
            return _str(_dict(coding).get("code"))
    return ""


def _identifier(resource: Mapping[str, Any], *systems: str) -> str:
    for ident in _list(resource.get("identifier")):
        if _dict(ident).get("system") in systems:
            return _str(_dict(ident).get("value"))
    return ""


def _telecom(resource: Mapping[str, Any], system: str) -> str:
    for point in _list(resource.get("telecom")):
        if _dict(point).get("system") == system:
            return _str(_dict(point).get("value"))
    return ""


def _day(value: Any) -> str:
    text = _str(value)
    return text[:10] if len(text) >= 10 else text


def records_of_bundle(bundle: Any) -> list[dict[str, str]]:
    """The canonical records of a Bundle: one per Observation with a LOINC code."""
    if _dict(bundle).get("resourceType") != "Bundle":
        raise StructureError("not a FHIR Bundle")
    index: dict[str, dict[str, Any]] = {}
    observations: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    for entry in _list(bundle.get("entry")):
        resource = _dict(_dict(entry).get("resource"))
        kind = _str(resource.get("resourceType"))
        if not kind:
            raise StructureError("an entry without a resource")
        if isinstance(entry.get("fullUrl"), str):
            index[entry["fullUrl"]] = resource
        if isinstance(resource.get("id"), str):
            index[f"{kind}/{resource['id']}"] = resource
        if kind == "Observation" and _coding(resource.get("code"), LOINC):
            observations.append(resource)
        elif kind == "DiagnosticReport":
            reports.append(resource)
    if not observations:
        raise StructureError("no Observation with a LOINC code")

    def follow(reference: Any) -> dict[str, Any]:
        return index.get(_str(_dict(reference).get("reference")), {})

    records = []
    for obs in observations:
        rec = dict.fromkeys(FIELDS, "")
        patient = follow(obs.get("subject"))
        rec["nir"] = _identifier(patient, INS_NIR, INS_NIR_TEST)
        names = _list(patient.get("name"))
        name = next((_dict(n) for n in names if _dict(n).get("use") == "official"), _dict(names[0]) if names else {})
        rec["nom"], rec["prenom"] = _str(name.get("family")), _str(next(iter(_list(name.get("given"))), ""))
        rec["date_naissance"] = _str(patient.get("birthDate"))
        rec["sexe"] = {"male": "M", "female": "F"}.get(_str(patient.get("gender")), _str(patient.get("gender")))
        address = _dict(next(iter(_list(patient.get("address"))), {}))
        rec["adresse"] = _str(next(iter(_list(address.get("line"))), ""))
        rec["commune"], rec["code_postal"] = _str(address.get("city")), _str(address.get("postalCode"))
        for ext in _list(address.get("extension")):
            if _dict(ext).get("url") == INSEE_EXT:
                rec["code_commune_insee"] = _str(_dict(_dict(ext).get("valueCoding")).get("code"))
        rec["telephone"], rec["email"] = _telecom(patient, "phone"), _telecom(patient, "email")
        for based in _list(obs.get("basedOn")):
            practitioner = follow(follow(based).get("requester"))
            if practitioner:
                rec["prescripteur_rpps"] = _identifier(practitioner, RPPS)
                pname = _dict(next(iter(_list(practitioner.get("name"))), {}))
                given = _str(next(iter(_list(pname.get("given"))), ""))
                rec["prescripteur_nom"] = " ".join(p for p in (given, _str(pname.get("family"))) if p)
                rec["prescripteur_telephone"] = _telecom(practitioner, "phone")
        for performer in _list(obs.get("performer")):
            finess = _identifier(follow(performer), FINESS)
            if finess:
                rec["laboratoire_finess"] = finess
        specimen = follow(obs.get("specimen"))
        rec["date_prelevement"] = _day(
            _dict(specimen.get("collection")).get("collectedDateTime") or obs.get("effectiveDateTime")
        )
        issued = obs.get("issued")
        for report in reports:
            if any(follow(r) is obs for r in _list(report.get("result"))):
                issued = report.get("issued") or issued
        rec["date_validation"] = _day(issued)
        rec["code_loinc"] = _coding(obs.get("code"), LOINC)
        value = _dict(obs.get("valueCodeableConcept"))
        rec["resultat"] = _coding(value, SNOMED) or _str(value.get("text"))
        records.append(rec)
    return records


def _bundles(path: Path) -> Iterator[Any]:
    """Bundles from NDJSON (one per line) or from one JSON document; a broken line is one StructureError."""
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
    first_line = head.split(b"\n", 1)[0].strip().lstrip(b"\xef\xbb\xbf")
    one_document = not first_line.endswith(b"}") or b"\n" not in head.strip()
    if one_document and path.stat().st_size > MAX_JSON:
        raise NotResults(f"{path} is one JSON document over {MAX_JSON // (1 << 20)} MiB: send Bundles as NDJSON")
    if one_document:
        try:
            yield json.loads(path.read_bytes().decode("utf-8-sig"))
        except (ValueError, RecursionError) as exc:
            yield StructureError(f"not JSON ({type(exc).__name__})")
        return
    with path.open("rb") as fh:
        for line in bounded_lines(fh, MAX_LINE, cr=False):
            if isinstance(line, Overlong):
                yield StructureError(f"line longer than {MAX_LINE} bytes")
            elif line.strip():
                try:
                    yield json.loads(line.decode("utf-8-sig"))
                except (ValueError, RecursionError) as exc:
                    yield StructureError(f"not JSON ({type(exc).__name__})")


class FhirReader:
    """Batches of canonical records from FHIR Bundles: record number = the n-th result (or broken Bundle)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf").lstrip()
        if not head.startswith(b"{"):
            raise NotResults(f"{path} is not FHIR JSON", hint="a FHIR R4 Bundle per line (NDJSON), or one Bundle")

    def batches(self) -> Iterator[Batch]:
        return numbered_batches(_records(bundle) for bundle in _bundles(self.path))


def _records(bundle: Any) -> list[dict[str, str]] | StructureError:
    if isinstance(bundle, StructureError):
        return bundle
    try:
        return records_of_bundle(bundle)
    except StructureError as exc:
        return exc
