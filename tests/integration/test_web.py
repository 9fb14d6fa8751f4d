"""The web pages in a real browser (Debian's Chromium, headless, driven by Playwright) against a real relay process.

- the lab page validates, routes, encrypts and signs in the browser, uploads resumably (one chunk is cut on the
  way), and the CLI recipients fetch and decrypt exactly what the CLI itself would have sent for the same batch;
  a copy of the relay then holds nothing of the batch;
- the recipient page decrypts what the CLI sent, and its receipt verifies for the sender's CLI;
- post-quantum keys: the world's parties are hybrid (ML-KEM-768 + X25519), the pages seal to and open them; under
  a policy with require_pq, the lab page refuses a batch addressed to a classic key before anything is sent, the
  recipient page of a classic party downloads nothing, and the console shows which parties are still classic;
- the console: a passkey is registered and signs in (Chromium's virtual authenticator), the enumeration scenario's
  alert shows, a freeze approved with the passkey takes effect;
- the pages load nothing from elsewhere and the Content-Security-Policy stops injected script;
- the browser's validator gives the CLI's answers on the shared vectors (tests/vectors/web_validation.json).

With LABRELAY_SCREENSHOTS=DIR, each page's screenshot is saved there (docs/screenshots/ holds the committed ones).
"""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import io
import json
import re
import uuid
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from labrelay.client.api import RelayClient
from labrelay.client.policy import default_policy_text
from labrelay.clock import SystemClock
from labrelay.crypto import httpsig
from labrelay.crypto.envelopes import sign_envelope
from labrelay.domain.detection import RULES
from labrelay.domain.names import AUTHORITY_KEYID
from labrelay.domain.parties import CONSOLE_ROLES, Revocation, Role
from labrelay.domain.records import FIELDS, Reason
from labrelay.domain.transfers import TransferState
from labrelay.errors import RelayFrozen
from labrelay.synthetic.generator import write_csv_file
from tests.support.browser import Tab, localhost
from tests.support.plaintext import needles_of, plaintext_hits
from tests.support.records import good, line
from tests.support.world import REPO, World, make_world, sent_ids
from tests.vectors import make_web_vectors

pytestmark = pytest.mark.slow

PARTY_FILES = ("party.json", "signing.key", "authority.pub")
RECORDS = 3000


@pytest.fixture
def web_world(tmp_path: Path, relay_factory) -> World:
    world = make_world(tmp_path / "w", relay_factory)
    world.add("spf", Role.RECIPIENT)
    world.add("ops-01", Role.ADMIN)
    return world


def files_of(world: World, name: str, *extra: str) -> list[str]:
    return [str(world.party_dir(name) / f) for f in (*PARTY_FILES, *extra)]


def stanzas_of(age_file: bytes) -> list[str]:
    """The recipient stanza types of an age file's header (``-> mlkem768x25519 …``, ``-> X25519 …``)."""
    header = age_file.split(b"\n--- ", 1)[0].decode("ascii")
    lines = header.split("\n")
    assert lines[0] == "age-encryption.org/v1", lines[0]
    return [line.split(" ")[1] for line in lines[1:] if line.startswith("-> ")]


def same_origin_only(tab: Tab) -> None:
    assert tab.requests, "the page made no request"
    foreign = [u for u in tab.requests if not (u.startswith((tab.base, "blob:", "data:")))]
    assert foreign == [], f"the page reached another origin: {foreign[:3]}"


def fetch_all(cli, world: World, name: str, out: Path) -> dict[str, list[list[str]]]:
    """CLI fetch of everything waiting for ``name`` (``fetch --json``: each transfer id with the file it wrote):
    transfer id → the CSV's rows without the two columns fetch appends to each (batch_id, sender)."""
    result = cli("fetch", "--as", world.party_dir(name), "--server", world.url, "--out", out, "--json")
    assert result.code == 0, str(result)
    report = json.loads(result.out)
    assert report["duplicates"] == [], report["duplicates"]
    rows = {}
    for fetched in report["fetched"]:
        with Path(fetched["file"]).open(encoding="utf-8", newline="") as fh:
            table = list(csv.reader(fh))
        assert table[0][-2:] == ["batch_id", "sender"]
        assert {tuple(row[-2:]) for row in table[1:]} == {(fetched["batch_id"], fetched["sender"])}
        rows[fetched["transfer_id"]] = [row[:-2] for row in table]
    return rows


