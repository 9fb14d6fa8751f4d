"""Issue 6's scenarios: the 2021 case (the relay's whole data directory copied) yields ciphertext only and no letter
owed; a recipient's stolen key names exactly the persons in its undelivered payloads, and their letters and
e-mails are produced. The notification texts are checked for what GDPR art. 33(3) and 34(2) require."""

from __future__ import annotations

import json
import mailbox
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from labrelay.domain.parties import Role
from tests.support.world import World, sent_ids

CONTROLLER = """
organisme = "Laboratoire de biologie médicale Exemple"
siren = "000000000"
adresse = "1 rue de l'Exemple, 75000 Paris"
ville = "Paris"
representant = "La directrice, Dr Exemple"
dpo_nom = "DPO Exemple"
dpo_email = "dpo@labo.example"
dpo_telephone = "01 00 00 00 00"
decouverte = "{aware}"
mesures_prises = ["Le relais a été gelé et la clé compromise révoquée", "Les journaux d'audit ont été préservés"]
mesures_envisagees = ["Rotation des clés de tous les destinataires"]
"""


def send(world: World, cli, batch: Path) -> dict[str, str]:
    world.add("spf", Role.RECIPIENT)  # every national recipient of the default policy
    result = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url)
    assert result.code == 0, str(result)
    return sent_ids(result.out)


def export_audit(world: World, cli, out: Path) -> Path:
    assert cli("audit", "export", "--data", world.relay.data, "--out", out).code == 0
    return out


def controller_file(root: Path) -> Path:
    path = root / "controller.toml"
    aware = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(CONTROLLER.format(aware=aware), encoding="utf-8")
    return path


@pytest.mark.scaled("a copy of the database and the bucket exposes ciphertext only")
@pytest.mark.threat("T20")
def test_scenario_a_a_copy_of_the_whole_relay_exposes_ciphertext_only(world: World, cli, batch: Path) -> None:
    ids = send(world, cli, batch)
    copied_at = datetime.now(UTC) + timedelta(seconds=1)
    shutil.copytree(world.relay.data, world.root / "stolen-copy")  # what the 2021 attacker took, and more
    audit = export_audit(world, cli, world.root / "audit.ndjson")
    out = world.root / "scope-a"
    scoped = cli(
        "breach", "scope",
        "--ledger", world.party_dir("lab-paris-01") / "ledger",
        "--audit", audit,
        "--storage-copied-at", copied_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "--as", world.party_dir("dpo"),
        "--out", out,
    )  # fmt: skip
    assert scoped.code == 0, str(scoped)
    scope = json.loads((out / "scope.json").read_text())
    assert scope["transfers"]["ciphertext"] == len(ids)
    assert scope["transfers"]["readable"] == 0
    assert {f["exposure"] for f in scope["findings"]} == {"ciphertext"}
    assert scope["persons"]["readable_patients"] == 0
    assert scope["persons"]["readable_professionals"] == 0
    assert scope["persons"]["ciphertext_only_patients"] > 0
    notified = cli("breach", "notify", "--scope", out, "--controller", controller_file(world.root))
    assert notified.code == 0, str(notified)
    draft = (out / "notification-cnil.md").read_text()
    assert "34(3)(a)" in draft
    assert "Aucune communication individuelle n'est due" in draft
    assert not (out / "lettres").exists()
    assert json.loads((out / "notification-cnil.json").read_text())["art34"]["owed"] is False
    # An audit export with one line changed (the relay may be the compromised party) is refused.
    lines = audit.read_text().splitlines()
    lines[3] = lines[3].replace('"outcome":"ok"', '"outcome":"refused"')
    forged = world.root / "forged.ndjson"
    forged.write_text("\n".join(lines) + "\n")
    refused = cli(
        "breach", "scope", "--ledger", world.party_dir("lab-paris-01") / "ledger", "--audit", forged,
        "--storage-copied-at", copied_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "--out", world.root / "forged",
    )  # fmt: skip
    assert refused.code == 3, str(refused)
    assert "does not verify" in refused.err


