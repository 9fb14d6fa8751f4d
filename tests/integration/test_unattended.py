"""labrelay as a lab's IT person and a CNAM operator run it, every night, with nobody watching: each scenario of
the fail-closed issue, replayed with the CLI against a real relay.

- nothing unminimised reaches Santé publique France, whatever the file's shape;
- the same file twice reaches each recipient once; an interrupted send is finished, never repeated;
- a batch that sends nothing is a failure (exit 1), thresholds make stricter jobs, JSON is there for scripts;
- held shares do not hold up the other recipients, and are delivered once their recipient is enrolled;
- resume goes on past an entry that can never be uploaded;
- one run per party at a time; a killed run leaves nothing behind;
- no sender can block a recipient's inbox; nothing is written through a planted link;
- what recipients load (CSV, Excel, Parquet) carries no formula and keeps its batch and sender.

These exercise the client's edges, which are the same whatever the relay's storage: they run on the embedded
relay only (the scaled deployment's refusals are proved in test_refusal_relay.py and test_refusals.py).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from labrelay.client.api import RelayClient
from labrelay.client.lock import party_lock
from labrelay.client.routed import SendOptions, send_results
from labrelay.client.send import seal
from labrelay.client.trust import TrustedDirectory
from labrelay.clock import SystemClock
from labrelay.domain.parties import Role
from labrelay.domain.records import FIELDS
from labrelay.errors import Unavailable
from labrelay.synthetic.generator import write_csv_file, write_file
from tests.support.world import CliResult, World, call_cli, make_world, run_cli, swap_one_byte

TODAY = date.today()  # noqa: DTZ011 - a calendar day for the generator


@pytest.fixture
def world(tmp_path: Path, relay_factory) -> World:
    """The usual world (a lab, cnam, ars-11, a DPO) plus Santé publique France, on the embedded relay."""
    made = make_world(tmp_path / "world", relay_factory)
    made.add("spf", Role.RECIPIENT)
    return made


def cli(world: World, *args: str | Path) -> CliResult:
    return call_cli(*args, cwd=world.root)


def send(world: World, source: Path, *args: str) -> CliResult:
    return cli(world, "send", source, "--as", world.party_dir("lab-paris-01"), "--server", world.url, *args)


def send_json(world: World, source: Path, *args: str) -> tuple[int, dict]:
    result = send(world, source, "--json", *args)
    return result.code, json.loads(result.out)


def fetch(world: World, name: str, out: Path, *args: str) -> tuple[CliResult, dict]:
    result = cli(world, "fetch", "--as", world.party_dir(name), "--server", world.url, "--out", out, "--json", *args)
    return result, json.loads(result.out)


def send_held(world: World, batch: str) -> tuple[int, dict]:
    lab = world.party_dir("lab-paris-01")
    result = cli(world, "send", "--held", batch, "--as", lab, "--server", world.url, "--json")
    return result.code, json.loads(result.out)


def transfers_on_relay(world: World) -> int:
    return world.db("SELECT count(*) FROM transfers")[0][0]


def batch_file(tmp_path: Path, name: str, records: int = 300, seed: int = 7, **kwargs) -> Path:
    path = tmp_path / name
    write_file(path, records, seed=seed, today=TODAY, **kwargs)
    return path


def identifiers_of(source: Path) -> set[bytes]:
    """Values that must never reach a pseudonymised recipient: NIRs, names, e-mail addresses."""
    with source.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    found = set()
    for row in rows:
        for column, value in row.items():
            if column and column.strip().lower() in ("nir", "nom", "email") and value and len(value) >= 6:
                found.add(value.encode())
    return found


# ------------------------------------------------------------------ 1. unparsed only when asked


@pytest.mark.threat("T14")
@pytest.mark.parametrize("shape", ["no email column", "upper-case header with a BOM", "optional columns left out"])
def test_a_results_file_of_another_shape_is_routed_never_sent_unparsed(
    world: World, tmp_path: Path, shape: str
) -> None:
    """On the main branch of 2026-12-03, these went to SpF whole (NIR, names, addresses), exit 0."""
    source = batch_file(tmp_path, "original.csv")
    frame = pl.read_csv(source, infer_schema=False)
    if shape == "no email column":
        frame = frame.drop("email")
    elif shape == "optional columns left out":
        frame = frame.drop("email", "telephone", "adresse", "prescripteur_nom")
    else:
        frame = frame.rename({c: f" {c.upper()} " for c in frame.columns})
    reshaped = tmp_path / "reshaped.csv"
    body = frame.write_csv()
    reshaped.write_bytes((b"\xef\xbb\xbf" if "BOM" in shape else b"") + body.encode())
    code, doc = send_json(world, reshaped, "--to", "spf")
    assert code == 0, doc
    assert doc["summary"]["read"] == 300
    assert doc["summary"]["accepted"] + doc["summary"]["held_for_review"] == 300
    result, fetched = fetch(world, "spf", tmp_path / "spf")
    assert result.code == 0, str(result)
    [payload] = fetched["fetched"]
    assert payload["unparsed"] is False
    received = Path(payload["file"]).read_bytes()
    assert received.splitlines()[0].startswith(b"pseudonyme,age,sexe")
    leaked = [v for v in identifiers_of(source) if v in received]
    assert leaked == []


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("xlsx", "Excel workbook"),
        ("utf16", "UTF-16 text"),
        ("columns", "columns found: nom, naissance, test; expected: nir, nom"),
        ("no-header", "names none of the template's columns (3 fields, not shown"),
    ],
)
def test_a_file_that_is_not_results_is_refused_with_what_was_found(
    world: World, tmp_path: Path, content: str, needle: str
) -> None:
    source = tmp_path / "results.csv"
    if content == "xlsx":
        import zipfile  # noqa: PLC0415

        with zipfile.ZipFile(source, "w") as book:
            book.writestr("[Content_Types].xml", "<Types/>")
            book.writestr("xl/workbook.xml", "<workbook/>")
    elif content == "utf16":
        write_csv_file(tmp_path / "utf8.csv", 20, seed=2, today=TODAY)
        source.write_bytes((tmp_path / "utf8.csv").read_text(encoding="utf-8").encode("utf-16"))
    elif content == "columns":
        source.write_text("nom;naissance;test\nDUPONT;1980-01-01;positif\n", encoding="utf-8")
    else:  # the header line left out: its first record is not repeated in the refusal
        source.write_text("DUPONT;1980-01-01;positif\nMARTIN;1981-02-02;negatif\n", encoding="utf-8")
    for extra in ((), ("--to", "spf"), ("--to", "cnam")):
        result = send(world, source, *extra)
        assert result.code == 2, str(result)
        assert needle in result.err
        assert len(result.err.strip().splitlines()) == 1
        assert "DUPONT" not in result.err  # a record's values are never repeated in a refusal
    assert transfers_on_relay(world) == 0


@pytest.mark.threat("T25")
def test_as_is_only_to_a_recipient_the_policy_lets_receive_unparsed_documents(world: World, tmp_path: Path) -> None:
    source = batch_file(tmp_path, "results.csv")
    for recipient in ("spf", "ars-11"):
        refused = send(world, source, "--as-is", "--to", recipient)
        assert refused.code == 3, str(refused)
        assert "never unparsed" in refused.err or "pseudonymised" in refused.err
    assert transfers_on_relay(world) == 0
    assert send(world, source, "--as-is", "--to", "cnam").code == 0
    result, fetched = fetch(world, "cnam", tmp_path / "cnam")
    assert result.code == 0
    [payload] = fetched["fetched"]
    assert payload["unparsed"] is True
    assert fetched["unparsed"] == 1
    human = cli(world, "fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", tmp_path / "again")
    assert "nothing waiting" in human.out


# ------------------------------------------------------------------ 2. idempotent sends


def test_the_same_file_twice_reaches_each_recipient_once(world: World, tmp_path: Path) -> None:
    source = batch_file(tmp_path, "results.csv")
    code, first = send_json(world, source, "--to", "cnam", "--to", "ars-11")
    assert code == 0, first
    assert set(first["transfers"]) == {"cnam", "ars-11"}
    again = send(world, source, "--to", "cnam", "--to", "ars-11")
    assert again.code == 0, str(again)
    assert f"already sent as batch {first['batch_id']} (0 of 2 delivered)" in again.out
    assert transfers_on_relay(world) == 2
    result, cnam = fetch(world, "cnam", tmp_path / "cnam")
    assert result.code == 0
    assert len(cnam["fetched"]) == 1
    assert "(1 of 2 delivered)" in send(world, source, "--to", "cnam", "--to", "ars-11").out
    asked_more = send(world, source, "--to", "cnam", "--to", "spf")
    assert asked_more.code == 2, str(asked_more)
    assert "--again" in asked_more.err
    # A file sent before is not a reason to skip what the command gets wrong: each of these exited 0, "already
    # sent", sending nothing and checking nothing.
    every = send(world, source)  # sent with --to; now every recipient of the policy is asked for
    assert every.code == 2, str(every)
    assert "to ars-11, cnam only (--to)" in every.err
    assert "--again" in every.err
    too_long = send(world, source, "--to", "cnam", "--to", "ars-11", "--ttl", "400d")
    assert too_long.code == 2, str(too_long)
    assert "longer than the relay keeps payloads (30d)" in too_long.err  # the relay's maximum, not the ledger's
    short_ledger = send(world, source, "--to", "cnam", "--ttl", "20d", "--ledger-retention", "10d", "--again")
    assert short_ledger.code == 2, str(short_ledger)
    assert "--ttl 20d is longer than the ledger is kept (10d)" in short_ledger.err
    folder = send(world, tmp_path)
    assert folder.code == 2, str(folder)
    assert "is a directory, not a results file" in folder.err
    wrong_url = call_cli(
        "send",
        source,
        "--as",
        world.party_dir("lab-paris-01"),
        "--server",
        world.url + "/api",
        "--to",
        "cnam",
        "--to",
        "ars-11",
        cwd=world.root,
    )
    assert wrong_url.code != 0, str(wrong_url)
    assert "already sent" not in wrong_url.out

    # The lab lost its record of what it sent (a reinstall): the recipient declines the second copy itself.
    lab = world.party_dir("lab-paris-01")
    for record in (lab / "batches").iterdir():
        record.unlink()
    code, second = send_json(world, source, "--to", "cnam")
    assert code == 0
    assert second["already_sent"] is False
    result, cnam = fetch(world, "cnam", tmp_path / "cnam")
    assert result.code == 0, str(result)
    assert cnam["fetched"] == []
    [duplicate] = cnam["duplicates"]
    assert duplicate["duplicate_of"] == first["transfers"]["cnam"]
    assert duplicate["acknowledged"] is True
    assert len(list((tmp_path / "cnam").glob("*.csv"))) == 1
    receipts = cli(world, "receipts", "--as", lab, "--server", world.url)
    assert receipts.code == 0, str(receipts)
    assert "duplicate" in next(line for line in receipts.out.splitlines() if second["transfers"]["cnam"] in line)
    assert world.stored() == [first["transfers"]["ars-11"]]  # cnam's two payloads are both gone from the relay

    # A resend on purpose is delivered, and marked as such.
    code, third = send_json(world, source, "--to", "cnam", "--again")
    assert code == 0
    result, cnam = fetch(world, "cnam", tmp_path / "cnam")
    [resent] = cnam["fetched"]
    assert resent["transfer_id"] == third["transfers"]["cnam"]
    assert resent["sent_again"] is True


def test_an_original_listed_after_its_again_copy_is_still_delivered(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay orders an inbox by ``created_at`` in whole seconds and breaks ties at random: a batch and its
    ``--again`` copy sent within one second may be listed the copy first. The original must not then be declined as
    a duplicate of its own copy: fetch takes them in the order they were sent (CI saw the copy first once)."""
    source = batch_file(tmp_path, "results.csv")
    code, first = send_json(world, source, "--to", "cnam")
    assert code == 0, first
    code, second = send_json(world, source, "--to", "cnam", "--again")
    assert code == 0, second
    listed = RelayClient.transfers

    def copy_first(self: RelayClient, box: str) -> list[dict]:
        items = listed(self, box)
        items.sort(key=lambda item: item["manifest"]["payload"].get("again") is not True)  # the --again copy first
        return items

    monkeypatch.setattr(RelayClient, "transfers", copy_first)
    result, cnam = fetch(world, "cnam", tmp_path / "cnam")
    assert result.code == 0, str(result)
    assert cnam["duplicates"] == []
    fetched = {f["transfer_id"]: f for f in cnam["fetched"]}
    assert set(fetched) == {first["transfers"]["cnam"], second["transfers"]["cnam"]}
    assert fetched[second["transfers"]["cnam"]]["sent_again"] is True
    assert fetched[first["transfers"]["cnam"]]["sent_again"] is False