@pytest.mark.threat("T23")
def test_a_batch_sent_from_the_lab_page_is_what_the_cli_would_send(
    web_world: World, open_tab, cli, tmp_path: Path
) -> None:
    world = web_world
    batch = tmp_path / "results.csv"
    write_csv_file(batch, RECORDS, seed=11, today=date.today())  # noqa: DTZ011 - a calendar day
    tab: Tab = open_tab(world.url, locale="en-GB")
    tab.goto("/lab?lang=en")
    patches: dict[str, int] = {}
    cut: list[str] = []
    first_chunks: dict[str, bytes] = {}

    def cut_a_second_chunk(route: Any) -> None:
        url = route.request.url
        if route.request.method == "PATCH":
            patches[url] = patches.get(url, 0) + 1
            first_chunks.setdefault(url, route.request.post_data_buffer or b"")  # offset 0: the age header
            if patches[url] == 2 and not cut:  # the connection drops mid-upload: tus asks the offset, resumes
                cut.append(url)
                route.abort("connectionreset")
                return
        route.continue_()

    tab.page.route("**/v1/uploads/**", cut_a_second_chunk)
    tab.page.set_input_files("#party-files", files_of(world, "lab-paris-01", "pseudonym.key"))
    tab.page.set_input_files("#results-file", str(batch))
    tab.page.locator("#send").click()
    done = tab.wait_status("ok", timeout=120_000)
    assert "3 transfer" in done
    assert len(cut) == 1
    assert patches[cut[0]] >= 3
    counts = {k: int(tab.page.locator(f"#count-{k}").inner_text()) for k in ("read", "accepted", "rejected", "review")}
    assert counts["read"] == RECORDS
    assert counts["accepted"] + counts["rejected"] + counts["review"] == RECORDS
    tab.shot("lab-en")
    same_origin_only(tab)
    assert [e for e in tab.errors if "ERR_CONNECTION_RESET" not in e] == [], tab.errors

    sent_by_page = dict(world.db("SELECT recipient, id FROM transfers"))
    assert set(sent_by_page) == {"cnam", "ars-11", "spf"}
    assert world.db("SELECT DISTINCT state FROM transfers") == [("available",)]
    # A complete copy of the relay now, before anything is fetched, holds nothing of the batch.
    hits = plaintext_hits(world.copy_relay(tmp_path / "copy"), needles_of(batch))
    assert hits == [], hits

    # The same batch through the CLI: each recipient must receive the same records from both. The CLI's copy is
    # sent again on purpose (--again): a recipient declines a second copy of a source from the same sender.
    sent = cli("send", batch, "--again", "--as", world.party_dir("lab-paris-01"), "--server", world.url)
    assert sent.code == 0, str(sent)
    sent_by_cli = sent_ids(sent.out)
    for name in ("cnam", "ars-11", "spf"):
        got = fetch_all(cli, world, name, tmp_path / f"out-{name}")
        from_page, from_cli = got[sent_by_page[name]], got[sent_by_cli[name]]
        assert from_page == from_cli, f"{name}: the page's payload differs from the CLI's"
        assert len(from_page) > 1
    page_manifests = world.db(
        "SELECT recipient, manifest FROM transfers WHERE id IN (:a, :b, :c)",
        a=sent_by_page["cnam"],
        b=sent_by_page["ars-11"],
        c=sent_by_page["spf"],
    )
    # Every payload the page sealed is to its recipient's hybrid post-quantum key, with one stanza of that kind.
    assert len(first_chunks) == 3
    for chunk in first_chunks.values():
        assert stanzas_of(chunk) == ["mlkem768x25519"], chunk[:80]
    for recipient, manifest in page_manifests:
        payload = json.loads(manifest)["payload"]
        assert payload["recipient_key"] == world.parties[recipient].age_recipient
        assert payload["recipient_key"].startswith("age1pq1")
        assert payload["sender"] == "lab-paris-01"
        assert payload["recipient"] == recipient
        assert payload["compression"] == "gzip"
        assert payload["policy_version"] == "fr-covid-2026.3"
        assert payload["source_sha256"] == hashlib.sha256(batch.read_bytes()).hexdigest()
        assert "again" not in payload
    hits = plaintext_hits(world.copy_relay(tmp_path / "copy-after"), needles_of(batch))
    assert hits == [], hits


# ------------------------------------------------------------------ the lab page: what it refuses, warns and offers


def csv_bytes(
    *records: dict[str, str], columns: tuple[str, ...] = FIELDS, sep: str = ",", header: str | None = None
) -> bytes:
    head = header if header is not None else sep.join(columns)
    return (head + "\n" + "".join(line(r, sep, columns) + "\n" for r in records)).encode("utf-8")


def lab_tab(world: World, open_tab, lang: str = "fr") -> Tab:
    tab: Tab = open_tab(world.url, locale="fr-FR" if lang == "fr" else "en-GB")
    tab.goto(f"/lab?lang={lang}")
    tab.page.set_input_files("#party-files", files_of(world, "lab-paris-01", "pseudonym.key"))
    return tab


def saved(tab: Tab, selector: str, target: Path) -> bytes:
    """Click a download link of the page; the bytes the browser saved."""
    with tab.page.expect_download() as download:
        tab.page.locator(selector).click()
    download.value.save_as(target)
    return target.read_bytes()


