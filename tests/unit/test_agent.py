"""The agent's rules without a relay: its settings, when an outbox file is complete, what an error means for a
file, the back-off, and docs/agent.md naming every setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labrelay.agent.outbox import Completeness, Sorter, ignored, scan, settled
from labrelay.agent.policy import Backoff, Kind, classify, error_fields, jittered
from labrelay.agent.settings import AGENT_KEYS, LAB_KEYS, RECIPIENT_KEYS, Retry, agent_settings, parse_listen
from labrelay.client.config import ClientConfig
from labrelay.client.send import NothingSent
from labrelay.errors import (
    AuditTampered,
    IntegrityError,
    NotResults,
    PartyBusy,
    StorageFull,
    TooManyRequests,
    Unavailable,
    UsageError,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "agent.md"


def _config(tmp_path: Path, text: str) -> ClientConfig:
    path = tmp_path / "labrelay.toml"
    path.write_text(text)
    return ClientConfig.read(path)


# ------------------------------------------------------------------ settings


def test_settings_read_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        'party = "parties/lab"\n[agent]\n[[agent.lab]]\noutbox = "out"\nto = ["cnam"]\nmax_rejected = "2%"\n'
        '[[agent.recipient]]\nparty = "parties/cnam"\ninbox = "in"\nformat = "parquet"\npoll = "30s"\n'
        'hook = ["/usr/bin/true", "x"]\n',
    )
    settings = agent_settings(config)
    assert settings.listen == ("127.0.0.1", 9466)
    assert settings.lock_wait == 300
    (lab,) = settings.labs
    assert lab.party == tmp_path / "parties" / "lab"  # the file's default party
    assert lab.outbox == tmp_path / "out"
    assert lab.to == ("cnam",)
    assert lab.max_rejected is not None
    assert lab.max_rejected.percent == 2
    assert (lab.stable_for, lab.ttl, lab.retry) == (10, 7 * 86400, Retry(5, 10, 600))
    (recipient,) = settings.recipients
    assert (recipient.inbox, recipient.format, recipient.poll) == (tmp_path / "in", "parquet", 30)
    assert recipient.hook == ("/usr/bin/true", "x")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[agent]\nlisten = "0.0.0.0:9466"\n[[agent.lab]]\noutbox = "o"\n', "not a loopback"),
        ('[agent]\nlisten = "10.1.2.3:9466"\n[[agent.lab]]\noutbox = "o"\n', "not a loopback"),
        ('[agent]\nlisten = "relay.example.fr:9466"\n[[agent.lab]]\noutbox = "o"\n', "not a loopback"),
        ('[agent]\nlisten = "9466"\n[[agent.lab]]\noutbox = "o"\n', "HOST:PORT"),
        ('[agent]\nlistn = "127.0.0.1:1"\n[[agent.lab]]\noutbox = "o"\n', "unknown setting(s) in agent: listn"),
        ('[agent]\n[[agent.lab]]\noutbox = "o"\nstable_fro = "5s"\n', "unknown setting(s) in agent.lab[0]"),
        ('[agent]\n[[agent.recipient]]\ninbox = "i"\nhook = "rm -rf /"\n', "list of non-empty strings"),
        ('[agent]\n[[agent.lab]]\noutbox = "o"\nstable_for = "5"\n', "invalid duration"),
        ('[agent]\n[[agent.lab]]\noutbox = "o"\nattempts = 0\n', "at least 1"),
        ('[agent]\n[[agent.lab]]\noutbox = "o"\nfail_on_held = "yes"\n', "true or false"),
        ('[agent]\n[[agent.lab]]\noutbox = "o"\nattempts = true\n', "whole number"),
        ('[agent]\n[[agent.lab]]\nstable_for = "5s"\n', "outbox is required"),
        ('[agent]\n[[agent.recipient]]\ninbox = "i"\nformat = "xlsx"\n', "one of csv, excel, parquet"),
        ('[agent]\n[[agent.lab]]\noutbox = "o"\nbackoff = "1m"\nbackoff_max = "10s"\n', "at least backoff"),
        ("[agent]\n", "nothing to do"),
        ('[agent]\n[[agent.lab]]\noutbox = "o"\n[[agent.lab]]\noutbox = "p"\n', "a party appears twice"),
    ],
)
def test_settings_refuse_what_they_cannot_use(tmp_path: Path, table: str, message: str) -> None:
    config = _config(tmp_path, 'party = "lab"\n' + table)
    with pytest.raises(UsageError, match=re.escape(message)):
        agent_settings(config)


def test_listen_accepts_loopback_forms_and_port_zero() -> None:
    assert parse_listen("127.0.0.1:0", "x") == ("127.0.0.1", 0)
    assert parse_listen("localhost:9466", "x") == ("127.0.0.1", 9466)
    assert parse_listen("[::1]:9466", "x") == ("::1", 9466)
    assert parse_listen("127.8.9.1:1", "x") == ("127.8.9.1", 1)


def test_every_setting_is_documented_in_docs_agent() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for table, keys in (("[agent]", AGENT_KEYS), ("[[agent.lab]]", LAB_KEYS), ("[[agent.recipient]]", RECIPIENT_KEYS)):
        assert table in text
        missing = [k for k in keys if f"| `{k}` |" not in text]
        assert missing == [], f"not in docs/agent.md: {table} {missing}"


# ------------------------------------------------------------------ when a file is complete


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_file_is_taken_only_once_still_for_stable_for() -> None:
    clock = _Clock()
    complete = Completeness(5.0, clock)
    assert complete.ready({"a.csv": (10, 1)}) == []  # first seen
    clock.t += 4.9
    assert complete.ready({"a.csv": (10, 1)}) == []
    clock.t += 0.1
    assert complete.ready({"a.csv": (10, 1)}) == ["a.csv"]


def test_a_growing_or_touched_file_starts_again() -> None:
    clock = _Clock()
    complete = Completeness(5.0, clock)
    complete.ready({"a.csv": (10, 1)})
    clock.t += 4
    assert complete.ready({"a.csv": (20, 2)}) == []  # grew: the wait starts again
    clock.t += 4
    assert complete.ready({"a.csv": (20, 3)}) == []  # same size, touched again
    clock.t += 5
    assert complete.ready({"a.csv": (20, 3)}) == ["a.csv"]
    assert complete.ready({}) == []  # gone: forgotten
    assert complete.ready({"a.csv": (20, 3)}) == []  # back: seen anew


def test_part_and_hidden_files_and_directories_are_never_candidates(tmp_path: Path) -> None:
    assert ignored("results.csv.part")
    assert ignored(".~lock.results.csv#")
    assert not ignored("results.csv")
    for name in ("results.csv.part", ".hidden.csv", "ok.csv"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sent").mkdir()
    (tmp_path / "link.csv").symlink_to(tmp_path / "ok.csv")
    assert set(scan(tmp_path)) == {"ok.csv"}


def test_once_takes_files_by_the_age_of_their_modification_time() -> None:
    files = {"old.csv": (1, int(100e9)), "new.csv": (1, int(197e9))}
    assert settled(files, 5.0, now=200.0) == ["old.csv"]


def test_sorter_writes_the_report_then_moves_and_never_overwrites(tmp_path: Path) -> None:
    sorter = Sorter(tmp_path)
    for _ in range(2):
        (tmp_path / "a.csv").write_text("x")
        sorter.claim("a.csv")
        sorter.sent("a.csv", {"batch_id": "b"})
    assert sorted(p.name for p in (tmp_path / "sent").iterdir()) == [
        "a-2.csv",
        "a-2.csv.report.json",
        "a.csv",
        "a.csv.report.json",
    ]
    (tmp_path / "b.csv").write_text("x")
    sorter.claim("b.csv")
    sorter.failed("b.csv", {"error": {}})
    assert (tmp_path / "failed" / "b.csv.reason.json").is_file()
    assert not (tmp_path / "b.csv").exists()


# ------------------------------------------------------------------ errors and back-off


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (Unavailable("relay down"), Kind.RETRY),
        (TooManyRequests("busy"), Kind.RETRY),
        (StorageFull("disk"), Kind.RETRY),
        (PartyBusy("another send"), Kind.RETRY),
        (NothingSent("nothing sent: every record rejected"), Kind.DATA),
        (NotResults("an Excel workbook"), Kind.USAGE),
        (UsageError("bad option"), Kind.USAGE),
        (IntegrityError("does not verify"), Kind.SECURITY),
        (AuditTampered("rewritten"), Kind.SECURITY),
        (OSError("disk"), Kind.INTERNAL),
    ],
)
def test_errors_are_classified_by_class(error: BaseException, kind: Kind) -> None:
    assert classify(error) is kind
    assert kind.retried is (kind in (Kind.RETRY, Kind.INTERNAL))


def test_a_security_refusal_is_never_retried_whatever_its_message() -> None:
    assert not classify(IntegrityError("relay unreachable, retry later")).retried
    assert classify(Unavailable("signature refused")).retried
    assert Kind.SECURITY.exit_code == 3
    assert Kind.USAGE.exit_code == 2
    assert Kind.DATA.exit_code == 1


def test_log_fields_of_an_unexpected_error_carry_only_its_type() -> None:
    assert error_fields(ValueError("NIR 1850775123456 bad")) == {
        "kind": "internal",
        "error_class": "internal",
        "error_type": "ValueError",
        "exit_code": 1,
        "message": "an unexpected error: only its type is logged",
    }
    assert error_fields(Unavailable("down", hint="later"))["message"] == "the relay could not be reached or was busy"


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    low, high = Backoff(Retry(3, 2.0, 30.0), lambda: 0.0), Backoff(Retry(3, 2.0, 30.0), lambda: 1.0)
    assert [low.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert [high.delay(n) for n in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert high.delay(10_000) == 30.0
    assert not low.exhausted(2)
    assert low.exhausted(3)
    real = Backoff(Retry(3, 2.0, 30.0))
    delays = {real.delay(3) for _ in range(20)}
    assert all(8.0 <= d <= 16.0 for d in delays)
    assert len(delays) > 1  # jittered


def test_poll_interval_jitter_stays_within_a_fifth() -> None:
    assert jittered(60, lambda: 0.0) == 48
    assert jittered(60, lambda: 1.0) == pytest.approx(72)