def test_a_source_sent_before_is_finished_whatever_a_new_plan_would_say(world: World, tmp_path: Path) -> None:
    """The plan (policy, recipients, DPO) is made while the source is hashed; for a source sent before it is not
    used, and its failure is not raised: the batch is finished as it was before the plan was made first."""
    source = batch_file(tmp_path, "results.csv")
    code, first = send_json(world, source, "--to", "cnam")
    assert code == 0, first
    again = send(world, source, "--to", "cnam", "--dpo", "cnam")  # cnam is no DPO: a new plan is refused
    assert again.code == 0, str(again)
    assert f"already sent as batch {first['batch_id']}" in again.out
    refused = send(world, source, "--to", "cnam", "--dpo", "cnam", "--again")
    assert refused.code != 0, str(refused)
    assert "cnam" in refused.err
    assert transfers_on_relay(world) == 1


class DropsAfterFirstUpload:
    """Wraps the relay client: the connection drops after the first payload of the batch is uploaded. Payloads are
    uploaded several at a time (client/send.upload_all): the others wait for the first to finish, then fail."""

    def __init__(self, client) -> None:
        self._client = client
        self.uploads = 0
        self._one_at_a_time = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def upload(self, *args, **kwargs) -> None:
        with self._one_at_a_time:
            if self.uploads >= 1:
                raise Unavailable("connection reset by peer")
            self.uploads += 1
            self._client.upload(*args, **kwargs)