def test_the_lab_page_warns_when_nothing_is_sent_and_offers_the_clis_rejection_report(
    web_world: World, open_tab, cli, tmp_path: Path
) -> None:
    """Every record rejected: no success banner but a warning that says why, nothing sent, and the rejection report
    made in the browser is byte for byte what ``labrelay validate --report`` writes for the same file."""
    world = web_world
    source = tmp_path / "all-bad.csv"
    source.write_bytes(
        csv_bytes(
            good(nir="179037511104200"),
            good(code_loinc="12345-6", sexe="X"),
            good(nom="=HYPERLINK(1)"),
            good(date_prelevement="2099-01-01"),
        )
        + b"short,row\n"
    )
    tab = lab_tab(world, open_tab)
    tab.page.set_input_files("#results-file", str(source))
    warning = tab.submit("#send", "warn")
    assert "Rien n'a été envoyé" in warning
    assert "les 5 enregistrements du fichier ont tous été rejetés" in warning
    assert int(tab.page.locator("#count-rejected").inner_text()) == 5
    assert world.db("SELECT count(*) FROM transfers") == [(0,)]
    assert tab.page.locator("#sent-table").count() == 0

    report = tmp_path / "cli-report.csv"
    validated = cli("validate", source, "--report", report)
    assert validated.code == 0, str(validated)
    from_page = saved(tab, "#download-rejections", tmp_path / "page-report.csv")
    assert from_page.replace(b"\r\n", b"\n") == report.read_bytes().replace(b"\r\n", b"\n")
    assert b"formula-like value" in from_page
    assert tab.page.locator("#download-held").count() == 0
    tab.shot("lab-nothing-sent-fr")
    same_origin_only(tab)
    assert tab.errors == [], tab.errors


