"""Lab results through a real relay under the default policy: each recipient receives only what the policy gives it,
and every input record is accounted for (sent, rejected with its reason, or held for review)."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from labrelay.client.api import RelayClient
from labrelay.client.policy import default_policy_text
from labrelay.clock import SystemClock
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import SigningKey
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import Role
from labrelay.domain.policy import policy_payload
from labrelay.errors import IntegrityError, PermissionDenied, UntrustedEntry
from labrelay.refdata import department_of, department_regions
from labrelay.synthetic.generator import write_file
from tests.support.world import World, call_cli, manifest_payload

REGIONS = sorted(set(department_regions().values()))
IDENTIFIERS = ("nir", "nom", "prenom", "adresse", "telephone", "email")


@pytest.fixture
def national(world: World) -> World:
    """The world plus every recipient of the default policy: spf and an ARS per region."""
    world.add("spf", Role.RECIPIENT)
    for region in REGIONS:
        if f"ars-{region}" not in world.parties:
            world.add(f"ars-{region}", Role.RECIPIENT, region)
    return world


def received(world: World, name: str) -> Path | None:
    out = world.root / "out" / name
    result = call_cli("fetch", "--as", world.party_dir(name), "--server", world.url, "--out", out)
    assert result.code == 0, str(result)
    files = list(out.glob("*.csv"))
    return files[0] if files else None


@pytest.mark.threat("T14")
@pytest.mark.scaled("a routed send to twenty recipients sealed, stored in S3 and served by two replicas")
def test_each_recipient_receives_only_what_the_policy_gives_it(national: World, tmp_path: Path) -> None:
    source = tmp_path / "results.csv"
    write_file(source, 3000, seed=3, today=datetime.now(UTC).date(), defects=0.03)
    sent = call_cli("send", source, "--as", national.party_dir("lab-paris-01"), "--server", national.url)
    assert sent.code == 0, str(sent)
    lab_reports = national.party_dir("lab-paris-01") / "reports"
    [rejections] = list(lab_reports.glob("*.rejections.csv"))
    [review] = list(lab_reports.glob("*.review.csv"))

    inputs = pl.read_csv(source, infer_schema=False).with_row_index("record", offset=1)
    defects = pl.read_csv(f"{source}.defects.csv", schema_overrides={"record": pl.UInt32})
    report = pl.read_csv(rejections, schema_overrides={"record": pl.UInt32})
    held = pl.read_csv(review, infer_schema=False)

    # Every injected defect is rejected, on its field, for its reason; nothing else is.
    assert set(report["record"].to_list()) == set(defects["record"].to_list())
    expected = {(r["record"], r["field"], r["reason"]) for r in defects.iter_rows(named=True)}
    assert expected <= {(r["record"], r["field"], r["reason"]) for r in report.iter_rows(named=True)}

    outputs = {name: received(national, name) for name in ["cnam", "spf", *(f"ars-{r}" for r in REGIONS)]}
    frames = {n: pl.read_csv(p, infer_schema=False) for n, p in outputs.items() if p is not None}
    valid = inputs.filter(~pl.col("record").is_in(report["record"].implode()))
    # Held: only the regional share of residents of a territory no ARS covers; they still reach CNAM and SpF.
    routed = valid.filter(~pl.col("record").cast(pl.String).is_in(held["record"].implode()))
    assert set(held["recipient"].fill_null("").to_list()) <= {""}

    # spf: pseudonymised, no identifier as a column or as a value anywhere in the file.
    assert not set(frames["spf"].columns) & {*IDENTIFIERS, "date_naissance", "code_postal", "commune"}
    spf_bytes = outputs["spf"].read_bytes()  # type: ignore[union-attr]
    for column in IDENTIFIERS:
        for value in valid[column].drop_nulls().unique().to_list():
            if len(value) >= 6:
                assert value.encode() not in spf_bytes, (column, value)
    assert frames["spf"].height == valid.height
    assert frames["spf"]["pseudonyme"].str.len_chars().unique().to_list() == [64]

    # cnam: positives only, all of them (held regional shares included), with the NIR.
    assert set(frames["cnam"]["resultat"].to_list()) == {"POSITIF"}
    assert frames["cnam"].height == valid.filter(pl.col("resultat") == "POSITIF").height
    assert sorted(frames["cnam"]["nir"].to_list()) == sorted(
        valid.filter(pl.col("resultat") == "POSITIF")["nir"].to_list()
    )
    # every row carries its batch and its sender
    assert set(frames["cnam"]["sender"].to_list()) == {"lab-paris-01"}
    assert frames["cnam"]["batch_id"].n_unique() == 1

    # each ARS: the residents of its region, all of them, without the NIR.
    region_of = department_regions()
    for region in REGIONS:
        frame = frames.get(f"ars-{region}")
        mine = routed.filter(
            pl.col("code_commune_insee").map_elements(lambda c: region_of.get(department_of(c)), return_dtype=pl.String)
            == region
        )
        if frame is None:
            assert mine.height == 0
            continue
        assert "nir" not in frame.columns
        assert {region_of[department_of(c)] for c in frame["code_commune_insee"].to_list()} == {region}
        assert frame.height == mine.height

    # The union of sent, rejected and held accounts for every input record.
    summary_line = next(line for line in sent.out.splitlines() if line.startswith("csv: read"))
    assert "read 3000" in summary_line
    assert "(reconciled)" in summary_line
    assert routed.height + report["record"].n_unique() + held.height == inputs.height
    assert sum(f.height for n, f in frames.items() if n.startswith("ars-")) == routed.height
    assert set(held["reason"].to_list()) <= {"residence in a territory no ARS table covers"}


@pytest.mark.threat("T13")
def test_the_relay_refuses_unknown_or_unsigned_policies(world: World) -> None:
    lab, cnam = world.parties["lab-paris-01"], world.parties["cnam"]
    now = datetime.now(UTC)
    manifest = manifest_payload(lab, cnam, "made-up-1")
    with world.client(lab.name) as client, pytest.raises(IntegrityError, match="does not hold"):
        client.create_transfer(lab.sign(manifest))
    rogue = default_policy_text().replace("fr-covid-2026.3", "rogue-1")
    payload = policy_payload(rogue, now, issue=99, not_after=now + timedelta(days=365))
    with world.client(lab.name) as client, pytest.raises(PermissionDenied):
        client.register_policy(sign_envelope(payload, lab.signing_key, AUTHORITY_KEYID))

    with (
        RelayClient(world.url, AUTHORITY_KEYID, world.authority.key, SystemClock(), retries=0) as client,
        pytest.raises(UntrustedEntry),
    ):
        client.register_policy(sign_envelope(payload, SigningKey.generate(), AUTHORITY_KEYID))


def test_validate_reports_without_sending(tmp_path: Path) -> None:
    source = tmp_path / "r.csv"
    write_file(source, 500, seed=9, today=datetime.now(UTC).date(), defects=0.1)
    report, summary = tmp_path / "report.csv", tmp_path / "summary.json"
    result = call_cli("validate", source, "--report", report, "--summary", summary, cwd=tmp_path)
    assert result.code == 0, str(result)
    with report.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["record", "field", "reason"]
    counts = json.loads(summary.read_text())
    assert counts["read"] == 500
    assert counts["reconciled"] is True
    assert counts["rejected"] == len({r["record"] for r in rows}) > 0
    unreadable = tmp_path / "x.bin"
    unreadable.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    refused = call_cli("validate", unreadable, cwd=tmp_path)
    assert refused.code == 2, str(refused)  # not a results file: a usage error, named
    assert "binary file" in refused.err
    assert "would go to cnam" in result.out


@pytest.mark.parametrize("fmt", ["hl7", "fhir"])
def test_hl7_and_fhir_inputs_are_routed_too(world: World, tmp_path: Path, fmt: str) -> None:
    source = tmp_path / f"results.{fmt}"
    write_file(source, 300, fmt=fmt, seed=4, today=datetime.now(UTC).date())
    result = call_cli(
        "send", source, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam", "--to", "ars-11"
    )
    assert result.code == 0, str(result)
    assert f"{fmt}: read 300" in result.out
    cnam = received(world, "cnam")
    assert cnam is not None
    assert set(pl.read_csv(cnam, infer_schema=False)["resultat"].to_list()) == {"POSITIF"}


def test_documents_that_are_not_results_need_as_is(world: World, tmp_path: Path) -> None:
    document = tmp_path / "report.pdf"
    document.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 10)
    lab = world.party_dir("lab-paris-01")
    refused = call_cli("send", document, "--as", lab, "--server", world.url)
    assert refused.code == 2, str(refused)
    assert "PDF document" in refused.err
    assert "--as-is" in refused.err
    sent = call_cli("send", document, "--as", lab, "--server", world.url, "--to", "cnam", "--as-is")
    assert sent.code == 0, str(sent)