def test_an_interrupted_send_is_finished_by_the_next_never_repeated(world: World, tmp_path: Path) -> None:
    """On the main branch of 2026-12-03: re-running send re-sent the whole batch, and resume the pending part a
    third time."""
    source = batch_file(tmp_path, "results.csv")
    lab = world.parties["lab-paris-01"]
    # Retries as the CLI makes them: the first payload's upload overlaps the second's creation on a loaded relay.
    client = RelayClient(world.url, lab.name, lab.signing_key, SystemClock(), retries=4, backoff=0.1)
    with client, pytest.raises(Unavailable):
        send_results(
            lab, DropsAfterFirstUpload(client), source, SystemClock(), SendOptions(restrict=["cnam", "ars-11"])
        )
    assert transfers_on_relay(world) == 2  # both created; one upload cut short
    again = send(world, source, "--to", "cnam", "--to", "ars-11")
    assert again.code == 0, str(again)
    assert "already sent as batch" in again.out
    assert "finished 1 interrupted upload" in again.out
    resumed = cli(world, "resume", "--as", lab.path, "--server", world.url)
    assert "nothing to resume" in resumed.out
    assert transfers_on_relay(world) == 2
    for name in ("cnam", "ars-11"):
        result, fetched = fetch(world, name, tmp_path / name)
        assert result.code == 0
        assert len(fetched["fetched"]) == 1


