"""The recipient side: what waits is fetched continuously, through the same checks as ``labrelay fetch`` (and the
retired identities nothing needs any more destroyed after it, as ``fetch`` does), into the inbox in the chosen
format; then the hook, if any, runs once per file written.

Polling every ``poll`` (±20 %), backing off exponentially (with jitter) after a pass that failed or left payloads
unfinished. Events: ``payload.fetched`` per file written, ``payload.declined`` (a duplicate of a source received
before), ``payload.refused`` (a payload that failed a check: refused to the relay once, never retried),
``payload.failed`` (not finished now: next pass), ``fetch.failed`` (the whole pass), ``identity.destroyed``,
``hook.done``, ``hook.failed``, ``hook.interrupted``, ``hook.deferred`` and ``fetch.stopped`` (a stop cut the
client's retries short).

The hook is a command (a list, no shell) run with the manifest's fields in its environment (``LABRELAY_FILE``,
``LABRELAY_MANIFEST``, ``LABRELAY_TRANSFER_ID``, ``LABRELAY_SENDER``, ``LABRELAY_BATCH_ID``, ``LABRELAY_RECORDS``,
``LABRELAY_FORMAT``, ``LABRELAY_PARTY``, ``LABRELAY_SIZE``, ``LABRELAY_UNPARSED``, ``LABRELAY_SENT_AGAIN``), its
standard input empty, its output discarded and the inbox as its working directory, killed after
``hook_timeout``. Its failure keeps the file (it was written and acknowledged already), is logged, counted, and
shown on /health. A hook runs at most once per file, whatever happens to the agent: a marker per transfer in
``PARTY/agent-hooks/``, ``ID.started`` before it runs, replaced by ``ID.done`` or ``ID.failed`` after. A marker
still ``started`` when the agent starts is a hook the agent died during (SIGKILL, a crash, a power cut): it is
reported (``hook.interrupted``, counted as a failed hook) and never run again; its operator re-runs it. A stop
asked between two hooks runs no more of them: the ones left are marked ``ID.pending`` (``hook.deferred``) and run
by the next start. The files a hook is run for, and the manifest fields it is given, come from fetch's own journal
of what it received (``PARTY/received/ID.json``, in the party's private directory, written after every check
passed), never from the inbox's sidecars (which whoever loads the inbox may write).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labrelay.agent.policy import Backoff, classify, error_fields, jittered
from labrelay.agent.settings import RecipientSettings
from labrelay.agent.worker import Context, Stopping, Worker
from labrelay.client.fetch import SOURCES_FILE, Fetched, FetchReport, fetch_all, journal_entry
from labrelay.client.keystore import Party
from labrelay.crypto.envelopes import envelope_payload
from labrelay.domain.transfers import Manifest
from labrelay.errors import LabrelayError

HOOKS_DIR = "agent-hooks"  # in the party's directory: one marker per transfer whose hook ran or is due
RAN = ("started", "done", "failed")  # a hook with one of these markers is never run (again)

if TYPE_CHECKING:
    from labrelay.client.rotation import Destroyed


class RecipientWorker(Worker):
    side = "recipient"

    def __init__(self, settings: RecipientSettings, ctx: Context) -> None:
        super().__init__(settings.party, ctx)
        self.settings = settings
        self.backoff = Backoff(settings.retry)
        self.started = time.time()
        self.recovered = False

    def run(self) -> None:
        failures = 0
        while not self.ctx.stop.is_set():
            ok = self.run_once()
            failures = 0 if ok else failures + 1
            delay = jittered(self.settings.poll) if ok else self.backoff.delay(failures - 1)
            self.ctx.stop.wait(delay)

    def run_once(self) -> bool:
        """One pass: fetch what waits, then the hooks. True when nothing is left unfinished."""
        try:
            with self.locked():
                report = fetch_all(
                    self.party, self.client, self.settings.inbox, self.ctx.clock, output_format=self.settings.format
                )
                destroyed = self._retire()
        except Stopping:
            self.emit("fetch.stopped")  # a stop cut a retry's wait short: what waits is fetched at the next start
            return False
        except Exception as exc:  # noqa: BLE001 - never fatal: said, counted, and the next pass backs off
            fields = error_fields(exc)
            self.status.failed(fields)
            self.note_exit(classify(exc).exit_code)
            self.emit("fetch.failed", **fields)
            return False
        self._report(report, destroyed)
        self._run_hooks(report)
        return not report.failed

    def _run_hooks(self, report: FetchReport) -> None:
        """The hooks of the files this pass wrote, then of those a pass cut off wrote (their receipt not taken, they
        come back "again"), or a stop deferred; between two hooks, a stop defers the rest to the next start."""
        if not self.settings.hook:
            return
        if not self.recovered:
            self._report_interrupted()
            self.recovered = True
        due = self._due(report)
        for index, item in enumerate(due):
            if self.ctx.stop.is_set():
                for left in due[index:]:
                    self._mark(left, "pending")
                    self.emit("hook.deferred", transfer_id=left.transfer_id, file=str(left.path))
                return
            self._hook(item)

    def _due(self, report: FetchReport) -> list[Fetched]:
        """Every file whose hook is due, described from fetch's journal (not the inbox's sidecars): written by
        this pass, or since the agent started, or deferred by a stop."""
        wanted = [item.transfer_id for item in report.fetched if item.duplicate_of is None]
        journal = self.party.path / "received"
        for entry in sorted(journal.glob("*.json")) if journal.is_dir() else []:
            if entry.name != SOURCES_FILE and (
                self._marker(entry.stem, "pending").exists() or _mtime(entry) >= self.started
            ):
                wanted.append(entry.stem)
        due: dict[str, Fetched] = {}
        for transfer_id in wanted:
            if transfer_id in due or self._hooked(transfer_id):
                continue
            item = _from_journal(self.party, transfer_id, self.settings.format)
            if item is not None and item.path.is_file():
                due[transfer_id] = item
        return list(due.values())

    def _marker(self, transfer_id: str, state: str) -> Path:
        return self.party.path / HOOKS_DIR / f"{transfer_id}.{state}"

    def _hooked(self, transfer_id: str) -> bool:
        return any(self._marker(transfer_id, state).exists() for state in RAN)

    def _mark(self, item: Fetched, state: str, **detail: Any) -> None:
        """Write ``ID.state`` (the file and transfer, and ``detail``), then remove the marker it replaces."""
        folder = self.party.path / HOOKS_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        doc = {"transfer_id": item.transfer_id, "file": str(item.path), **detail}
        part = folder / f".{item.transfer_id}.{state}.part"
        part.write_text(json.dumps(doc), encoding="utf-8")
        part.replace(self._marker(item.transfer_id, state))
        for old in ("pending", "started"):
            if old != state:
                self._marker(item.transfer_id, old).unlink(missing_ok=True)

    def _report_interrupted(self) -> None:
        """Hooks the agent died during (a ``started`` marker at start-up): reported, counted, marked failed; never
        run again (their operator re-runs them)."""
        folder = self.party.path / HOOKS_DIR
        for marker in sorted(folder.glob("*.started")) if folder.is_dir() else []:
            try:
                doc = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                doc = {}
            transfer_id = marker.name.removesuffix(".started")
            item = Fetched(transfer_id, "", Path(str(doc.get("file") or "")), 0, None, acknowledged=True)
            self._mark(item, "failed", reason="interrupted")
            detail = {"file": str(item.path), "transfer_id": transfer_id, "reason": "interrupted"}
            self._hook_failed(detail, event="hook.interrupted")

    def _retire(self) -> list[Destroyed]:
        from labrelay.client.rotation import RETIRED_FILE, retire_due  # noqa: PLC0415 - as fetch does

        if not (self.party.path / RETIRED_FILE).exists():
            return []
        return retire_due(self.party, self.client, self.ctx.clock.now())

    def _report(self, report: FetchReport, destroyed: list[Destroyed]) -> None:
        for item in report.fetched:
            if item.duplicate_of is not None:
                self.emit(
                    "payload.declined",
                    transfer_id=item.transfer_id,
                    sender=item.sender,
                    batch_id=item.batch_id,
                    duplicate_of=item.duplicate_of,
                )
            elif item.again:
                self.emit("payload.acknowledged_again", transfer_id=item.transfer_id, sender=item.sender)
            else:
                self.ctx.metrics.payloads.labels(self.party.name).inc()
                self.ctx.metrics.records.labels(self.party.name, self.side).inc(item.records or 0)
                self.emit(
                    "payload.fetched",
                    transfer_id=item.transfer_id,
                    sender=item.sender,
                    batch_id=item.batch_id,
                    records=item.records,
                    file=str(item.path),
                    format=item.output_format,
                    unparsed=item.unparsed,
                )
        self._problems("payload.refused", report.refused)
        self._problems("payload.failed", report.failed)
        for gone in destroyed:
            self.emit("identity.destroyed", recipient=gone.recipient, note=gone.note())
        self.status.set_backlog(len(report.failed))
        if report.failed:
            self.status.failed({"kind": "unfinished", "message": f"{len(report.failed)} payload(s) left for later"})
        else:
            self.status.succeeded()

    def _problems(self, event: str, items: list[tuple[str, LabrelayError]]) -> None:
        for transfer_id, exc in items:
            self.note_exit(classify(exc).exit_code)
            self.emit(event, transfer_id=transfer_id, **error_fields(exc))

    def _hook(self, item: Fetched) -> None:
        self._mark(item, "started")  # before it runs: a hook is run at most once per file, even across a crash
        env = {**os.environ, **hook_environment(self.party.name, item)}
        detail = {"file": str(item.path), "transfer_id": item.transfer_id}
        try:
            done = subprocess.run(
                list(self.settings.hook),
                cwd=self.settings.inbox,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=self.settings.hook_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self._hook_failed({**detail, "reason": "timeout", "timeout": self.settings.hook_timeout}, item)
            return
        except OSError as exc:
            self._hook_failed({**detail, "reason": "cannot run", "message": exc.strerror or type(exc).__name__}, item)
            return
        if done.returncode != 0:
            self._hook_failed({**detail, "reason": "exit", "exit_code": done.returncode}, item)
            return
        self._mark(item, "done")
        self.emit("hook.done", **detail)

    def _hook_failed(self, detail: dict[str, Any], item: Fetched | None = None, event: str = "hook.failed") -> None:
        if item is not None:
            self._mark(item, "failed", reason=detail["reason"])
        self.status.hook_failed(detail)
        self.note_exit(1)
        self.emit(event, **detail)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _from_journal(party: Party, transfer_id: str, output_format: str) -> Fetched | None:
    """A written file's description, from fetch's journal of what this party received (the manifest verified
    before anything was written, where the data went, its records): None for a transfer not decrypted into a file
    (a ``--raw`` download, a declined duplicate) or an entry that cannot be read."""
    try:
        entry = journal_entry(party, transfer_id)
        if not entry or not entry.get("receipt") or not entry.get("output"):
            return None
        manifest = Manifest.from_payload(envelope_payload(entry["manifest"]))
    except (OSError, ValueError, KeyError, TypeError, LabrelayError):
        return None
    if manifest.transfer_id != transfer_id:
        return None
    return Fetched(
        transfer_id,
        manifest.sender,
        Path(str(entry["output"])),
        manifest.size,
        entry.get("records"),
        acknowledged=bool(entry.get("acknowledged")),
        batch_id=manifest.batch_id,
        unparsed=manifest.unparsed,
        sent_again=manifest.again,
        output_format=output_format,
    )


def hook_environment(party: str, item: Fetched) -> dict[str, str]:
    """The manifest's fields a hook is given, as environment variables."""
    doc = item.as_dict()
    return {
        "LABRELAY_PARTY": party,
        "LABRELAY_FILE": str(item.path),
        "LABRELAY_MANIFEST": str(doc.get("manifest_file") or ""),
        "LABRELAY_TRANSFER_ID": item.transfer_id,
        "LABRELAY_SENDER": item.sender,
        "LABRELAY_BATCH_ID": item.batch_id,
        "LABRELAY_RECORDS": "" if item.records is None else str(item.records),
        "LABRELAY_FORMAT": item.output_format,
        "LABRELAY_SIZE": str(item.size),
        "LABRELAY_UNPARSED": "1" if item.unparsed else "0",
        "LABRELAY_SENT_AGAIN": "1" if item.sent_again else "0",
    }
