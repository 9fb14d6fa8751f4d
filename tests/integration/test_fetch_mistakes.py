"""A recipient operator's mistakes with ``fetch`` and ``receipt`` end in one clear line and the right exit code:
2 for what the operator must change, 1 for what the next run can finish. None is an "internal error"."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from labrelay.client import fetch as fetch_module
from labrelay.client.fetch import fetch_all
from labrelay.clock import SystemClock
from labrelay.errors import OperationalError
from tests.support.stub_relay import Answer, stub_relay
from tests.support.world import sent_ids


@pytest.fixture
def waiting(world, cli, batch: Path) -> str:
    """A batch for cnam waits on the relay; its transfer id."""
    sent = cli("send", batch, "--as", world.party_dir("lab-paris-01"), "--server", world.url, "--to", "cnam")
    assert sent.code == 0, str(sent)
    return sent_ids(sent.out)["cnam"]


def fetch(world, cli, *args: Any, server: str | None = None) -> Any:
    return cli("fetch", "--as", world.party_dir("cnam"), "--server", server or world.url, *args)


def one_line(result: Any) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, str(result)
    assert "internal error" not in lines[0], str(result)
    return lines[0]


def test_an_output_directory_that_cannot_be_made_or_is_a_file_is_a_usage_error(world, cli, waiting: str) -> None:
    a_file = world.root / "results.csv"
    a_file.write_text("not a directory\n")
    for out, said in ((a_file, "is not a directory"), (a_file / "inbox", "cannot create the directory")):
        result = fetch(world, cli, "--out", out)
        assert result.code == 2, str(result)
        assert said in one_line(result)


def test_a_relay_url_with_a_space_or_a_missing_ca_file_is_a_usage_error(world, cli, waiting: str) -> None:
    out = world.root / "out"
    spaced = fetch(world, cli, "--out", out, server=world.url + " ")
    assert spaced.code == 2, str(spaced)
    assert "holds a space or a control character" in one_line(spaced)
    missing_ca = fetch(world, cli, "--out", out, "--cacert", world.root / "nowhere.pem")
    assert missing_ca.code == 2, str(missing_ca)
    assert "cannot use" in one_line(missing_ca)
    receipt = cli(
        "receipt", waiting, "--as", world.party_dir("cnam"), "--server", world.url, "--file", world.root / "none.age"
    )
    assert receipt.code == 2, str(receipt)
    assert "internal error" not in receipt.err


def test_a_new_output_directory_is_said(world, cli, waiting: str) -> None:
    """A typo in --out would put results where no loader looks: the directory is still made (a first run needs
    it), and the run says so."""
    out = world.root / "inbx" / "cnam"
    result = fetch(world, cli, "--out", out)
    assert result.code == 0, str(result)
    assert f"created the output directory {out}" in result.err
    again = fetch(world, cli, "--out", out)
    assert "created the output directory" not in again.err


def test_a_full_disk_is_said_as_the_system_says_it_and_left_for_the_next_run(
    world, waiting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fetch_module, "_download_decrypting", full)
    with world.client("cnam") as client:
        report = fetch_all(world.parties["cnam"], client, world.root / "out", SystemClock())
    [(transfer_id, error)] = report.failed
    assert transfer_id == waiting
    assert isinstance(error, OperationalError)
    assert error.message == f"could not write the output of {waiting}: No space left on device"
    assert report.refused == []


def test_a_server_that_is_not_a_labrelay_relay_is_named_and_its_page_not_repeated(world, cli) -> None:
    """--server pointing at another web server (a wrong port, the hospital's intranet): its 404 page was printed
    into the error ("relay answered 404: <!DOCTYPE HTML>…", exit 1, retried for ever); now one line says what
    answered, exit 2."""

    page = Answer(404, b"<!DOCTYPE HTML><html><body>Not Found</body></html>", "text/html; charset=utf-8")
    with stub_relay(lambda method, path: page) as other_server:
        other = other_server.url
        result = fetch(world, cli, "--out", world.root / "out", server=other)
    assert result.code == 2, str(result)
    said = one_line(result)
    assert f"{other} answered 404 (text/html), not as a labrelay relay does" in said
    assert "DOCTYPE" not in result.err + result.out


def test_https_to_a_relay_that_speaks_plain_http_is_a_usage_error(world, cli, waiting: str) -> None:
    """``https://`` to a relay without TLS: OpenSSL's "wrong version number", exit 1, retried for ever; now what is
    wrong, and exit 2."""
    result = fetch(world, cli, "--out", world.root / "out", server=world.url.replace("http://", "https://"))
    assert result.code == 2, str(result)
    assert "does not speak TLS (it answered in plain HTTP)" in one_line(result)
