"""The lab side's handling of one outbox, on a real file system, the relay replaced by a ``send`` function: a file
claimed before it is sent, failures waited out or counted by their class, moves that fail, folders that are not
what they seem, names that are not input, and a thread that dies taking the process with it."""

from __future__ import annotations

import errno
import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from labrelay.agent import lab as lab_module
from labrelay.agent import runner
from labrelay.agent.events import EventLog
from labrelay.agent.health import Metrics
from labrelay.agent.lab import LabWorker
from labrelay.agent.outbox import Sorter
from labrelay.agent.settings import AgentSettings, LabSettings, Retry
from labrelay.agent.worker import Context
from labrelay.client.lock import AGENT_LOCK_FILE, party_lock
from labrelay.clock import SystemClock
from labrelay.errors import (
    NotResults,
    OperationalError,
    PartyBusy,
    RelayFrozen,
    RequestTimeout,
    StorageFull,
    TooManyRequests,
    Unavailable,
    UsageError,
)

Send = Callable[[Path], dict[str, Any]]
FAST = Retry(3, 0.001, 0.002)


def _report(path: Path, **extra: Any) -> dict[str, Any]:
    return {"already_sent": False, "batch_id": "b1", "records": 1, "transfers": {}, "source": path.name, **extra}


def _worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, send: Send, retry: Retry = FAST
) -> tuple[LabWorker, io.StringIO]:
    outbox = tmp_path / "outbox"
    outbox.mkdir(exist_ok=True)
    monkeypatch.setattr("labrelay.agent.worker.Party.load", lambda path: SimpleNamespace(name="lab", path=path))
    monkeypatch.setattr(LabWorker, "_send", lambda self, path: send(path))
    out = io.StringIO()
    clock = SystemClock()
    ctx = Context("https://relay.invalid", None, 0, 1.0, EventLog(out, clock), Metrics(), clock, threading.Event())
    settings = LabSettings(party=tmp_path, outbox=outbox, stable_for=0.0, sweep=0.05, retry=retry)
    return LabWorker(settings, ctx), out


