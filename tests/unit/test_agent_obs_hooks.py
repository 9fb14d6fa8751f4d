"""The recipient's hooks across stops and crashes: a stop runs no more hooks, a hook the agent died during is
reported and never run again, and a hook is given what fetch's own journal says, never the inbox's sidecars."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labrelay.agent.recipient import HOOKS_DIR, RecipientWorker
from labrelay.client.fetch import Fetched, FetchReport
from labrelay.crypto.envelopes import sign_envelope
from labrelay.crypto.keys import AgeIdentity, SigningKey
from labrelay.domain.transfers import Manifest
from tests.unit.test_agent_obs import events, recipient

T1 = "0b5e3c2a-1f4d-4c8e-9a71-2d3f4e5a6b71"
T2 = "0b5e3c2a-1f4d-4c8e-9a71-2d3f4e5a6b72"
T9 = "0b5e3c2a-1f4d-4c8e-9a71-2d3f4e5a6b79"
BATCH = {T1: "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e41", T2: "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e42"}
BATCH[T9] = "7c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e49"

AGE_RECIPIENT = AgeIdentity.generate().recipient

HOOK = """\
import os, pathlib, sys
party = pathlib.Path(sys.argv[2])
tid = os.environ["LABRELAY_TRANSFER_ID"]
started = (party / "agent-hooks" / (tid + ".started")).exists()
with open(sys.argv[1], "a") as fh:
    fh.write(" ".join([tid, os.environ["LABRELAY_SENT_AGAIN"], os.environ["LABRELAY_BATCH_ID"], str(started)]) + "\\n")
"""


def manifest(transfer_id: str, *, again: bool = False) -> Manifest:
    now = datetime(2026, 1, 5, tzinfo=UTC)
    return Manifest(
        transfer_id=transfer_id,
        batch_id=BATCH[transfer_id],
        sender="lab-paris-01",
        recipient="cnam",
        recipient_key=AGE_RECIPIENT,
        size=1000,
        sha256="0" * 64,
        record_count=3,
        media_type="text/csv",
        created=now,
        deadline=now + timedelta(days=7),
        policy_version="v1",
        source_sha256="1" * 64,
        again=again,
    )


def received(w: RecipientWorker, transfer_id: str, *, again: bool = False) -> Fetched:
    """A payload fetch wrote into the inbox, as fetch's journal records it (the manifest signed by its sender)."""
    m = manifest(transfer_id, again=again)
    output = w.settings.inbox / f"{transfer_id}.csv"
    output.write_text("a,b\n")
    journal = w.party.path / "received"
    journal.mkdir(mode=0o700, exist_ok=True)
    entry = {
        "manifest": sign_envelope(m.to_payload(), SigningKey.generate(), "lab-paris-01"),
        "output": str(output),
        "records": 3,
        "receipt": {"payload": {}},
        "acknowledged": True,
    }
    (journal / f"{transfer_id}.json").write_text(json.dumps(entry))
    return Fetched(transfer_id, m.sender, output, m.size, 3, acknowledged=True, batch_id=m.batch_id)


def hooked(tmp_path: Path, w: RecipientWorker, monkeypatch: pytest.MonkeyPatch, report: FetchReport) -> list[str]:
    """One pass whose fetch gives ``report``; the hook log's lines."""
    monkeypatch.setattr("labrelay.agent.recipient.fetch_all", lambda *_a, **_k: report)
    monkeypatch.setattr(RecipientWorker, "_retire", lambda _self: [])
    w.run_once()
    log = tmp_path / "hook.log"
    return log.read_text().splitlines() if log.exists() else []


def hook_for(tmp_path: Path) -> tuple[str, ...]:
    (tmp_path / "hook.py").write_text(HOOK)
    return (sys.executable, str(tmp_path / "hook.py"), str(tmp_path / "hook.log"), str(tmp_path / "party"))