# ------------------------------------------------------------------ 3. exit codes and output scripts can trust


def test_a_batch_that_sends_nothing_is_a_failure(world: World, tmp_path: Path) -> None:
    """On the main branch of 2026-12-03: 'sent 0 transfers', exit 0."""
    hopeless = batch_file(tmp_path, "hopeless.csv", 50, defects=1.0)
    code, doc = send_json(world, hopeless)
    assert code == 1
    assert doc["ok"] is False
    assert doc["error"]["code"] == "nothing-sent"
    assert "every one of the 50 records was rejected" in doc["error"]["message"]
    human = send(world, hopeless)
    assert human.code == 1
    assert human.err.count("\n") == 1  # one line
    assert transfers_on_relay(world) == 0
    reports = list((world.party_dir("lab-paris-01") / "reports").glob("*.rejections.csv"))
    assert reports, "the rejection report is kept for the lab to read"
    lab_dir = world.party_dir("lab-paris-01")
    assert not list((lab_dir / "outbox").iterdir())
    assert not [p for p in (lab_dir / "ledger").iterdir() if p.is_file()]


def test_thresholds_for_stricter_jobs(world: World, tmp_path: Path) -> None:
    flawed = batch_file(tmp_path, "flawed.csv", 400, seed=5, defects=0.05)
    code, doc = send_json(world, flawed, "--max-rejected", "1%")
    assert code == 1
    assert "more than --max-rejected 1%" in doc["error"]["message"]
    code, doc = send_json(world, flawed, "--max-rejected", "5")
    assert code == 1
    # Residents of regions whose ARS is not enrolled (only ars-11 is): held shares, refused by --fail-on-held.
    code, doc = send_json(world, flawed, "--fail-on-held")
    assert code == 1
    assert "--fail-on-held" in doc["error"]["message"]
    assert "ars-84 not enrolled" in doc["error"]["message"]
    assert transfers_on_relay(world) == 0
    bad = send(world, flawed, "--max-rejected", "lots")
    assert bad.code == 2
    code, doc = send_json(world, flawed, "--max-rejected", "50%")
    assert code == 0, doc
    assert doc["ok"] is True
    assert doc["summary"]["rejected"] > 0


# ------------------------------------------------------------------ 4. held shares


