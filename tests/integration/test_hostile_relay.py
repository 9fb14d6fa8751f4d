"""A relay that lies (A2): a real HTTP server on loopback that answers as a compromised relay would, against the
real client and the real CLI. Whatever it says, a retired key does not outlive the longest deadline, and nothing
it sends can drive the user's terminal."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.client.api import RelayClient
from labrelay.client.keystore import Authority, Party
from labrelay.client.rotation import Destroyed, retire_due, retired_status, rotate
from labrelay.clock import SystemClock
from labrelay.crypto.keys import AgeIdentity
from labrelay.domain.parties import Role, short_key
from labrelay.domain.timeutil import from_rfc3339
from tests.support.stub_relay import Answer, stub_relay

FOREVER = "2099-12-31T00:00:00Z"


def recipient(tmp_path: Path, name: str = "cnam") -> tuple[Authority, Party]:
    authority = Authority.init(tmp_path / "authority")
    party = Party.create(tmp_path / "parties", name, Role.RECIPIENT, None, authority.path / "authority.pub",
                         datetime.now(UTC) - timedelta(days=60))  # fmt: skip
    return authority, party


def horizon_forever(method: str, path: str) -> Answer:
    """Registers any entry; says of every key that a payload sealed to it lives until 2099."""
    if method == "POST" and path == "/v1/directory/entries":
        return Answer.json(201, {"registered": True})
    if method == "GET" and path.startswith("/v1/keys/") and path.endswith("/horizon"):
        return Answer.json(200, {"key": path.split("/")[3], "open": 1, "latest_deadline": FOREVER})
    return Answer.json(404, {"code": "not-found", "title": "Not Found", "detail": "no such route"})


@pytest.mark.threat("T36")
def test_a_retired_key_is_destroyed_at_the_longest_deadline_whatever_the_relay_claims(tmp_path: Path, cli) -> None:
    """The relay claims payloads sealed to the old key until 2099. The client keeps the old identity no longer
    than the rotation + 30 days + the clock skew, destroys it after that without asking, and says so once."""
    authority, cnam = recipient(tmp_path)
    old = cnam.age_recipient
    rotated_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=31)  # the clock, injected: a month ago
    with stub_relay(horizon_forever) as relay:
        with RelayClient(relay.url, cnam.name, cnam.signing_key, SystemClock(), retries=0) as client:
            result = rotate(cnam, authority, client, rotated_at, timedelta(days=365))
            assert result.retired == [old]
            assert from_rfc3339(result.destroy_after) <= rotated_at + timedelta(days=30, seconds=31)
            assert result.overclaimed == {old: FOREVER}  # what the relay said, kept to be reported

            # Within the longest deadline, the identity is kept.
            within = rotated_at + timedelta(days=30)
            assert retire_due(Party.load(cnam.path), client, within) == []
            assert ("GET", f"/v1/keys/{old}/horizon") in relay.asked
            assert len(AgeIdentity.load_all(cnam.path / "identity.txt")) == 2
            [record] = retired_status(cnam)
            assert from_rfc3339(record["destroy_after"]) <= rotated_at + timedelta(days=30, seconds=31)

        # A month and a day after the rotation (the wall clock now), the real CLI destroys it, and says why once.
        asked = len(relay.asked)
        retired = cli("party", "retire", cnam.path, "--server", relay.url)
        assert retired.code == 0, str(retired)
        assert f"destroyed retired identity {short_key(old)}" in retired.out
        assert f"the relay claimed payloads sealed to {short_key(old)} until {FOREVER}" in retired.err
        assert "destroyed anyway" in retired.err
        assert len(relay.asked) == asked  # past the cap, the relay is not even asked
        new = json.loads((cnam.path / "party.json").read_text())["age_recipient"]
        assert [i.recipient for i in AgeIdentity.load_all(cnam.path / "identity.txt")] == [new]
        assert not list(cnam.path.glob(".identity.txt*"))  # no copy of the old identity left beside it
        [record] = retired_status(cnam)
        assert record["destroyed_at"]

        again = cli("party", "retire", cnam.path, "--server", relay.url)
        assert again.code == 0, str(again)
        assert "destroyed" not in again.out
        assert "claimed" not in again.err  # reported once, by the run that destroyed it
        assert retire_due(Party.load(cnam.path), None, datetime.now(UTC)) == []


def test_a_retired_key_is_kept_while_an_honest_relay_says_so_and_the_cap_is_reported_with_it(tmp_path: Path) -> None:
    """The cap bounds the relay's word; it does not shorten it: a payload deadline within 30 days is honoured."""
    authority, cnam = recipient(tmp_path)
    rotated_at = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    deadline = "2026-12-20T08:00:00Z"

    def honest(method: str, path: str) -> Answer:
        if method == "POST":
            return Answer.json(201, {})
        return Answer.json(200, {"key": path.split("/")[3], "open": 1, "latest_deadline": deadline})

    with (
        stub_relay(honest) as relay,
        RelayClient(relay.url, cnam.name, cnam.signing_key, SystemClock(), retries=0) as client,
    ):
        result = rotate(cnam, authority, client, rotated_at, timedelta(days=365))
        assert result.destroy_after == deadline
        assert result.overclaimed == {}
        assert retire_due(Party.load(cnam.path), client, from_rfc3339(deadline) - timedelta(seconds=1)) == []
        assert retire_due(Party.load(cnam.path), client, from_rfc3339(deadline)) == [Destroyed(result.retired[0])]


