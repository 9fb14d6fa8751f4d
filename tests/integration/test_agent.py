"""``labrelay agent`` as a lab and a recipient run it: two agent processes against a real relay, for a compressed
"week" during which an LIS drops files at random (some written in pieces, some as ``.part`` then renamed, one
corrupt, one duplicate) while the relay is restarted and the network cut at random (issue 20, "Done when")."""

from __future__ import annotations

import csv
import json
import os
import random  # noqa: TID251 - seeded: when the LIS writes and when the plug is pulled, not a key
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from labrelay.domain.parties import Role
from labrelay.domain.records import FIELDS
from labrelay.synthetic.generator import Generator
from tests.support.scaled import Balancer
from tests.support.world import RelayServer, World, make_world, run_cli

DEADLINE = 90.0  # generous: the test normally converges in a fraction of this
SEED = 20


def _batch(index: int, count: int) -> tuple[bytes, set[str]]:
    """A valid CSV batch whose records carry unique ids (in the e-mail field, which CNAM receives); the ids of its
    positive records, the ones routed to CNAM."""
    rows = list(Generator(seed=500 + index, today=date.today()).records(count))  # noqa: DTZ011 - a calendar day
    positives = set()
    for n, row in enumerate(rows):
        row["email"] = f"rec-{index:02d}-{n:03d}@labrelay.test"
        if row["resultat"] == "POSITIF":
            positives.add(row["email"])
    out = _csv_text(rows)
    return out.encode("utf-8"), positives