def test_a_preview_before_spf_is_enrolled_says_a_send_would_not_start_and_what_to_do(
    tmp_path: Path, relay_factory
) -> None:
    """The trial of docs/deployment.md has CNAM enrolled, not yet SpF. The preview refused with "restrict the send
    with --to", an option validate does not have; it now says what a send would do and what can be done."""
    world = make_world(tmp_path / "world", relay_factory)  # no SpF
    source = batch_file(tmp_path, "results.csv", 50, seed=12)
    preview = cli(world, "validate", source, "--as", world.party_dir("lab-paris-01"), "--server", world.url)
    assert preview.code == 2, str(preview)
    assert "sends to spf, which is not enrolled: a send would refuse to start" in preview.err
    assert "labrelay send FILE --to NAME" in preview.err
    assert "restrict the send with --to" not in preview.err
    alone = cli(world, "validate", source)  # the file alone: fine
    assert alone.code == 0, str(alone)


@pytest.mark.threat("T14")
def test_held_shares_do_not_hold_up_the_others_and_are_delivered_later(world: World, tmp_path: Path) -> None:
    """On the main branch of 2026-12-03: with one ARS enrolled, 58% of a batch was held, positives included, and
    never reached CNAM."""
    source = batch_file(tmp_path, "results.csv", 1500, seed=11)
    lab = world.party_dir("lab-paris-01")
    preview = cli(world, "validate", source, "--as", lab, "--server", world.url, "--json")
    assert preview.code == 0, str(preview)
    expected = json.loads(preview.out)["summary"]
    sent = send(world, source)
    assert sent.code == 0, str(sent)
    code, doc = send_json(world, source, "--again")  # the same numbers as JSON (a new batch, on purpose)
    summary = doc["summary"]
    assert summary["per_recipient"] == expected["per_recipient"]
    assert summary["held_for"] == expected["held_for"]
    lyon = summary["held_for"]["ars-84"]
    assert lyon["records"] > 0
    assert f"ars-84 not enrolled: {lyon['records']} records held, {lyon['positives']} positives" in sent.out
    assert "labrelay send --held " in sent.out  # what to run once the ARS is enrolled
    # CNAM got every valid positive, whatever the region; SpF every valid record.
    result, cnam = fetch(world, "cnam", tmp_path / "cnam")
    assert result.code == 0
    valid = summary["accepted"] + summary["held_for_review"]
    rows = {f["batch_id"]: f["records"] for f in cnam["fetched"]}
    assert rows[doc["batch_id"]] == summary["per_recipient"]["cnam"]
    result, spf = fetch(world, "spf", tmp_path / "spf")
    assert {f["batch_id"]: f["records"] for f in spf["fetched"]}[doc["batch_id"]] == valid

    world.add("ars-84", Role.RECIPIENT, "84")
    code, delivered = send_held(world, doc["batch_id"][:8])
    assert code == 0, delivered
    assert delivered["send"]["transfers"].keys() == {"ars-84"}
    assert delivered["send"]["summary"]["per_recipient"] == {"ars-84": lyon["records"]}
    assert "ars-84" not in delivered["still_held"]
    result, ars = fetch(world, "ars-84", tmp_path / "ars-84")
    [share] = ars["fetched"]
    assert share["records"] == lyon["records"]
    rows = pl.read_csv(share["file"], infer_schema=False)
    assert set(rows["code_commune_insee"].str.slice(0, 2).to_list()) <= {"01", "03", "07", "15", "26", "38"} | {
        "42",
        "43",
        "63",
        "69",
        "73",
        "74",
    }
    code, again = send_held(world, doc["batch_id"][:8])
    assert code == 1  # nothing left to deliver to an enrolled recipient
    assert "still held" in again["error"]["message"]
    result, cnam = fetch(world, "cnam", tmp_path / "cnam")
    assert cnam["fetched"] == []  # CNAM received nothing twice


# ------------------------------------------------------------------ resume