# ------------------------------------------------------------------ terminal escapes

HOSTILE = "\x1b[2K\x1b[1A\x1b[31mall 12 payloads delivered\r\x1b[0m\x9b2J\u202eofni\u202c\x07"
HINT = "\x1b]0;labrelay: ok\x07run \x1b[8mlabrelay party retire\x1b[0m"
OBEYED = ("\x1b", "\r", "\x9b", "\u202e", "\u202c", "\x07")


def problem(status: int, detail: str, hint: str | None = None, code: str = "permission-denied") -> Answer:
    doc = {"type": "about:blank", "title": "Forbidden", "status": status, "code": code, "detail": detail}
    if hint is not None:
        doc["hint"] = hint
    return Answer.json(status, doc)


def assert_nothing_obeyed(text: str) -> None:
    for char in OBEYED:
        assert char not in text, f"{char!r} reached the terminal: {text!r}"


@pytest.mark.threat("T37")
def test_a_relays_error_text_cannot_drive_the_terminal(tmp_path: Path, cli) -> None:
    """A relay answers every request with a problem document whose detail and hint erase the line above,
    recolour, retitle the window and reverse the text. The real CLI prints it with all of that shown, not obeyed:
    no ESC, CR, BEL, 8-bit CSI or bidi control reaches stdout or stderr, and the words are still there."""
    _, cnam = recipient(tmp_path)
    with stub_relay(lambda method, path: problem(403, HOSTILE, HINT)) as relay:
        fetched = cli("--retries", "0", "fetch", "--as", cnam.path, "--server", relay.url, "--out", tmp_path / "in")
        assert relay.asked, "the stub relay was never asked"
        as_json = cli("--retries", "0", "fetch", "--as", cnam.path, "--server", relay.url, "--out", tmp_path / "in",
                      "--json")  # fmt: skip
    assert fetched.code == 3, str(fetched)
    for stream in (fetched.out, fetched.err, as_json.out, as_json.err):
        assert_nothing_obeyed(stream)
    assert "all 12 payloads delivered" in fetched.err  # still readable …
    assert "\\x1b[2K\\x1b[1A\\x1b[31m" in fetched.err  # … with what it tried shown for what it is
    assert "\\r" in fetched.err
    assert "\\u202eofni" in fetched.err
    assert "labrelay party retire" in fetched.err  # the hint too
    assert fetched.err.count("\n") == 1  # one line: nothing in it can fake another
    # The JSON document carries the relay's words exactly (escaped as JSON), never a raw control character.
    assert as_json.code == 3, str(as_json)
    error = json.loads(as_json.out)["error"]
    assert HOSTILE in error["message"]
    assert error["hint"] == HINT


@pytest.mark.threat("T37")
def test_a_relays_plain_text_answer_and_newlines_cannot_forge_lines(tmp_path: Path, cli) -> None:
    """A non-JSON answer reached the user through another path (the first bytes of the body); a newline in it
    would print a line of the relay's choosing under labrelay's name. It was shown as ``\\n``, on the one line; now
    nothing of a non-JSON body is shown at all (its status and content type only)."""
    _, cnam = recipient(tmp_path)
    forged = "teapot\nlabrelay: fetched 12 payloads, all verified\x1b[A\x1b[2K"
    with stub_relay(lambda method, path: Answer(418, forged.encode(), "text/plain")) as relay:
        fetched = cli("--retries", "0", "fetch", "--as", cnam.path, "--server", relay.url, "--out", tmp_path / "in")
    assert fetched.code == 1, str(fetched)
    assert_nothing_obeyed(fetched.out + fetched.err)
    assert fetched.err.count("\n") == 1
    assert "relay answered 418: (text/plain; not shown)" in fetched.err
    assert "teapot" not in fetched.err + fetched.out
