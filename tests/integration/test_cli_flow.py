"""The command-line contract, end to end, against a real relay process on a free port."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.keystore import Authority, Party
from labrelay.client.policy import default_policy_text
from labrelay.crypto import age_stream
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.parties import Role
from tests.support.world import CliResult, RelayServer, run_cli


@pytest.fixture
def cli(tmp_path: Path):
    """The CLI as a real child process: this module is its contract (exit codes, stdout and stderr as a script
    sees them); elsewhere the ``cli`` fixture calls it in-process."""

    def go(*args: str | Path, **kwargs) -> CliResult:
        kwargs.setdefault("cwd", tmp_path)
        return run_cli(*args, **kwargs)

    return go


@pytest.fixture(scope="session")
def age_tool() -> str:
    path = shutil.which("age")
    if path is None:
        pytest.fail(
            "the `age` command-line tool is required for interoperability tests "
            "(Debian: apt-get install age; .ci/run installs it)"
        )
    return path


def ok(result: CliResult) -> CliResult:
    assert result.code == 0, str(result)
    return result


def transfer_ids(text: str) -> list[str]:
    return [word for line in text.splitlines() for word in line.split() if len(word) == 36 and word.count("-") == 4]


@pytest.mark.threat("T1")
def test_cli_contract_send_fetch_raw_decrypts_with_age_byte_for_byte(cli, tmp_path: Path, age_tool: str) -> None:
    auth, data, parties = tmp_path / "auth", tmp_path / "relay", tmp_path / "parties"
    ok(cli("authority", "init", auth))
    assert oct((auth / "authority.key").stat().st_mode & 0o777) == "0o600"
    ok(cli("server", "init", data, "--authority", auth / "authority.pub"))
    relay = RelayServer(data)
    url = relay.start()
    try:
        ok(
            cli(
                "party", "new", "lab-paris-01", "--role", "lab", "--authority", auth / "authority.pub", "--out", parties
            )
        )
        # A classic (X25519) key, for Debian's age 1.1.1 below, under a policy that allows it (the shipped one
        # requires post-quantum keys, which age reads from 1.3 on: tests/integration/test_age_interop.py).
        new = ("party", "new", "cnam", "--role", "recipient", "--classic")
        ok(cli(*new, "--authority", auth / "authority.pub", "--out", parties))
        for name in ("lab-paris-01", "cnam"):
            ok(cli("party", "enroll", parties / name, "--authority", auth, "--server", url))
            assert oct((parties / name / "signing.key").stat().st_mode & 0o777) == "0o600"
            assert oct((parties / name / "identity.txt").stat().st_mode & 0o777) == "0o600"
        policy = tmp_path / "policy.toml"
        policy.write_text(default_policy_text().replace("require_pq = true", "require_pq = false"), encoding="utf-8")
        ok(cli("authority", "publish-policy", policy, "--authority", auth, "--server", url))
        payload = tmp_path / "results.bin"
        payload.write_bytes(os.urandom(3_000_000) + b"the end\n")
        lab = parties / "lab-paris-01"
        refused = cli("send", payload, "--as", lab, "--server", url, "--to", "cnam", "--ttl", "12h")
        assert refused.code == 2, str(refused)  # not lab results, and --as-is was not asked for
        assert "binary file" in refused.err
        sent = ok(cli("send", payload, "--as", lab, "--server", url, "--to", "cnam", "--ttl", "12h", "--as-is"))
        [transfer_id] = transfer_ids(sent.out)
        assert any(p.name.endswith(".payload") for p in (data / "payloads").iterdir())

        out = tmp_path / "inbox"
        fetched = ok(cli("fetch", "--as", parties / "cnam", "--server", url, "--out", out, "--raw"))
        assert "not acknowledged" in fetched.out
        assert "UNPARSED" in fetched.out
        [raw] = list(out.glob("*.age"))
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_lab-paris-01_[0-9a-f]{8}_cnam\.age", raw.name), raw.name
        manifest = json.loads(raw.with_name(raw.name.replace(".age", ".manifest.json")).read_text())["manifest"]
        assert manifest["payload"]["transfer_id"] == transfer_id
        assert manifest["payload"]["recipient"] == "cnam"
        assert manifest["payload"]["deadline"] > manifest["payload"]["created"]

        decrypted = tmp_path / "decrypted.bin"
        subprocess.run(
            [age_tool, "--decrypt", "-i", str(parties / "cnam" / "identity.txt"), "-o", str(decrypted), str(raw)],
            check=True,
            timeout=60,
        )
        assert decrypted.read_bytes() == payload.read_bytes()

        # --raw sends no receipt: the payload waits on the relay until `labrelay receipt`
        status = ok(cli("receipts", "--as", parties / "lab-paris-01", "--server", url))
        assert "available" in status.out
        ok(cli("receipt", transfer_id, "--as", parties / "cnam", "--server", url, "--file", raw))
        status = ok(cli("receipts", "--as", parties / "lab-paris-01", "--server", url))
        assert "delivered" in status.out
        assert "received at" in status.out
        assert not any((data / "payloads").iterdir())
        again = ok(cli("fetch", "--as", parties / "cnam", "--server", url, "--out", tmp_path / "again"))
        assert "nothing waiting" in again.out
    finally:
        relay.stop()


def test_file_sealed_by_the_age_tool_decrypts_with_our_identity(tmp_path: Path, age_tool: str) -> None:
    """Interoperability the other way: our identity.txt is a standard age identity (a classic one: Debian's age
    1.1.1 knows no hybrid recipient; tests/integration/test_age_interop.py covers those with the reference library)."""
    ident = AgeIdentity.generate(classic=True)
    ident.save(tmp_path / "identity.txt", "now")
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(200_000))
    subprocess.run([age_tool, "-r", ident.recipient, "-o", str(tmp_path / "c.age"), str(plain)], check=True)
    with (tmp_path / "c.age").open("rb") as src, (tmp_path / "out").open("wb") as dst:
        age_stream.decrypt(src, dst, AgeIdentity.load_all(tmp_path / "identity.txt"), expect=None)
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()


@pytest.mark.scaled("send, fetch and receipt through S3 chunks and two replicas behind the balancer")
def test_fetch_decrypts_counts_and_acknowledges(world, cli, batch: Path) -> None:
    """A results file sent --as-is arrives whole, marked as sent outside the policy; fetch decrypts, counts its
    records and acknowledges."""
    lab, cnam = world.party_dir("lab-paris-01"), world.party_dir("cnam")
    sent = ok(cli("send", batch, "--as", lab, "--server", world.url, "--to", "cnam", "--as-is"))
    [transfer_id] = transfer_ids(sent.out)
    routed = ok(cli("send", batch, "--as", lab, "--server", world.url, "--to", "cnam", "--again"))  # routed this time
    assert len(world.stored()) == 2
    out = world.root / "out-cnam"
    fetched = ok(cli("fetch", "--as", cnam, "--server", world.url, "--out", out, "--json"))
    doc = json.loads(fetched.out)
    [unparsed] = [f for f in doc["fetched"] if f["transfer_id"] == transfer_id]
    assert unparsed["records"] == 300
    assert unparsed["unparsed"] is True
    assert unparsed["acknowledged"] is True
    assert doc["unparsed"] == 1
    csv_file = Path(unparsed["file"])
    assert csv_file.read_bytes() == batch.read_bytes()  # unparsed: written as it came, nothing added
    assert oct(csv_file.stat().st_mode & 0o777) == "0o600"
    assert not (out / ".labrelay").exists()  # no partial or temporary file left behind, nor the work directory
    [tagged] = [f for f in doc["fetched"] if f["transfer_id"] != transfer_id]
    assert tagged["unparsed"] is False
    assert tagged["sent_again"] is True
    assert tagged["transfer_id"] in routed.out
    assert world.stored() == []
    sidecar = json.loads(Path(unparsed["manifest_file"]).read_text())
    assert sidecar["receipt"]["payload"]["status"] == "decrypted"
    assert sidecar["receipt"]["payload"]["record_count"] == 300


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["send", "missing.csv", "--as", "nowhere", "--server", "http://127.0.0.1:1", "--to", "cnam"], "not a party"),
        (["party", "new", "Bad Name", "--role", "lab", "--authority", "a.pub", "--out", "p"], "invalid party name"),
        (["party", "new", "lab-x", "--role", "boss", "--authority", "a.pub", "--out", "p"], "invalid role"),
        (["serve", "--data", "nowhere"], "not a relay data directory"),
    ],
)
def test_usage_errors_exit_2_with_one_line(cli, args: list[str], needle: str) -> None:
    """labrelay's own usage errors: one line on stderr saying what is wrong (and what to do), exit 2."""
    result = cli(*args)
    assert result.code == 2, str(result)
    [line] = result.err.splitlines()
    assert line.startswith("labrelay: usage error: "), line
    assert needle in line
    assert result.out == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["send", "--ttl", "7w", "x"], "Error: Missing option '--as'."),
        (["frobnicate"], "Error: No such command 'frobnicate'."),
        (
            ["directory", "--retries", "0"],
            "Error: --retries is an option of labrelay itself: put it before the command "
            "(labrelay --retries N directory …)",
        ),
    ],
)
def test_command_line_parse_errors_exit_2_naming_the_problem(cli, args: list[str], needle: str) -> None:
    """Errors found while parsing the command line keep click's usual shape (usage, where to find help, the
    error), ending with the line that names the problem; never a traceback."""
    result = cli(*args)
    assert result.code == 2, str(result)
    assert result.err.rstrip().splitlines()[-1] == needle
    assert result.err.startswith("Usage: labrelay")
    assert "Traceback" not in result.err


def test_relay_unreachable_is_exit_1(tmp_path: Path, cli, batch: Path) -> None:
    """A lab enrolled by its authority, and no relay where it sends (port 9, discard: nothing listens)."""
    authority = Authority.init(tmp_path / "authority")
    now = datetime.now(UTC)
    lab = Party.create(tmp_path / "parties", "lab-paris-01", Role.LAB, None, authority.path / "authority.pub", now)
    lab.save_entry(authority.sign_entry(lab, now, timedelta(days=1)))
    lab.save_pseudonym_key(authority.pseudonym_key())
    result = cli("--retries", "0", "send", batch, "--as", lab.path, "--server", "http://127.0.0.1:9", "--to", "cnam")
    assert result.code == 1, str(result)
    assert "unreachable" in result.err
    assert "Traceback" not in result.err


def test_help_and_version(cli) -> None:
    assert "demo" in ok(cli("--help")).out
    assert ok(cli("--version")).out.startswith("labrelay ")