def test_resume_goes_on_past_an_entry_that_can_never_be_uploaded(world: World, tmp_path: Path) -> None:
    """On the main branch of 2026-12-03: one entry over the relay's maximum made every later resume exit 2, and the
    other uploads stayed stuck until files were deleted by hand."""
    lab = world.parties["lab-paris-01"]
    with world.client("lab-paris-01") as client:
        cnam = TrustedDirectory(lab.authority, client.directory(), SystemClock().now()).require(
            "cnam", {Role.RECIPIENT}
        )
    stuck: list[str] = []
    fine: list[str] = []
    for i in range(4):
        document = tmp_path / f"doc-{i}.txt"
        document.write_text(f"document {i}\n" * 50)
        ttl = timedelta(days=31) if i % 2 == 0 else timedelta(days=1)  # the relay keeps at most 30 days
        [state] = seal(lab, document, [cnam], ttl, SystemClock())
        (stuck if i % 2 == 0 else fine).append(state.stem)
    result = cli(world, "resume", "--as", lab.path, "--server", world.url, "--json")
    assert result.code == 2, str(result)
    doc = json.loads(result.out)
    assert sorted(u["transfer_id"] for u in doc["uploaded"]) == sorted(fine)
    assert sorted(s["transfer_id"] for s in doc["stuck"]) == sorted(stuck)
    human = cli(world, "resume", "--as", lab.path, "--server", world.url)
    assert human.code == 2
    assert f"labrelay resume --discard {stuck[0][:8]}" in human.err
    for transfer_id in stuck:
        gone = cli(world, "resume", "--as", lab.path, "--server", world.url, "--discard", transfer_id[:8])
        assert gone.code == 0, str(gone)
    done = cli(world, "resume", "--as", lab.path, "--server", world.url)
    assert done.code == 0
    assert "nothing to resume" in done.out


# ------------------------------------------------------------------ one run per party; killed runs