def _zip(*members: tuple[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members:
            archive.writestr(name, text)
    return buffer.getvalue()


def test_the_lab_page_says_in_french_what_is_wrong_with_a_file_before_asking_the_relay_anything(
    web_world: World, open_tab, tmp_path: Path
) -> None:
    """A workbook, UTF-16 text, a file whose required columns are missing, no file, another party's keys: each gets
    a message in French that says what to do, and the page asked the relay nothing for a file that is not results
    (the same in English under ?lang=en)."""
    world = web_world
    files = {
        "resultats.xlsx": _zip(("[Content_Types].xml", "<Types/>"), ("xl/workbook.xml", "<workbook/>")),
        "unicode.csv": b"\xff\xfe" + csv_bytes(good()).decode().encode("utf-16-le"),
        "colonnes.csv": csv_bytes(good(), columns=tuple(f for f in FIELDS if f not in ("nir", "resultat"))),
        "hl7.txt": b"MSH|^~\\&|LAB\rPID|1\r",
    }
    expected = {
        "resultats.xlsx": ["classeur Excel (.xlsx)", "CSV UTF-8"],
        "unicode.csv": ["UTF-16", "CSV UTF-8"],
        "colonnes.csv": ["colonne(s) obligatoire(s) absente(s) : nir, resultat", "Colonnes trouvées : nom, prenom"],
        "hl7.txt": ["HL7 v2", "labrelay send"],
    }
    tab = lab_tab(world, open_tab)
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        tab.page.set_input_files("#results-file", str(path))
        before = len(tab.requests)
        message = tab.submit("#send", "error")
        for words in expected[name]:
            assert words in message, (name, message)
        assert name in message
        assert [u for u in tab.requests[before:] if "/v1/" in u] == [], f"{name}: the page asked the relay"
    tab.shot("lab-wrong-file-fr")

    tab.page.set_input_files("#results-file", [])
    assert "Choisissez un fichier de résultats" in tab.submit("#send", "error")
    tab.page.set_input_files("#results-file", str(tmp_path / "colonnes.csv"))
    tab.page.set_input_files("#party-files", files_of(world, "cnam"))
    assert "cnam n'est pas un laboratoire" in tab.submit("#send", "error")

    english = lab_tab(world, open_tab, "en")
    english.page.set_input_files("#results-file", str(tmp_path / "unicode.csv"))
    assert "is UTF-16 text" in english.submit("#send", "error")
    english.page.set_input_files("#results-file", str(tmp_path / "colonnes.csv"))
    assert "required column(s) missing: nir, resultat" in english.submit("#send", "error")
    assert world.db("SELECT count(*) FROM transfers") == [(0,)]
    same_origin_only(tab)


def test_a_file_as_excel_exports_it_is_accepted_by_the_page_as_the_cli_accepts_it(
    web_world: World, open_tab, cli, tmp_path: Path
) -> None:
    """An upper-case, quoted, ;-separated header in Windows-1252 with optional columns left out: the CLI reads it,
    and so does the page, with the same counts, and what it sends CNAM is the records with those columns empty."""
    world = web_world
    columns = tuple(f for f in FIELDS if f not in ("email", "telephone"))
    header = ";".join(f'"{c.upper()}"' if i % 2 else f" {c.upper()} " for i, c in enumerate(columns))
    records = [
        good(adresse="3 rue de l\u2019\u0152uvre", prenom="H\u00e9l\u00e8ne"),
        good(nom="C\u0152UR", resultat="NEGATIF"),
        good(nom="MARTIN", nir="179037511104200"),
    ]
    body = header + "\r\n" + "".join(line(r, ";", columns) + "\r\n" for r in records)
    source = tmp_path / "excel.csv"
    source.write_bytes(body.encode("cp1252"))
    summary = tmp_path / "summary.json"
    validated = cli("validate", source, "--summary", summary)
    assert validated.code == 0, str(validated)
    expected = json.loads(summary.read_text())

    tab = lab_tab(world, open_tab)
    tab.page.set_input_files("#results-file", str(source))
    done = tab.submit("#send", "ok")
    assert "transfert" in done
    counts = {k: int(tab.page.locator(f"#count-{k}").inner_text()) for k in ("read", "accepted", "rejected", "review")}
    assert counts["read"] == expected["read"] == 3
    assert counts["rejected"] == expected["rejected"] == 1
    assert counts["accepted"] + counts["review"] == 2
    assert "email" in tab.page.locator("#optional").inner_text()
    same_origin_only(tab)

    with world.client("cnam") as cnam:
        listing = cnam.transfers("inbox")
    assert len(listing) == 1  # one positive, valid record
    payload = listing[0]["manifest"]["payload"]
    assert payload["record_count"] == 1
    assert payload["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_the_lab_page_holds_only_the_share_of_an_ars_not_enrolled_and_offers_the_held_file(
    web_world: World, open_tab, cli, tmp_path: Path
) -> None:
    """Residents of Centre-Val de Loire (region 24), whose ARS is not enrolled: CNAM and SpF get them, their ARS
    share is held, the page says so per recipient ("ars-24 non inscrite : 3 enregistrements retenus, dont 2
    positifs") and offers the review file, equal to the one the CLI's pipeline writes for the same file."""
    world = web_world
    tours = {"code_commune_insee": "37261", "code_postal": "37000", "commune": "TOURS"}
    records = [
        good(**tours),
        good(**tours, nom="MARTIN"),
        good(**tours, nom="DURAND", resultat="NEGATIF"),
        good(),
        good(resultat="NEGATIF", nom="PETIT"),
        good(code_loinc="1-1"),
    ]
    data = csv_bytes(*records)
    source = tmp_path / "tours.csv"
    source.write_bytes(data)
    tab = lab_tab(world, open_tab)
    tab.page.set_input_files("#results-file", str(source))
    done = tab.submit("#send", "ok", timeout=120_000)
    assert "3 transfert(s)" in done
    assert "3 enregistrements sont retenus" in done
    held = tab.page.locator("#held").inner_text()
    assert "ars-24 non inscrite : 3 enregistrements retenus, dont 2 positifs" in held
    recipients = tab.page.locator("#recipients").inner_text()
    for name, n in (("cnam", "3"), ("spf", "5"), ("ars-11", "2")):
        assert re.search(rf"{name}\s+{n}\b", recipients), recipients
    assert {k: tab.page.locator(f"#count-{k}").inner_text() for k in ("accepted", "rejected", "review")} == {
        "accepted": "2",
        "rejected": "1",
        "review": "3",
    }
    tab.shot("lab-held-fr")

    enrolled = [name for (name,) in world.db("SELECT DISTINCT name FROM parties WHERE role = 'recipient'")]
    assert "ars-24" not in enrolled
    expected = make_web_vectors.derive_routing(
        data,
        today=date.today(),  # noqa: DTZ011 - a calendar day, as the page's
        policy=default_policy_text(),
        enrolled=enrolled,
        restrict=None,
        pseudonym_key=hashlib.sha256(b"any key").hexdigest(),
    )
    assert expected["summary"]["held_for"] == {"ars-24": {"records": 3, "positives": 2}}
    assert saved(tab, "#download-held", tmp_path / "held.csv").decode() == expected["review"]
    assert saved(tab, "#download-rejections", tmp_path / "rejections.csv").decode() == expected["rejections"]
    sent = {
        r: json.loads(m)["payload"]["record_count"] for r, m in world.db("SELECT recipient, manifest FROM transfers")
    }
    assert sent == {"cnam": 3, "spf": 5, "ars-11": 2}
    same_origin_only(tab)
    assert tab.errors == [], tab.errors


# ------------------------------------------------------------------ post-quantum keys: require_pq and classic parties


def publish_policy(world: World, version: str, *, require_pq: bool | None) -> None:
    """The default policy under ``version``, with ``require_pq`` set as given (None: the key left out), signed by the
    world's authority and published."""
    text = re.sub(r"(?m)^require_pq = .*\n", "", default_policy_text())
    text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text)
    if require_pq is not None:
        text = f"require_pq = {'true' if require_pq else 'false'}\n{text}"
    with RelayClient(world.url, AUTHORITY_KEYID, world.authority.key, SystemClock(), retries=0) as client:
        client.register_policy(world.authority.sign_policy(text, datetime.now(UTC)))


@pytest.fixture
def classic_world(tmp_path: Path, relay_factory) -> World:
    """The web world with SpF still on a classic key: enrolled under a policy that does not require post-quantum
    keys, then a policy that does is published (as an authority moving to require_pq would)."""
    world = make_world(tmp_path / "w", relay_factory)
    publish_policy(world, "fr-covid-classic", require_pq=None)
    spf = world.add("spf", Role.RECIPIENT, classic=True)  # party new --classic
    assert spf.age_recipient.startswith("age1")
    assert not spf.age_recipient.startswith("age1pq1")
    world.add("ops-01", Role.ADMIN)
    publish_policy(world, "fr-covid-pq", require_pq=True)
    return world


def test_the_lab_page_refuses_a_classic_recipient_when_the_policy_requires_post_quantum_keys(
    classic_world: World, open_tab, tmp_path: Path
) -> None:
    """Under require_pq = true, a batch addressed to SpF, still on a classic X25519 key, is refused whole before
    anything is sealed or uploaded, with one line naming SpF and the command that moves it; under a policy without
    require_pq the same batch goes, each payload sealed to one recipient of one kind (SpF's classic, the others'
    hybrid)."""
    world = classic_world
    source = tmp_path / "results.csv"
    source.write_bytes(csv_bytes(good(), good(nom="MARTIN", resultat="NEGATIF")))
    tab = lab_tab(world, open_tab)
    tab.page.set_input_files("#results-file", str(source))
    message = tab.submit("#send", "error")
    assert "fr-covid-pq exige des clés post-quantiques" in message
    assert "spf a encore une clé classique (X25519)" in message
    assert "rien n'a été envoyé" in message
    assert "labrelay party rotate --pq" in message
    assert "cnam" not in message
    assert "ars-11" not in message
    assert [u for u in tab.requests if "/v1/transfers" in u or "/v1/uploads" in u] == []
    assert world.db("SELECT count(*) FROM transfers") == [(0,)]
    tab.shot("lab-classic-key-fr")

    english = lab_tab(world, open_tab, "en")
    english.page.set_input_files("#results-file", str(source))
    message = english.submit("#send", "error")
    assert "Routing policy fr-covid-pq requires post-quantum keys" in message
    assert "spf still has a classic (X25519) key: nothing was sent" in message
    assert "spf must move to a hybrid key with labrelay party rotate --pq" in message
    assert world.db("SELECT count(*) FROM transfers") == [(0,)]
    assert all("requires post-quantum keys" in e for e in english.errors), english.errors  # the refusal, logged

    publish_policy(world, "fr-covid-relaxed", require_pq=False)
    done = english.submit("#send", "ok", timeout=120_000)
    assert "3 transfer" in done
    keys = {
        r: json.loads(m)["payload"]["recipient_key"] for r, m in world.db("SELECT recipient, manifest FROM transfers")
    }
    assert keys == {name: world.parties[name].age_recipient for name in ("cnam", "ars-11", "spf")}
    assert not keys["spf"].startswith("age1pq1")
    assert keys["cnam"].startswith("age1pq1")
    assert keys["ars-11"].startswith("age1pq1")
    same_origin_only(english)


def test_the_recipient_page_downloads_nothing_sealed_to_a_classic_key_when_the_policy_requires_post_quantum(
    classic_world: World, open_tab, batch: Path, cli
) -> None:
    """As ``labrelay fetch``: under require_pq, SpF's page, while SpF is on a classic key, downloads nothing; once SpF
    has moved to a hybrid key (``party rotate --pq``, the old identity kept), the payload sealed to its old classic
    key before the policy changed opens (refusing it would lose results and protect nothing)."""
    world = classic_world
    publish_policy(world, "fr-covid-relaxed", require_pq=False)
    sent = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "spf")
    assert sent.code == 0, str(sent)
    transfer = sent_ids(sent.out)["spf"]
    publish_policy(world, "fr-covid-pq2", require_pq=True)

    tab: Tab = open_tab(world.url, locale="en-GB")
    tab.goto("/inbox?lang=en")
    tab.page.set_input_files("#party-files", files_of(world, "spf", "identity.txt"))
    message = tab.submit("#list", "error")
    assert "Routing policy fr-covid-pq2 requires post-quantum keys" in message
    assert "the key of spf is still classic (X25519): nothing was downloaded" in message
    assert "labrelay party rotate --pq" in message
    assert tab.page.locator("button[data-transfer]").count() == 0

    rotated = cli(
        "party", "rotate", world.party_dir("spf"), "--pq", "--authority", world.auth_dir, "--server", world.url
    )
    assert rotated.code == 0, str(rotated)
    assert "AGE-SECRET-KEY-PQ-1" in (world.party_dir("spf") / "identity.txt").read_text()
    tab.goto("/inbox?lang=en")
    tab.page.set_input_files("#party-files", files_of(world, "spf", "identity.txt"))
    tab.submit("#list", "ok")
    tab.page.locator(f"button[data-transfer='{transfer}']").click()
    tab.page.wait_for_selector("#verified")
    assert len([u for u in tab.requests if u.endswith("/payload")]) == 1