def _events(out: io.StringIO, *names: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    return [e for e in events if not names or e["event"] in names]


# ------------------------------------------------------------------ 1. claimed before it is sent


@pytest.mark.threat("T42")
def test_a_file_replaced_while_being_sent_is_not_filed_in_its_place(tmp_path: Path, monkeypatch) -> None:
    sent: list[tuple[Path, bytes]] = []

    def send(path: Path) -> dict[str, Any]:
        sent.append((path, path.read_bytes()))
        # the LIS drops tonight's export under the same name while the send is in flight
        part = tmp_path / "outbox" / "export.csv.part"
        part.write_bytes(b"NEW EXPORT\n")
        part.rename(tmp_path / "outbox" / "export.csv")
        return _report(path)

    w, out = _worker(tmp_path, monkeypatch, send)
    (w.settings.outbox / "export.csv").write_bytes(b"OLD EXPORT\n")
    w.take("export.csv")
    assert sent == [(w.settings.outbox / ".taking" / "export.csv", b"OLD EXPORT\n")]
    assert (w.settings.outbox / "sent" / "export.csv").read_bytes() == b"OLD EXPORT\n"
    assert (w.settings.outbox / "export.csv").read_bytes() == b"NEW EXPORT\n"  # still there, to be sent next
    w.take("export.csv")
    assert sent[1][1] == b"NEW EXPORT\n"
    assert (w.settings.outbox / "sent" / "export-2.csv").read_bytes() == b"NEW EXPORT\n"
    assert [e["event"] for e in _events(out, "file.sent")] == ["file.sent", "file.sent"]


def test_files_left_in_taking_are_resumed_first_by_once(tmp_path: Path, monkeypatch) -> None:
    sent: list[str] = []
    w, out = _worker(tmp_path, monkeypatch, lambda path: sent.append(path.name) or _report(path, already_sent=True))
    (w.settings.outbox / ".taking" / "interrupted.csv").write_bytes(b"x")  # a run killed mid-send left it there
    (w.settings.outbox / "new.csv").write_bytes(b"y")
    os.utime(w.settings.outbox / "new.csv", (0, 0))
    assert w.run_once()
    assert sent == ["interrupted.csv", "new.csv"]
    assert sorted(p.name for p in (w.settings.outbox / "sent").iterdir() if not p.name.endswith(".json")) == sent
    assert list((w.settings.outbox / ".taking").iterdir()) == []
    assert _events(out, "file.taken")[0]["resumed"] is True


def test_a_file_being_retried_is_not_overwritten_by_a_new_one_of_the_same_name(tmp_path: Path, monkeypatch) -> None:
    calls: list[bytes] = []

    def send(path: Path) -> dict[str, Any]:
        calls.append(path.read_bytes())
        if len(calls) == 1:
            raise Unavailable("relay unreachable")
        return _report(path)

    w, _ = _worker(tmp_path, monkeypatch, send)
    (w.settings.outbox / "a.csv").write_bytes(b"first")
    w.take("a.csv")
    (w.settings.outbox / "a.csv").write_bytes(b"second")
    w.attempts["a.csv"].next_at = 0
    w.sweep()
    assert calls == [b"first", b"first"]
    assert (w.settings.outbox / "sent" / "a.csv").read_bytes() == b"first"
    assert (w.settings.outbox / "a.csv").read_bytes() == b"second"


# ------------------------------------------------------------------ 2. waited out, or counted


@pytest.mark.parametrize(
    "error",
    [
        Unavailable("relay unreachable"),
        RequestTimeout("did not answer in time"),
        TooManyRequests("over the limit"),
        RelayFrozen("frozen"),
        PartyBusy("a manual send holds the lock"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_relay_away_or_busy_is_waited_out_however_long(tmp_path: Path, monkeypatch, error: Exception) -> None:
    calls: list[str] = []

    def send(path: Path) -> dict[str, Any]:
        calls.append(path.name)
        if len(calls) <= 10:  # far more than the file's 3 attempts
            raise error
        return _report(path)

    w, out = _worker(tmp_path, monkeypatch, send)
    (w.settings.outbox / "a.csv").write_bytes(b"x")
    w.take("a.csv")
    for _ in range(10):
        assert (w.settings.outbox / ".taking" / "a.csv").is_file()
        w.take("a.csv", claimed=True)
    retries = _events(out, "file.retry")
    assert len(retries) == 10
    assert {(r["counted"], r["stage"], r["kind"]) for r in retries} == {(False, "send", error.code)}
    assert [e["event"] for e in _events(out, "file.sent", "file.failed")] == ["file.sent"]
    assert list((w.settings.outbox / "failed").iterdir()) == []


@pytest.mark.parametrize(
    "error", [StorageFull("relay: storage full"), OperationalError("relay answered 500")], ids=lambda e: e.code
)
def test_a_relay_error_that_may_not_go_away_counts_against_the_attempts(
    tmp_path: Path, monkeypatch, error: Exception
) -> None:
    def send(path: Path) -> dict[str, Any]:
        raise error

    w, out = _worker(tmp_path, monkeypatch, send)
    (w.settings.outbox / "a.csv").write_bytes(b"x")
    w.take("a.csv")
    w.take("a.csv", claimed=True)
    w.take("a.csv", claimed=True)
    assert [r["counted"] for r in _events(out, "file.retry")] == [True, True]
    (failed,) = _events(out, "file.failed")
    assert (failed["attempts"], failed["kind"]) == (3, error.code)
    reason = json.loads((w.settings.outbox / "failed" / "a.csv.reason.json").read_text())
    assert (reason["attempts"], reason["retried"]) == (3, True)
    assert "detail" in reason["error"]  # the full diagnostics: in failed/ beside the data, never in the log
    assert "detail" not in failed
    assert failed["message"] != str(error)


def test_waited_is_decided_by_class() -> None:
    assert lab_module.waited(TooManyRequests("x"))
    assert lab_module.waited(PartyBusy("x"))
    assert not lab_module.waited(StorageFull("x"))
    assert not lab_module.waited(OperationalError("x"))
    assert not lab_module.waited(OSError(errno.ECONNREFUSED, "refused"))


# ------------------------------------------------------------------ 3. moves that fail, a thread that dies


def test_a_move_that_fails_keeps_the_file_and_the_thread_and_is_retried(tmp_path: Path, monkeypatch) -> None:
    sends: list[str] = []
    w, out = _worker(tmp_path, monkeypatch, lambda path: sends.append(path.name) or _report(path))
    real = Sorter._move
    fails = [OSError(errno.ENOSPC, "No space left on device")]

    def move(self: Sorter, *args: Any) -> Path:
        if fails:
            raise fails.pop()
        return real(self, *args)

    monkeypatch.setattr(Sorter, "_move", move)
    (w.settings.outbox / "a.csv").write_bytes(b"x")
    w.take("a.csv")
    (retry,) = _events(out, "file.retry")
    assert (retry["stage"], retry["kind"]) == ("move", "ENOSPC")
    assert (w.settings.outbox / ".taking" / "a.csv").is_file()
    w.attempts["a.csv"].next_at = 0
    w.sweep()
    assert sends == ["a.csv"]  # the move is retried, not the send
    assert (w.settings.outbox / "sent" / "a.csv").is_file()
    assert [e["event"] for e in _events(out, "file.sent", "file.vanished")] == ["file.sent"]


def test_a_missing_sent_folder_is_made_again_not_taken_for_a_vanished_file(tmp_path: Path, monkeypatch) -> None:
    sends: list[str] = []
    w, out = _worker(tmp_path, monkeypatch, lambda path: sends.append(path.name) or _report(path))
    (w.settings.outbox / "a.csv").write_bytes(b"x")
    os.rmdir(w.settings.outbox / "sent")
    w.sweep()  # seen
    w.sweep()  # still, taken
    assert sends == ["a.csv"]
    assert (w.settings.outbox / "sent" / "a.csv").is_file()
    assert _events(out, "file.vanished") == []


def test_a_failed_move_to_failed_does_not_end_the_thread(tmp_path: Path, monkeypatch) -> None:
    def send(path: Path) -> dict[str, Any]:
        raise NotResults("not a results file")

    w, out = _worker(tmp_path, monkeypatch, send)
    (w.settings.outbox / "bad.csv").write_bytes(b"x")
    os.rmdir(w.settings.outbox / "failed")
    (w.settings.outbox / "failed").write_text("a file where failed/ should be")
    w.sweep()  # seen
    w.sweep()  # taken: the move to failed/ raised out of the thread before
    (retry,) = _events(out, "file.retry")
    assert (retry["stage"], retry["kind"]) == ("move", "usage")
    assert (w.settings.outbox / ".taking" / "bad.csv").is_file()


def test_a_bug_in_the_sweep_is_not_taken_for_a_missing_inotify(tmp_path: Path, monkeypatch) -> None:
    w, out = _worker(tmp_path, monkeypatch, _report)

    def broken(*args: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(lab_module, "scan", broken)
    monkeypatch.setattr(w.sorter, "claimed", list)
    with pytest.raises(RuntimeError):
        w.run()
    assert _events(out, "agent.watch_unavailable") == []


def test_a_worker_that_dies_stops_the_process_with_1(tmp_path: Path, monkeypatch) -> None:
    w, out = _worker(tmp_path, monkeypatch, _report)
    monkeypatch.setattr(w, "run", lambda: (_ for _ in ()).throw(RuntimeError("a bug")))
    settings = AgentSettings(listen=("127.0.0.1", 0), lock_wait=1.0, labs=(w.settings,), recipients=())
    assert runner._forever(settings, [w]) == 1
    assert w.ctx.stop.is_set()
    assert [e["event"] for e in _events(out, "worker.crashed", "agent.stopped")] == ["worker.crashed", "agent.stopped"]
    assert _events(out, "agent.stopped")[0]["exit_code"] == 1


@pytest.mark.parametrize("once", [True, False], ids=["once", "service"])
def test_a_second_agent_for_a_party_is_refused_at_start(tmp_path: Path, monkeypatch, once: bool) -> None:
    """Two agents for one party (the second with another ``listen``, or ``--once`` beside the service) sent nothing
    twice, but the idle one took the other's file in ``.taking/`` for one a crash left, and one file ended twice
    (``file.sent``, then ``file.vanished``). The second is now refused before it looks at anything, exit 2."""
    w, out = _worker(tmp_path, monkeypatch, _report)
    monkeypatch.setattr(runner, "build", lambda *args: [w])
    settings = AgentSettings(listen=("127.0.0.1", 0), lock_wait=1.0, labs=(w.settings,), recipients=())
    refused = rf"another agent for {w.party.name} is running \(pid {os.getpid()}\)"
    with (
        party_lock(w.party.path, w.party.name, "agent", lock_file=AGENT_LOCK_FILE),  # the first agent
        pytest.raises(UsageError, match=refused),
    ):
        runner.run_agent(settings, "http://127.0.0.1:9", None, 0, io.StringIO(), once=once)
    assert _events(out, "agent.started") == []
    assert runner.run_agent(settings, "http://127.0.0.1:9", None, 0, io.StringIO(), once=True) == 0  # alone: runs


# ------------------------------------------------------------------ 4. folders that are not what they seem


@pytest.mark.threat("T42")
@pytest.mark.parametrize("folder", ["sent", "failed", ".taking"])
def test_a_folder_that_is_a_link_is_refused_at_start(tmp_path: Path, monkeypatch, folder: str) -> None:
    elsewhere = tmp_path / "keys"
    elsewhere.mkdir()
    (tmp_path / "outbox").mkdir()
    os.symlink(elsewhere, tmp_path / "outbox" / folder)
    with pytest.raises(UsageError, match="not a directory"):
        _worker(tmp_path, monkeypatch, _report)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
@pytest.mark.threat("T42")
def test_a_folder_owned_by_another_user_is_refused_at_start(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "outbox" / "failed").mkdir(parents=True)
    os.chown(tmp_path / "outbox" / "failed", 1, 1)
    with pytest.raises(UsageError, match="not owned by the agent"):
        _worker(tmp_path, monkeypatch, _report)


@pytest.mark.threat("T42")
def test_a_folder_swapped_for_a_link_at_run_time_is_not_followed(tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "keys"
    elsewhere.mkdir()
    w, out = _worker(tmp_path, monkeypatch, _report)
    assert oct((w.settings.outbox / "sent").stat().st_mode & 0o777) == "0o750"
    os.rmdir(w.settings.outbox / "sent")
    os.symlink(elsewhere, w.settings.outbox / "sent")  # whoever may write the outbox (the LIS) did this
    (w.settings.outbox / "pseudonym.csv").write_bytes(b"x")
    w.take("pseudonym.csv")
    assert list(elsewhere.iterdir()) == []
    (retry,) = _events(out, "file.retry")
    assert (retry["stage"], retry["kind"]) == ("move", "usage")
    assert (w.settings.outbox / ".taking" / "pseudonym.csv").is_file()


# ------------------------------------------------------------------ 5. names that are not input


def test_links_folders_and_special_files_are_said_once(tmp_path: Path, monkeypatch) -> None:
    w, out = _worker(tmp_path, monkeypatch, _report)
    outbox = w.settings.outbox
    (tmp_path / "target.csv").write_bytes(b"x")
    os.symlink(tmp_path / "target.csv", outbox / "link.csv")
    os.mkfifo(outbox / "pipe")
    (outbox / "subdir").mkdir()
    (outbox / "results.csv.part").write_bytes(b"being written")  # ignored by design, not said
    w.sweep()
    w.sweep()
    ignored = {(e["file"], e["why"]) for e in _events(out, "file.ignored")}
    assert ignored == {("link.csv", "a symbolic link"), ("pipe", "not a regular file"), ("subdir", "a directory")}
    assert len(_events(out, "file.ignored")) == 3
    assert (outbox / "link.csv").is_symlink()
    assert _events(out, "file.taken") == []