def test_a_stop_runs_no_more_hooks_and_the_next_start_runs_them(tmp_path: Path, monkeypatch) -> None:
    stop = threading.Event()
    w = recipient(tmp_path, hook=hook_for(tmp_path), stop=stop)
    items = [received(w, T1), received(w, T2, again=True)]

    def fetch_then_stop(*_a: object, **_k: object) -> FetchReport:
        stop.set()  # SIGTERM during the pass: the pass finishes, no hook starts
        return FetchReport(fetched=items)

    monkeypatch.setattr("labrelay.agent.recipient.fetch_all", fetch_then_stop)
    monkeypatch.setattr(RecipientWorker, "_retire", lambda _self: [])
    w.run_once()
    assert not (tmp_path / "hook.log").exists()
    assert [e["event"] for e in events(w)] == ["payload.fetched", "payload.fetched", "hook.deferred", "hook.deferred"]
    assert sorted(p.name for p in (w.party.path / HOOKS_DIR).iterdir()) == [f"{T1}.pending", f"{T2}.pending"]

    later = recipient(tmp_path, hook=hook_for(tmp_path))  # the next start, a pass with nothing new
    later.started = 1e12  # the journal entries are older than this run: only their pending markers bring them
    lines = hooked(tmp_path, later, monkeypatch, FetchReport())
    # Run once each, from the journal (sent again on purpose: t2), the "started" marker present while it ran.
    assert sorted(lines) == [f"{T1} 0 {BATCH[T1]} True", f"{T2} 1 {BATCH[T2]} True"]
    assert sorted(p.name for p in (w.party.path / HOOKS_DIR).iterdir()) == [f"{T1}.done", f"{T2}.done"]
    assert hooked(tmp_path, later, monkeypatch, FetchReport(fetched=items)) == lines  # never again


def test_a_hook_the_agent_died_during_is_reported_once_and_never_run_again(tmp_path: Path, monkeypatch) -> None:
    w = recipient(tmp_path, hook=hook_for(tmp_path))
    item = received(w, T1)
    (w.party.path / HOOKS_DIR).mkdir()
    died = w.party.path / HOOKS_DIR / f"{T1}.started"  # the agent was killed (SIGKILL) while its hook ran
    died.write_text(json.dumps({"transfer_id": T1, "file": str(item.path)}))
    assert hooked(tmp_path, w, monkeypatch, FetchReport(fetched=[item])) == []
    interrupted = [e for e in events(w) if e["event"] == "hook.interrupted"]
    assert [(e["transfer_id"], e["reason"], e["file"]) for e in interrupted] == [(T1, "interrupted", str(item.path))]
    assert w.status.as_dict()["hook_failures"] == 1
    assert w.status.as_dict()["last_hook_failure"]["reason"] == "interrupted"
    assert w.ctx.metrics.hook_failures.labels("cnam")._value.get() == 1
    assert w.worst == 1
    assert sorted(p.name for p in (w.party.path / HOOKS_DIR).iterdir()) == [f"{T1}.failed"]

    again = recipient(tmp_path, hook=hook_for(tmp_path))  # another restart: said once, not twice
    assert hooked(tmp_path, again, monkeypatch, FetchReport(fetched=[item])) == []
    assert [e["event"] for e in events(again) if e["event"].startswith("hook.")] == []


@pytest.mark.threat("T42")
def test_a_forged_sidecar_in_the_inbox_gets_no_hook(tmp_path: Path, monkeypatch) -> None:
    """Whoever loads the inbox may write a sidecar there: a pass cut off (nothing in its report) must not run a
    hook for a transfer fetch never received, nor take its fields from there."""
    w = recipient(tmp_path, hook=hook_for(tmp_path))
    forged = manifest(T9, again=True)
    (w.settings.inbox / f"{T9}.csv").write_text("a,b\n")
    sidecar = {"manifest": sign_envelope(forged.to_payload(), SigningKey.generate(), "lab-paris-01"), "unparsed": 1}
    (w.settings.inbox / f"{T9}.manifest.json").write_text(json.dumps(sidecar))
    received(w, T1)  # written by this run's pass, cut off before its receipt: its hook is due
    assert hooked(tmp_path, w, monkeypatch, FetchReport()) == [f"{T1} 0 {BATCH[T1]} True"]