def test_the_console_lists_the_parties_still_on_a_classic_key(classic_world: World, open_tab) -> None:
    """The directory section of the console: each party's role, standing and key kind, SpF shown as classic with
    the command that moves it, every other party as post-quantum. Only a signed-in session reads the list."""
    world = classic_world
    anonymous = httpx.get(localhost(world.url) + "/console/api/parties", timeout=30)
    assert anonymous.status_code in (401, 403), anonymous.text
    assert "spf" not in anonymous.text

    tab: Tab = open_tab(world.url, locale="en-GB")
    tab.add_passkey_device()
    tab.goto("/enrol?lang=en")
    tab.page.set_input_files("#party-files", files_of(world, "ops-01"))
    tab.page.locator("#register").click()
    tab.wait_status("ok")
    tab.goto("/?lang=en")
    tab.page.keyboard.press("Enter")
    tab.page.wait_for_selector("#directory")
    kinds = {
        row.locator("td").nth(0).inner_text(): row.locator("[data-key]").get_attribute("data-key")
        for row in tab.page.locator("#directory tbody tr").all()
    }
    assert kinds == {name: "classic" if name == "spf" else "post-quantum" for name in world.parties}
    rows = {
        row.locator("td").nth(0).inner_text(): row.inner_text() for row in tab.page.locator("#directory tbody tr").all()
    }
    assert re.search(r"spf\s+recipient\s+active\s+classic", rows["spf"]), rows["spf"]
    assert re.search(r"cnam\s+recipient\s+active\s+post-quantum", rows["cnam"]), rows["cnam"]
    note = tab.page.locator("#classic-keys").inner_text()
    assert "1 active party still has a classic (X25519) key" in note
    assert "labrelay party rotate --pq" in note
    tab.shot("console-keys-en")
    same_origin_only(tab)
    assert [e for e in tab.errors if "401" not in e] == [], tab.errors  # 401: /me, before signing in