def test_one_run_per_party_at_a_time(world: World, tmp_path: Path) -> None:
    """On the main branch of 2026-12-03, two fetches at once: one died with 'internal error (FileNotFoundError)'."""
    cnam = world.party_dir("cnam")
    with party_lock(cnam, "cnam", "fetch"):
        busy = cli(world, "fetch", "--as", cnam, "--server", world.url, "--out", tmp_path / "o")
        assert busy.code == 1
        assert busy.err.strip() == (
            f"labrelay: error: another fetch for cnam is running (pid {os.getpid()}) "
            "(it holds this party's lock until it ends; wait for it, or pass --wait DURATION)"
        )
        doc = json.loads(cli(world, "fetch", "--as", cnam, "--server", world.url, "--out", tmp_path, "--json").out)
        assert doc["error"]["code"] == "busy"
        waiting = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "labrelay",
                "fetch",
                "--as",
                str(cnam),
                "--server",
                world.url,
                "--out",
                str(tmp_path / "o"),
                "--wait",
                "60s",
            ],
            env={**os.environ, "LABRELAY_QUIET": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(2)
        assert waiting.poll() is None  # still waiting for the lock
    _out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err


def _opened_unnamed(pid: int, folder: Path) -> bool:
    """Has process ``pid`` an unnamed file open in ``folder`` (an O_TMPFILE being written)?"""
    with_fds = Path(f"/proc/{pid}/fd")
    try:
        targets = [os.readlink(fd) for fd in with_fds.iterdir()]
    except OSError:
        return False
    return any(t.startswith(str(folder) + "/#") for t in targets)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_send_or_validate_leaves_nothing_behind(world: World, tmp_path: Path, how: signal.Signals) -> None:
    source = tmp_path / "big.csv"
    write_csv_file(source, 60_000, seed=3, today=TODAY)
    lab = world.party_dir("lab-paris-01")
    report = tmp_path / "reports" / "report.csv"
    report.parent.mkdir()
    runs = {
        "send": (["send", str(source), "--as", str(lab), "--server", world.url], lab / "outbox"),
        "validate": (["validate", str(source), "--report", str(report)], report.parent),
    }
    for command, (args, watched) in runs.items():
        proc = subprocess.Popen(
            [sys.executable, "-m", "labrelay", *args],
            env={**os.environ, "LABRELAY_QUIET": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while not _opened_unnamed(proc.pid, watched) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert _opened_unnamed(proc.pid, watched), f"{command} never started writing"
        proc.send_signal(how)
        proc.communicate(timeout=60)
        assert proc.returncode in (-signal.SIGKILL, 143), (command, proc.returncode)
    left = [p for d in ("outbox", "reports", "ledger", "batches") for p in (lab / d).glob("*") if p.is_file()]
    assert left == [], left
    assert list(report.parent.iterdir()) == []
    assert transfers_on_relay(world) == 0
    again = send(world, source)  # and the next run sends it whole
    assert again.code == 0, str(again)


# ------------------------------------------------------------------ 5. an inbox no sender can block


@pytest.mark.threat("T24")
def test_a_payload_that_fails_a_check_is_refused_once_and_never_blocks_the_inbox(world: World, tmp_path: Path) -> None:
    """On the main branch of 2026-12-03: it stayed in the inbox, downloaded again and refused on every run."""
    spoiled = batch_file(tmp_path, "spoiled.csv", 100, seed=1)
    code, first = send_json(world, spoiled, "--to", "cnam")
    assert code == 0, first
    tampered = first["transfers"]["cnam"]
    swap_one_byte(world, tampered)
    _code, second = send_json(world, batch_file(tmp_path, "fine.csv", 100, seed=2), "--to", "cnam")
    result, doc = fetch(world, "cnam", tmp_path / "cnam")
    assert result.code == 3, str(result)
    [(refused)] = doc["refused"]
    assert refused["transfer_id"] == tampered
    assert refused["code"] == "integrity"
    assert [f["transfer_id"] for f in doc["fetched"]] == [second["transfers"]["cnam"]]
    # The relay took the signed refusal: never offered again; the sender is told why.
    assert world.db("SELECT quarantined_at IS NOT NULL FROM transfers WHERE id = :id", id=tampered) == [(1,)]
    receipts = cli(world, "receipts", "--as", world.party_dir("lab-paris-01"), "--server", world.url)
    assert "refused by cnam" in next(line for line in receipts.out.splitlines() if tampered in line)
    result, doc = fetch(world, "cnam", tmp_path / "cnam")
    assert result.code == 0, str(result)
    assert doc["fetched"] == []
    assert doc["refused"] == []
    served = world.db(
        "SELECT count(*) FROM audit_events WHERE event = 'download:serve' AND transfer_id = :t", t=tampered
    )
    assert served == [(1,)]


def test_an_unparsed_csv_with_a_huge_field_is_fetched(world: World, tmp_path: Path) -> None:
    """On the main branch of 2026-12-03: a field over 128 KiB crashed fetch (csv field limit) for good."""
    document = tmp_path / "notes.csv"
    document.write_text('a,b\n1,"' + "x" * 300_000 + '"\n2,"two\nlines"\n', encoding="utf-8")
    assert send(world, document, "--as-is", "--to", "cnam").code == 0
    result, doc = fetch(world, "cnam", tmp_path / "cnam")
    assert result.code == 0, str(result)
    [payload] = doc["fetched"]
    assert payload["records"] == 2
    assert Path(payload["file"]).read_bytes() == document.read_bytes()


@pytest.mark.threat("T26")
@pytest.mark.parametrize("plant", ["output name", "work directory", "output directory", "shared directory"])
def test_fetch_writes_nothing_through_a_planted_link(world: World, tmp_path: Path, plant: str) -> None:
    """Whoever can write in --out must not make fetch overwrite another file: a planted symbolic link, or a
    directory others may write to, is refused (exit 3) and nothing is written through it."""
    code, doc = send_json(world, batch_file(tmp_path, "results.csv"), "--to", "cnam")
    assert code == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me\n")
    out = tmp_path / "inbox"
    out.mkdir()
    stem = f"{datetime.now(UTC):%Y-%m-%d}_lab-paris-01_{doc['batch_id'][:8]}_cnam"
    if plant == "output name":
        (out / f"{stem}.csv").symlink_to(victim / "precious.txt")
    elif plant == "work directory":
        (out / ".labrelay").symlink_to(victim)
    elif plant == "output directory":
        out.rmdir()
        out.symlink_to(victim)
    else:
        out.chmod(0o777)
    result = cli(world, "fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", out)
    assert result.code == 3, str(result)
    assert "refus" in result.err
    assert (victim / "precious.txt").read_text() == "keep me\n"
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert world.db("SELECT state FROM transfers") == [("available",)]  # nothing acknowledged
    # Positive control: the same fetch into a safe directory works.
    result, fetched = fetch(world, "cnam", tmp_path / "safe")
    assert result.code == 0, str(result)
    assert len(fetched["fetched"]) == 1


# ------------------------------------------------------------------ 6. outputs people load


@pytest.mark.threat("T27")
def test_formula_like_values_never_reach_a_spreadsheet(world: World, tmp_path: Path) -> None:
    source = batch_file(tmp_path, "results.csv", 600, seed=21)
    frame = pl.read_csv(source, infer_schema=False)
    positives = frame.with_row_index("i").filter(pl.col("resultat") == "POSITIF")["i"].to_list()
    poisoned = {positives[0]: "=HYPERLINK(1)", positives[1]: "+cmd", positives[2]: "-2+3", positives[3]: "@SUM(A1)"}
    frame = frame.with_row_index("i").with_columns(
        pl.col("i").replace_strict(poisoned, default=pl.col("nom"), return_dtype=pl.String).alias("nom")
    )
    frame.drop("i").write_csv(source)
    code, doc = send_json(world, source, "--to", "cnam")
    assert code == 0
    report = pl.read_csv(doc["reports"]["rejections"], infer_schema=False)
    formula = report.filter(pl.col("reason") == "formula-like value")
    assert sorted(int(r) - 1 for r in formula["record"].to_list()) == sorted(poisoned)
    result, fetched = fetch(world, "cnam", tmp_path / "excel", "--format", "excel")
    assert result.code == 0, str(result)
    [excel] = fetched["fetched"]
    raw = Path(excel["file"]).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(raw[3:].decode("utf-8").splitlines(), delimiter=";"))
    assert rows[0][-2:] == ["batch_id", "sender"]
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")) or (cell.startswith('="') and cell[2:-1].isdigit())
        assert row[-1] == "lab-paris-01"
    nir = rows[0].index("nir")
    digits = [row[nir] for row in rows[1:] if row[nir][2:-1].isdigit()]
    assert digits
    assert all(value.startswith('="') for value in digits)


def test_fetch_writes_parquet_with_typed_columns(world: World, tmp_path: Path) -> None:
    code, doc = send_json(world, batch_file(tmp_path, "results.csv", 300), "--to", "spf")
    assert code == 0
    result, fetched = fetch(world, "spf", tmp_path / "parquet", "--format", "parquet")
    assert result.code == 0, str(result)
    [payload] = fetched["fetched"]
    assert payload["file"].endswith("_spf.parquet")
    table = pl.read_parquet(payload["file"])
    assert table.schema["date_prelevement"] == pl.Date
    assert table.schema["age"].is_integer()
    assert table.schema["code_commune_insee"] == pl.String
    assert set(table["batch_id"].to_list()) == {doc["batch_id"]}
    assert table.height == payload["records"]


def test_validate_send_fetch_receipts_and_resume_answer_in_json(world: World, tmp_path: Path) -> None:
    source = batch_file(tmp_path, "results.csv", 100)
    lab = world.party_dir("lab-paris-01")
    checked = json.loads(cli(world, "validate", source, "--json").out)
    assert checked["ok"] is True
    assert checked["summary"]["read"] == 100
    code, sent = send_json(world, source, "--to", "cnam")
    assert code == 0
    assert sent["uploaded"][0]["transfer_id"] == sent["transfers"]["cnam"]
    _, fetched = fetch(world, "cnam", tmp_path / "o")
    assert fetched["files"] == [fetched["fetched"][0]["file"]]
    assert fetched["records"] == fetched["fetched"][0]["records"]
    receipts = json.loads(cli(world, "receipts", "--as", lab, "--server", world.url, "--json").out)
    [item] = receipts["transfers"]
    assert item["transfer_id"] == sent["transfers"]["cnam"]
    assert item["state"] == "delivered"
    resumed = json.loads(cli(world, "resume", "--as", lab, "--server", world.url, "--json").out)
    assert resumed == {"ok": True, "command": "resume", "uploaded": [], "expired": [], "stuck": [], "exit_code": 0}
    failed = cli(world, "send", source, "--as", lab, "--server", "http://127.0.0.1:9", "--json", "--again")
    assert failed.code == 1
    assert json.loads(failed.out)["error"]["code"] == "unavailable"


def test_long_commands_end_with_time_records_and_throughput(world: World, tmp_path: Path) -> None:
    source = batch_file(tmp_path, "results.csv", 200)
    env = {"LABRELAY_QUIET": ""}
    sent = run_cli("send", source, "--as", world.party_dir("lab-paris-01"), "--server", world.url, env=env)
    assert sent.code == 0, str(sent)
    assert "… validating and routing results.csv" in sent.err
    last = sent.err.strip().splitlines()[-1]
    assert last.startswith("done in ")
    assert "200 records" in last
    assert "records/s" in last
    fetched = run_cli("fetch", "--as", world.party_dir("cnam"), "--server", world.url, "--out", tmp_path / "o", env=env)
    assert fetched.err.strip().splitlines()[-1].startswith("done in ")


def test_every_template_field_reaches_cnam_once_with_its_batch(world: World, tmp_path: Path) -> None:
    """The columns CNAM's loader relies on: the template's fields in the policy's order, then batch_id, sender."""
    _code, doc = send_json(world, batch_file(tmp_path, "results.csv", 300), "--to", "cnam")
    _, fetched = fetch(world, "cnam", tmp_path / "o")
    [payload] = fetched["fetched"]
    name = Path(payload["file"]).name
    assert name == f"{datetime.now(UTC):%Y-%m-%d}_lab-paris-01_{doc['batch_id'][:8]}_cnam.csv"
    assert Path(payload["manifest_file"]).is_file()
    header = Path(payload["file"]).read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header == [*FIELDS, "batch_id", "sender"]