def _csv_text(rows: list[dict[str, str]]) -> str:
    import io  # noqa: PLC0415 - only here

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class Lis:
    """The lab's information system: drops its exports into the outbox at seeded random moments, each in one of
    the ways an LIS writes (whole, in pieces with pauses shorter than ``stable_for``, or as ``.part`` renamed when
    complete, with pauses longer than ``stable_for``)."""

    def __init__(self, outbox: Path, rng: random.Random, plan: list[tuple[str, bytes, str]]) -> None:
        self.outbox, self.rng, self.plan = outbox, rng, plan
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.done = threading.Event()

    def _run(self) -> None:
        for name, data, how in self.plan:
            time.sleep(self.rng.uniform(0.3, 2.0))
            if how == "pieces":  # the agent sees it grow; each pause shorter than stable_for (2 s)
                with (self.outbox / name).open("wb") as fh:
                    for piece in (
                        data[: len(data) // 3],
                        data[len(data) // 3 : len(data) // 2],
                        data[len(data) // 2 :],
                    ):
                        fh.write(piece)
                        fh.flush()
                        time.sleep(self.rng.uniform(0.3, 0.9))
            elif how == "part":  # pauses longer than stable_for: only the rename makes it a candidate
                part = self.outbox / f"{name}.part"
                with part.open("wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    time.sleep(2.5)
                    fh.write(data[len(data) // 2 :])
                part.rename(self.outbox / name)
            else:
                (self.outbox / name).write_bytes(data)
        self.done.set()


class Chaos:
    """Restarts the relay on its port and cuts the network (the proxy between the agents and the relay) at seeded
    random moments, until stopped."""

    def __init__(self, world: World, relay_factory, proxy: Balancer, rng: random.Random) -> None:
        self.world, self.factory, self.proxy, self.rng = world, relay_factory, proxy, rng
        self.port = int(world.url.rsplit(":", 1)[1])
        self.stop = threading.Event()
        self.restarts = self.cuts = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        moves = ["restart", "cut", "restart", "cut"]
        self.rng.shuffle(moves)
        for move in moves:
            if self.stop.wait(self.rng.uniform(1.0, 3.0)):
                return
            if move == "cut":
                self.proxy.partition()
                time.sleep(self.rng.uniform(1.5, 3.5))
                self.proxy.heal()
                self.cuts += 1
            else:
                self.world.relay.kill()
                time.sleep(self.rng.uniform(0.2, 2.0))
                relay = RelayServer(self.world.relay.data, ("--port", str(self.port)))
                self.factory.started.append(relay)
                relay.start()
                self.world.relay = relay
                self.restarts += 1


class AgentProcess:
    """``labrelay agent --config FILE`` as a child process, its JSON events on ``stdout.jsonl``."""

    def __init__(self, config: Path, name: str) -> None:
        self.stdout = config.parent / f"{name}.stdout.jsonl"
        self.stderr = config.parent / f"{name}.stderr.log"
        env = {k: v for k, v in os.environ.items() if k != "LABRELAY_DEBUG"}
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "labrelay", "--retries", "1", "agent", "--config", str(config)],
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )

    def events(self) -> list[dict]:
        lines = self.stdout.read_text().splitlines() if self.stdout.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    def url(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            started = [e for e in self.events() if e["event"] == "agent.started"]
            if started:
                return started[0]["url"]
            assert self.proc.poll() is None, self.stderr.read_text()
            time.sleep(0.1)
        raise AssertionError("the agent never said it started")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


HOOK = """\
import os, pathlib, sys
log = pathlib.Path(sys.argv[1])
with log.open("a") as fh:
    fh.write(os.environ["LABRELAY_TRANSFER_ID"] + " " + os.environ["LABRELAY_FILE"] + " "
             + os.environ["LABRELAY_RECORDS"] + " " + os.environ["LABRELAY_FORMAT"] + "\\n")
marker = log.with_suffix(".failed-once")
if not marker.exists():  # the first file's hook fails: its file must be kept, and the failure reported
    marker.write_text("")
    sys.exit(7)
"""


def _configs(tmp: Path, world: World, proxy_url: str) -> tuple[Path, Path]:
    (tmp / "hook.py").write_text(HOOK)
    lab = tmp / "lab.toml"
    lab.write_text(
        f'server = "{proxy_url}"\n'
        f'party = "{world.party_dir("lab-paris-01")}"\n'
        "[agent]\n"
        'listen = "127.0.0.1:0"\n'
        'lock_wait = "30s"\n'
        "[[agent.lab]]\n"
        'outbox = "outbox"\n'
        'stable_for = "2s"\n'
        'sweep = "5s"\n'
        'backoff = "1s"\n'  # attempts left at its default (5): the relay's restart and the cuts are waited out
        'backoff_max = "1s"\n'
    )
    recipient = tmp / "cnam.toml"
    recipient.write_text(
        f'server = "{proxy_url}"\n'
        "[agent]\n"
        'listen = "127.0.0.1:0"\n'
        "[[agent.recipient]]\n"
        f'party = "{world.party_dir("cnam")}"\n'
        'inbox = "inbox"\n'
        'poll = "1s"\n'
        'backoff = "1s"\n'
        'backoff_max = "2s"\n'
        f'hook = ["{sys.executable}", "{tmp / "hook.py"}", "{tmp / "hook.log"}"]\n'
        'hook_timeout = "30s"\n'
    )
    (tmp / "outbox").mkdir()
    return lab, recipient


def _plan(rng: random.Random) -> tuple[list[tuple[str, bytes, str]], set[str], dict[str, bytes]]:
    plan, expected, valid = [], set(), {}
    hows = ["whole", "pieces", "part", "pieces", "whole", "part"]
    for i, how in enumerate(hows):
        data, positives = _batch(i, 60)
        plan.append((f"export-{i:02d}.csv", data, how))
        expected |= positives
        valid[f"export-{i:02d}.csv"] = data
    plan.insert(3, ("scan-0003.csv", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "whole"))
    plan.append(("export-00-copy.csv", valid["export-00.csv"], "whole"))  # the same export dropped twice
    return plan, expected, valid


def _wait_for(what: str, check, deadline: float) -> None:
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _inbox_ids(inbox: Path) -> Counter[str]:
    ids: Counter[str] = Counter()
    for path in inbox.glob("*.csv"):
        with path.open(encoding="utf-8", newline="") as fh:
            ids.update(row["email"] for row in csv.DictReader(fh))
    return ids


def _late(events: list[dict]) -> bool:
    mine = [e["event"] for e in events if e.get("file") == "export-late.csv"]
    return mine.count("file.retry") >= 7 or any(e in mine for e in ("file.sent", "file.failed", "file.vanished"))


def _terminal(events: list[dict]) -> Counter[str]:
    return Counter(e["file"] for e in events if e["event"] in ("file.sent", "file.failed", "file.vanished"))


@pytest.mark.slow
def test_a_week_of_exports_arrives_exactly_once_through_restarts_and_cuts(tmp_path: Path, relay_factory) -> None:
    rng = random.Random(SEED)
    world = make_world(tmp_path / "world", relay_factory)
    world.add("spf", Role.RECIPIENT)  # every recipient the policy names is enrolled: nothing refused for that
    backend = ("127.0.0.1", int(world.url.rsplit(":", 1)[1]))
    proxy = Balancer([backend])
    proxy.start()
    lab_config, cnam_config = _configs(tmp_path, world, f"http://127.0.0.1:{proxy.port}")
    outbox, inbox = tmp_path / "outbox", tmp_path / "inbox"
    plan, expected, _ = _plan(rng)
    written = {name for name, _, _ in plan}
    lab = AgentProcess(lab_config, "lab")
    cnam = AgentProcess(cnam_config, "cnam")
    try:
        lab.url()
        cnam_url = cnam.url()
        lis, chaos = Lis(outbox, rng, plan), Chaos(world, relay_factory, proxy, rng)
        lis.thread.start()
        chaos.thread.start()
        deadline = time.monotonic() + DEADLINE
        _wait_for("the LIS", lis.done.is_set, deadline)
        chaos.thread.join(timeout=DEADLINE)
        assert chaos.restarts >= 1, "the relay was never restarted: the test proves nothing"
        assert chaos.cuts >= 1, "the network was never cut: the test proves nothing"
        # A cut longer than the file's 5 attempts could last (were they counted): a file written during it is
        # retried far more often than that and sent once the network is back, never put in failed/.
        late, late_positives = _batch(99, 20)
        written.add("export-late.csv")
        expected |= late_positives
        proxy.partition()
        try:
            (outbox / "export-late.csv").write_bytes(late)
            _wait_for("7 retries of the late file, or its end", lambda: _late(lab.events()), deadline)
        finally:
            proxy.heal()
        late_events = [e for e in lab.events() if e.get("file") == "export-late.csv"]
        assert [e for e in late_events if e["event"] == "file.failed"] == [], "a long cut sent a file to failed/"
        assert {e["counted"] for e in late_events if e["event"] == "file.retry"} == {False}
        _wait_for("every file dealt with", lambda: set(_terminal(lab.events())) >= written, deadline)
        _wait_for("every record", lambda: set(_inbox_ids(inbox)) >= expected, deadline)
        hook_log = tmp_path / "hook.log"  # a file written by a pass cut off before its receipt is hooked by the next
        _wait_for(
            "every hook", lambda: len(hook_log.read_text().splitlines()) >= len(list(inbox.glob("*.csv"))), deadline
        )
        health = json.loads(urllib.request.urlopen(f"{cnam_url}/health", timeout=10).read())  # noqa: S310 - loopback
        metrics = urllib.request.urlopen(f"{cnam_url}/metrics", timeout=10).read().decode()  # noqa: S310 - loopback
        assert lab.terminate() == 0
        assert cnam.terminate() == 0
    finally:
        lab.kill()
        cnam.kill()
        proxy.stop()

    # Every valid record routed to CNAM arrived exactly once.
    ids = _inbox_ids(inbox)
    assert set(ids) == expected
    assert [i for i, n in ids.items() if n > 1] == []

    # The lab's log accounts for every file the LIS wrote: exactly one terminal event each.
    events = lab.events()
    assert _terminal(events) == Counter(written), _terminal(events)
    terminal = {e["file"]: e for e in events if e["event"] in ("file.sent", "file.failed")}
    assert any(e["event"] == "file.retry" for e in events), "no send ever failed: the chaos missed the agent"

    # The corrupt file is in failed/ with its reason; nothing else is.
    assert terminal["scan-0003.csv"]["event"] == "file.failed"
    reason = json.loads((outbox / "failed" / "scan-0003.csv.reason.json").read_text())
    assert (reason["error"]["kind"], reason["retried"], reason["attempts"]) == ("not-results", False, 1)
    assert sorted(p.name for p in (outbox / "failed").iterdir()) == ["scan-0003.csv", "scan-0003.csv.reason.json"]

    # The duplicate was sent once: written last, it found the original's batch (the original may say "already
    # sent" too: a first attempt cut off after sealing is finished, not sealed again, by the next).
    first, copy = terminal["export-00.csv"], terminal["export-00-copy.csv"]
    assert first["event"] == copy["event"] == "file.sent"
    assert first["batch_id"] == copy["batch_id"]
    assert copy["already_sent"] is True
    report = json.loads((outbox / "sent" / "export-00-copy.csv.report.json").read_text())
    assert report["batch_id"] == first["batch_id"]
    batches = {b for (b,) in world.db("SELECT DISTINCT batch_id FROM transfers")}
    assert batches == {e["batch_id"] for e in terminal.values() if e["event"] == "file.sent"}
    assert len(batches) == 7  # the six valid exports and the late one (the copy found its original's batch)
    assert sorted(p.name for p in outbox.iterdir()) == [".taking", "failed", "sent"]
    assert list((outbox / ".taking").iterdir()) == []

    # The hook ran once per file written; the one that failed kept its file, and was reported.
    cnam_events = cnam.events()
    hooked = [line.split() for line in (tmp_path / "hook.log").read_text().splitlines()]
    manifests = [json.loads(p.read_text()) for p in inbox.glob("*.manifest.json")]
    assert len(manifests) == 7  # one payload per batch for CNAM
    assert sorted(h[0] for h in hooked) == sorted(m["transfer_id"] for m in manifests)
    assert sorted(h[1] for h in hooked) == sorted(str(p) for p in inbox.glob("*.csv"))
    assert {h[3] for h in hooked} == {"csv"}
    failed_hooks = [e for e in cnam_events if e["event"] == "hook.failed"]
    assert [e["exit_code"] for e in failed_hooks] == [7]
    assert Path(failed_hooks[0]["file"]).is_file()
    assert health["parties"][0]["hook_failures"] == 1
    assert 'labrelay_agent_hook_failures_total{party="cnam"} 1.0' in metrics

    # Stopped cleanly: nothing half-written in the inbox, each run said it stopped.
    leftovers = [p.name for p in inbox.iterdir() if not p.name.endswith((".csv", ".manifest.json"))]
    assert leftovers == []
    for agent in (lab, cnam):
        assert agent.events()[-1]["event"] == "agent.stopped"
        assert "Traceback" not in agent.stderr.read_text()
    for e in events + cnam_events:  # no record contents in the logs
        assert "@labrelay.test" not in json.dumps(e)


def test_once_finishes_a_send_the_agent_died_before_sorting(tmp_path: Path, relay_factory) -> None:
    """A crash between a successful send and the move: the next run sends the file again, the idempotent send says
    it was sent before, and the file goes to sent/ (no second batch). ``--once`` exits with the worst outcome."""
    world = make_world(tmp_path / "world", relay_factory)
    world.add("spf", Role.RECIPIENT)
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    data, _ = _batch(40, 30)
    source = tmp_path / "export.csv"
    source.write_bytes(data)
    sent = run_cli("send", source, "--as", world.party_dir("lab-paris-01"), "--server", world.url)
    assert sent.code == 0, sent
    (outbox / "export.csv").write_bytes(data)  # the file the agent had sent, still in its outbox
    (outbox / "scan.csv").write_bytes(b"PK\x03\x04 not a csv")
    (outbox / "late.csv.part").write_bytes(data[:100])
    old = time.time() - 60
    for name in ("export.csv", "scan.csv", "late.csv.part"):
        os.utime(outbox / name, (old, old))
    config = tmp_path / "labrelay.toml"
    config.write_text(
        f'server = "{world.url}"\n[agent]\n[[agent.lab]]\nparty = "{world.party_dir("lab-paris-01")}"\n'
        'outbox = "outbox"\nstable_for = "5s"\n'
    )
    result = run_cli("agent", "--once", env={"LABRELAY_CONFIG": str(config)})
    assert result.code == 2, result  # the worst outcome: a file that is not lab results
    events = [json.loads(line) for line in result.out.splitlines()]
    done = {e["file"]: e for e in events if e["event"] in ("file.sent", "file.failed")}
    assert (done["export.csv"]["event"], done["export.csv"]["already_sent"]) == ("file.sent", True)
    assert (done["scan.csv"]["event"], done["scan.csv"]["kind"]) == ("file.failed", "not-results")
    assert "late.csv.part" not in done
    assert (outbox / "late.csv.part").exists()
    report = json.loads((outbox / "sent" / "export.csv.report.json").read_text())
    assert report["already_sent"] is True
    assert len({b for (b,) in world.db("SELECT DISTINCT batch_id FROM transfers")}) == 1