@pytest.mark.threat("T23")
def test_the_recipient_page_decrypts_what_the_cli_sent_and_its_receipt_verifies(
    web_world: World, open_tab, batch: Path, cli, tmp_path: Path
) -> None:
    world = web_world
    lab = world.party_dir("lab-paris-01")
    as_is = cli("send", batch, "--as", lab, "--server", world.url, "--as-is", "--to", "cnam")
    assert as_is.code == 0, str(as_is)
    transfer = sent_ids(as_is.out)["cnam"]
    assert "AGE-SECRET-KEY-PQ-1" in (world.party_dir("cnam") / "identity.txt").read_text()
    tab: Tab = open_tab(world.url)
    served: list[bytes] = []

    def keep(route: Any) -> None:
        response = route.fetch()
        served.append(response.body())
        route.fulfill(response=response)

    tab.page.route("**/v1/transfers/*/payload", keep)
    tab.goto("/inbox?lang=fr")
    tab.page.set_input_files("#party-files", files_of(world, "cnam", "identity.txt"))
    tab.page.keyboard.press("Tab")
    tab.page.locator("#list").press("Enter")  # the page works from the keyboard
    tab.wait_status("ok")
    assert "hors politique" in tab.page.locator("#inbox-table").inner_text()  # sent as it was: marked as such
    tab.page.locator(f"button[data-transfer='{transfer}']").click()
    tab.page.wait_for_selector("#verified")
    assert "300" in tab.page.locator("#verified").inner_text()  # records counted in what was decrypted
    assert [stanzas_of(body) for body in served] == [["mlkem768x25519"]]  # the page opened a hybrid payload
    assert "hors de la politique de routage" in tab.page.locator("#unparsed").inner_text()
    assert world.db("SELECT state FROM transfers WHERE id = :i", i=transfer) == [("available",)]  # not yet saved
    with tab.page.expect_download() as download:
        tab.page.locator("#save").click()
    saved = tmp_path / "saved.csv"
    download.value.save_as(saved)
    assert saved.read_bytes() == batch.read_bytes()
    tab.page.wait_for_selector("p#inbox-table")  # the receipt went, the list was read again: nothing waits
    tab.shot("inbox-fr")
    same_origin_only(tab)
    assert tab.errors == [], tab.errors

    assert world.db("SELECT state FROM transfers WHERE id = :i", i=transfer) == [("delivered",)]
    assert transfer not in world.stored()
    outbox = cli("receipts", "--as", lab, "--server", world.url)
    assert outbox.code == 0, str(outbox)
    line = next(line for line in outbox.out.splitlines() if transfer in line)
    assert "decrypted" in line  # the page's receipt verified under cnam's entry, on the lab's side