@pytest.mark.threat("T20")
def test_scenario_b_a_stolen_recipient_key_names_exactly_its_undelivered_persons(
    world: World, cli, batch: Path
) -> None:
    send(world, cli, batch)
    # cnam fetched and acknowledged before the theft; ars-11's payload was still on the relay.
    assert cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", world.root / "cnam").code == 0
    stolen_at = datetime.now(UTC) + timedelta(seconds=1)
    audit = export_audit(world, cli, world.root / "audit.ndjson")
    out = world.root / "scope-b"
    scoped = cli(
        "breach", "scope",
        "--ledger", world.party_dir("lab-paris-01") / "ledger",
        "--audit", audit,
        "--compromised", f"ars-11@{stolen_at:%Y-%m-%dT%H:%M:%SZ}",
        "--compromised", f"cnam@{stolen_at:%Y-%m-%dT%H:%M:%SZ}",
        "--as", world.party_dir("dpo"),
        "--out", out,
    )  # fmt: skip
    assert scoped.code == 0, str(scoped)
    scope = json.loads((out / "scope.json").read_text())
    by_recipient = {f["recipient"]: f["exposure"] for f in scope["findings"]}
    assert by_recipient == {"ars-11": "readable", "cnam": "recipient-side"}
    affected = pl.read_csv(out / "affected.csv", infer_schema=False)
    assert (out / "affected.csv").stat().st_mode & 0o077 == 0
    # Exactly the persons in ars-11's payload: what ars-11 itself decrypts, fetched now.
    assert cli("fetch", "--as", world.party_dir("ars-11"), "--server", world.url, "--out", world.root / "ars").code == 0
    [received] = list((world.root / "ars").glob("*.csv"))
    payload = pl.read_csv(received, infer_schema=False)
    expected = set(payload.select("nom", "prenom", "date_naissance").iter_rows())
    named = set(affected.filter(pl.col("kind") == "patient").select("nom", "prenom", "date_naissance").iter_rows())
    assert named == expected
    assert scope["persons"]["readable_patients"] == len(expected)
    assert scope["persons"]["readable_professionals"] == 0  # ars-11 receives no prescriber data
    assert "health" in scope["categories"]["readable"]
    assert "nir" not in scope["categories"]["readable"]  # ars receive no NIR under the default policy

    notified = cli("breach", "notify", "--scope", out, "--controller", controller_file(world.root), "--batch-size", "7")
    assert notified.code == 0, str(notified)
    with_address = affected.filter(pl.col("adresse").is_not_null() & (pl.col("adresse") != "")).height
    with_email = affected.filter(pl.col("email").is_not_null() & (pl.col("email") != "")).height
    pdfs = sorted((out / "lettres").glob("*.pdf"))
    assert len(pdfs) == -(-with_address // 7)
    assert all(p.read_bytes().startswith(b"%PDF") for p in pdfs)
    messages = []
    for path in sorted((out / "courriels").glob("*.mbox")):
        box = mailbox.mbox(str(path))
        try:
            messages += list(box)
        finally:
            box.close()
    assert len(messages) == with_email
    assert {m["To"] for m in messages} == set(affected["email"].drop_nulls().to_list()) - {""}
    # Art. 34(2): nature, contact point, likely consequences, measures — in plain French, in every message.
    text = messages[0].get_payload(decode=True).decode("utf-8")
    for element in ("Ce qui s'est passé", "dpo@labo.example", "conséquences possibles", "Ce que nous avons fait"):
        assert element in text, element
    assert "http" not in text.replace("www.cnil.fr", "")  # no link to click in a breach e-mail
    draft = (out / "notification-cnil.md").read_text()
    # Art. 33(3): (a) nature, categories, approximate numbers; (b) DPO; (c) consequences; (d) measures.
    for element in (
        "Nature de la violation",
        "Catégories et nombre approximatif",
        f"Patients dont les données étaient lisibles : {len(expected)}",
        "DPO Exemple, dpo@labo.example",
        "Conséquences probables",
        "Le relais a été gelé",
        "(envisagée) Rotation des clés",
    ):
        assert element in draft, element
    assert json.loads((out / "notification-cnil.json").read_text())["art34"]["owed"] is True
    # A list holding other than the persons its scope counted is refused (counts reconcile).
    miscounted = world.root / "scope-b-miscounted"
    miscounted.mkdir()
    shutil.copy(out / "affected.csv", miscounted / "affected.csv")
    scope["persons"]["readable_patients"] += 1
    (miscounted / "scope.json").write_text(json.dumps(scope), encoding="utf-8")
    counted = cli("breach", "notify", "--scope", miscounted, "--controller", controller_file(world.root), "--no-pdf")
    assert counted.code == 3, str(counted)
    assert "its scope counted" in str(counted)
    # ... before any letter, e-mail or call list is left behind: only the art. 33 draft (for the DPO) is written.
    left = sorted(p.name for p in miscounted.iterdir())
    assert left == ["affected.csv", "notification-cnil.json", "notification-cnil.md", "scope.json"], left
    # A list of persons that is not the one this scope named is refused; so is writing over earlier letters.
    with (out / "affected.csv").open("a") as fh:
        fh.write("patient,,INTRUS,Jean,1970-01-01,1 rue X,75001,PARIS,,jean@example.org,x\n")
    tampered = cli("breach", "notify", "--scope", out, "--controller", controller_file(world.root), "--out", out / "2")
    assert tampered.code == 3, str(tampered)
    # Without the DPO's key the persons are not named: the art. 33 draft is still written, with what is missing.
    unnamed = world.root / "scope-b-unnamed"
    args = ["--ledger", world.party_dir("lab-paris-01") / "ledger", "--audit", audit, "--out", unnamed]
    assert cli("breach", "scope", *args, "--compromised", f"ars-11@{stolen_at:%Y-%m-%dT%H:%M:%SZ}").code == 0
    partial = cli("breach", "notify", "--scope", unnamed, "--controller", controller_file(world.root))
    assert partial.code == 2, str(partial)
    assert "[À COMPLÉTER" in (unnamed / "notification-cnil.md").read_text()
