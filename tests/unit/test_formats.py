"""CSV, HL7 v2 and FHIR: the same synthetic batch gives the same canonical records; each reader's structure errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from labrelay.batch.fhir import FhirReader, bundle_for, records_of_bundle
from labrelay.batch.hl7 import Hl7Reader, message_to_record, record_to_message
from labrelay.batch.pipeline import open_reader
from labrelay.synthetic.generator import write_file
from tests.support.records import TODAY, V, good


def validated(path: Path) -> tuple[pl.DataFrame, int]:
    _fmt, reader = open_reader(path)
    accepted, read = [], 0
    for batch in reader.batches():
        read += batch.read
        accepted.append(V.validate(batch.frame).accepted)
    return pl.concat(accepted).sort("_record"), read


def test_the_same_batch_in_three_formats_gives_the_same_canonical_records(tmp_path: Path) -> None:
    frames = {}
    for fmt in ("csv", "hl7", "fhir"):
        path = tmp_path / f"batch.{fmt}"
        write_file(path, 600, fmt=fmt, seed=11, today=TODAY)
        frames[fmt], read = validated(path)
        assert read == 600
    assert frames["csv"].height > 590
    assert frames["csv"].equals(frames["hl7"])
    assert frames["csv"].equals(frames["fhir"])


def test_hl7_escapes_round_trip() -> None:
    rec = good(nom="O'BRIEN|X&Y", prenom="Anne^Marie", adresse="12 rue ~ \\ x")
    back = message_to_record(record_to_message(rec, "M1", "20260115120000"))
    assert {k: back[k] for k in ("nom", "prenom", "adresse")} == {k: rec[k] for k in ("nom", "prenom", "adresse")}


def test_hl7_structure_errors_are_one_record_each(tmp_path: Path) -> None:
    ok = record_to_message(good(), "M1", "20260115120000")
    two_results = ok + "\rOBX|2|CWE|94309-2^x^LN||260415000^Not detected^SCT||||||F"
    not_oru = ok.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01")
    path = tmp_path / "m.hl7"
    header = "FHS|^~\\&|LAB\rBHS|^~\\&|LAB"
    path.write_text("\r".join([header, "PID|stray segment", ok, two_results, not_oru, ok]) + "\r", encoding="utf-8")
    batches = list(Hl7Reader(path).batches())
    read = sum(b.read for b in batches)
    rejected = [r for b in batches for r in b.rejected]
    accepted = sum(b.frame.height for b in batches)
    assert read == len(rejected) + accepted
    assert accepted == 2
    reasons = " ".join(r[2] for r in rejected)
    assert "outside a message" in reasons
    assert "exactly one OBX" in reasons
    assert "ORU^R01" in reasons


def test_fhir_single_document_and_ndjson(tmp_path: Path) -> None:
    bundle = bundle_for(good(), "5f0e5b1c-6c8e-4f3a-9a0e-0e5d4c3b2a10")
    single = tmp_path / "one.json"
    single.write_text(json.dumps(bundle, indent=2))
    assert validated(single)[0].height == 1
    ndjson = tmp_path / "many.ndjson"
    broken = '{"resourceType": "Patient"}'
    ndjson.write_text("\n".join([json.dumps(bundle), "{not json", broken, json.dumps(bundle)]) + "\n")
    batches = list(FhirReader(ndjson).batches())
    assert sum(b.read for b in batches) == 4
    assert sum(b.frame.height for b in batches) == 2
    assert sorted(r[0] for b in batches for r in b.rejected) == [2, 3]
    with pytest.raises(ValueError, match="no Observation"):
        records_of_bundle({"resourceType": "Bundle", "entry": []})