@pytest.mark.threat("T23")
def test_the_recipient_page_refuses_a_payload_that_does_not_match_its_manifest(
    web_world: World, open_tab, batch: Path, cli
) -> None:
    """A relay (or anything between) that serves other bytes than the signed manifest says: the page itself
    refuses them, decrypts nothing and sends no receipt."""
    world = web_world
    sent = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--as-is", "--to", "cnam")
    transfer = sent_ids(sent.out)["cnam"]
    tab: Tab = open_tab(world.url)

    def altered(route: Any) -> None:
        response = route.fetch()
        body = bytearray(response.body())
        body[len(body) // 2] ^= 0x01
        route.fulfill(response=response, body=bytes(body))

    tab.page.route("**/v1/transfers/*/payload", altered)
    tab.goto("/inbox?lang=en")
    tab.page.set_input_files("#party-files", files_of(world, "cnam", "identity.txt"))
    tab.page.locator("#list").click()
    tab.wait_status("ok")
    tab.page.locator(f"button[data-transfer='{transfer}']").click()
    message = tab.wait_status("error")
    assert "does not match the signed manifest" in message
    assert tab.page.locator("#verified").count() == 0
    assert world.db("SELECT state FROM transfers WHERE id = :i", i=transfer) == [("available",)]


@pytest.mark.threat("T23")
def test_the_pages_refuse_forged_revoked_and_misaddressed_records(web_world: World, open_tab, batch: Path, cli) -> None:
    """The pages' own directory and manifest checks, on records an attacking relay could serve."""
    world = web_world
    with world.client("cnam") as cnam:
        doc = cnam.directory()
    authority_pem = world.pub.read_text()
    tab: Tab = open_tab(world.url)
    tab.goto("/inbox?lang=en")

    def require(document: dict[str, Any], name: str, roles: tuple[str, ...] = ("recipient",)) -> str:
        return str(
            tab.page.evaluate(
                "([d, pem, n, r]) => globalThis.labrelay.requireParty(d, pem, n, r)",
                [document, authority_pem, name, list(roles)],
            )
        )

    assert require(doc, "cnam") == "active"
    assert require(doc, "nobody") == "unknown"
    assert require(doc, "cnam", ("lab",)) == "role"
    forged = copy.deepcopy(doc)
    entry = next(e for e in forged["entries"] if e["payload"]["name"] == "cnam")
    entry["payload"]["age_recipient"] = world.parties["ars-11"].age_recipient  # a key the attacker holds
    assert require(forged, "cnam") == "untrusted"
    now = datetime.now(UTC)
    revocation = Revocation(name="cnam", revoked_at=now, reason="test", serial=str(uuid.uuid4()))
    signed = sign_envelope(revocation.to_payload(), world.authority.key, AUTHORITY_KEYID)
    assert require({**doc, "revocations": [signed]}, "cnam") == "revoked"
    odd = {**revocation.to_payload(), "revoked_at": now.strftime("%Y%m%dT%H%M%SZ")}  # a form Date.parse misreads
    signed_odd = sign_envelope(odd, world.authority.key, AUTHORITY_KEYID)
    assert require({**doc, "revocations": [signed_odd]}, "cnam") == "untrusted"  # fail closed, never ignored

    sent = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--as-is", "--to", "cnam")
    transfer = sent_ids(sent.out)["cnam"]
    with world.client("cnam") as cnam:
        envelope = next(x for x in cnam.transfers("inbox") if x["transfer_id"] == transfer)["manifest"]
    cnam_party = {"name": "cnam", "recipients": [world.parties["cnam"].age_recipient]}

    def manifest(env: dict[str, Any], party: dict[str, Any], tid: str = transfer, now_ms: int | None = None) -> str:
        return str(
            tab.page.evaluate(
                "([d, pem, p, e, t, n]) => globalThis.labrelay.checkManifest(d, pem, p, e, t, n ?? undefined)",
                [doc, authority_pem, party, env, tid, now_ms],
            )
        )

    assert manifest(envelope, cnam_party) == "ok"
    assert "not addressed" in manifest(envelope, {**cnam_party, "name": "ars-11"})
    assert "do not hold" in manifest(envelope, {**cnam_party, "recipients": [world.parties["ars-11"].age_recipient]})
    assert "does not match" in manifest(envelope, cnam_party, tid=str(uuid.uuid4()))
    assert "after its deadline" in manifest(envelope, cnam_party, now_ms=int((now.timestamp() + 400 * 86400) * 1000))
    tampered = copy.deepcopy(envelope)
    tampered["payload"]["size"] += 1
    assert "bad signature" in manifest(tampered, cnam_party)


def signed_get(world: World, name: str, path: str) -> httpx.Response:
    url = world.url + path
    headers: dict[str, str] = {}
    party = world.parties[name]
    httpsig.sign_request("GET", url, headers, None, keyid=name, key=party.signing_key, now=datetime.now(UTC))
    return httpx.get(url, headers=headers, timeout=30)


@pytest.mark.threat("T22")
def test_the_console_shows_an_enumeration_alert_and_a_freeze_taking_effect(
    web_world: World, open_tab, batch: Path, cli
) -> None:
    world = web_world
    # A routed send restricted to ars-11 (the policy gives unparsed documents to cnam only).
    sent = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "ars-11")
    assert sent.code == 0, str(sent)
    tab: Tab = open_tab(world.url, locale="en-GB")
    tab.add_passkey_device()
    tab.goto("/enrol?lang=en")
    tab.page.set_input_files("#party-files", files_of(world, "ops-01"))
    tab.page.locator("#register").click()
    tab.wait_status("ok")
    tab.shot("enrol-en")
    assert len(tab.passkeys()) == 1

    tab.goto("/?lang=en")
    tab.shot("console-sign-in-en")
    tab.page.keyboard.press("Enter")  # the sign-in button has the focus
    tab.page.wait_for_selector("#relay-state")
    assert "Relay open" in tab.page.locator("#relay-state").inner_text()

    # The enumeration scenario: cnam asks for 25 transfers that do not exist.
    statuses = {signed_get(world, "cnam", f"/v1/transfers/{uuid.uuid4()}/payload").status_code for _ in range(25)}
    assert statuses <= {404, 403}
    tab.goto("/?lang=en")
    alerts = tab.page.locator("#alerts").inner_text()
    assert "Transfer enumeration" in alerts
    assert "cnam" in alerts
    batches = tab.page.locator("#batches").inner_text()  # the routed send above: one batch, nothing fetched yet
    assert "0 of 1 delivered" in batches
    assert "1 waiting" in batches

    tab.page.locator("#freeze").click()
    tab.wait_status("ok")
    tab.page.wait_for_selector("#unfreeze")
    assert "frozen" in tab.page.locator("#relay-state").inner_text().lower()
    with pytest.raises(RelayFrozen), world.client("ars-11") as ars:
        ars.transfers("inbox")
    tab.page.locator("#audit-verify").click()
    assert "intact" in tab.wait_status("ok")
    tab.shot("console-frozen-en")
    tab.page.locator("#unfreeze").click()
    tab.wait_status("ok")
    tab.page.wait_for_selector("#freeze")
    with world.client("ars-11") as ars:
        assert len(ars.transfers("inbox")) == 1
    same_origin_only(tab)
    assert world.db("SELECT signer, action FROM admin_commands ORDER BY at") == [
        ("ops-01", "freeze"),
        ("ops-01", "unfreeze"),
    ]
    fr = tab.page.context.new_page()
    fr.goto(tab.base + "/?lang=fr")
    fr.wait_for_selector("#relay-state")
    assert "Relais ouvert" in fr.locator("#relay-state").inner_text()
    if tab.page.context:  # the same session, in French
        Tab(fr, tab.base).shot("console-fr")


@pytest.mark.threat("T23")
def test_pages_load_nothing_from_elsewhere_and_the_policy_stops_injected_script(web_world: World, open_tab) -> None:
    tab: Tab = open_tab(web_world.url)
    for path in ("/", "/enrol", "/lab", "/inbox"):
        tab.goto(path + "?lang=fr")
        assert tab.page.locator("h1").count() == 1
    response = httpx.get(localhost(web_world.url) + "/lab", timeout=30)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    injected = tab.page.evaluate(
        """() => { const s = document.createElement('script'); s.textContent = 'window.pwned = 1';
                   document.body.append(s); return window.pwned === undefined; }"""
    )
    assert injected is True
    assert any("Content Security Policy" in e for e in tab.errors), tab.errors
    same_origin_only(tab)


def test_the_browser_validator_gives_the_clis_answers_on_the_shared_vectors(web_world: World, open_tab) -> None:
    vectors = json.loads((REPO / "tests" / "vectors" / "web_validation.json").read_text(encoding="utf-8"))
    tab: Tab = open_tab(web_world.url)
    tab.goto("/lab")
    results = tab.page.evaluate("async (vectors) => globalThis.labrelay.runVectors(vectors)", vectors)
    assert results["count"] >= 40
    assert results["failures"] == [], results["failures"][:5]


def test_the_signed_objects_of_the_page_verify_in_python_and_back(web_world: World, open_tab) -> None:
    """The envelope vector (made by the Python signer) verifies in the page; a tampered copy does not."""
    vector = json.loads((REPO / "tests" / "vectors" / "labrelay_envelope_v1.json").read_text(encoding="utf-8"))
    secret = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["secret_key_hex"]))
    raw = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    vector["public_b64url"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    tab: Tab = open_tab(web_world.url)
    tab.goto("/lab")
    ok = tab.page.evaluate("async (v) => globalThis.labrelay.checkEnvelopeVector(v)", vector)
    assert ok == {"genuine": True, "tampered": False}


def test_every_text_exists_in_french_and_english(web_world: World, open_tab) -> None:
    """The catalogue covers both languages, and every reason, rule, state and role the relay can show."""
    tab: Tab = open_tab(web_world.url)
    tab.goto("/")
    catalogue = tab.page.evaluate("() => globalThis.labrelay.catalogue()")
    fr, en = catalogue["fr"], catalogue["en"]
    english_reasons = {k for k in fr if k.startswith("reason.")}  # English shows the CLI's own words
    assert set(fr) - english_reasons == set(en)
    wanted = {f"reason.{r.value}" for r in Reason if r is not Reason.STRUCTURE}
    wanted |= {f"rule.{rule}" for rule in RULES}
    wanted |= {f"state.{s.value}" for s in TransferState}
    wanted |= {f"role.{r.value}" for r in CONSOLE_ROLES}
    assert wanted <= set(fr), sorted(wanted - set(fr))
    assert all(v.strip() for v in (*fr.values(), *en.values()))
