"""The recipient side: what waits is fetched continuously, through the same checks as ``labrelay fetch`` (and the
retired identities nothing needs any more destroyed after it, as ``fetch`` does), into the inbox in the chosen
format; then the hook, if any, runs once per file written.

Polling every ``poll`` (±20 %), backing off exponentially (with jitter) after a pass that failed or left payloads
unfinished. Events: ``payload.fetched`` per file written, ``payload.declined`` (a duplicate of a source received
before), ``payload.refused`` (a payload that failed a check: refused to the relay once, never retried),
``payload.failed`` (not finished now: next pass), ``fetch.failed`` (the whole pass), ``identity.destroyed``,
``hook.done`` and ``hook.failed``.

The hook is a command (a list, no shell) run with the manifest's fields in its environment (``LABRELAY_FILE``,
``LABRELAY_MANIFEST``, ``LABRELAY_TRANSFER_ID``, ``LABRELAY_SENDER``, ``LABRELAY_BATCH_ID``, ``LABRELAY_RECORDS``,
``LABRELAY_FORMAT``, ``LABRELAY_PARTY``, ``LABRELAY_SIZE``, ``LABRELAY_UNPARSED``, ``LABRELAY_SENT_AGAIN``), its
standard input empty, its output discarded and the inbox as its working directory, killed after
``hook_timeout``. Its failure keeps the file (it was written and acknowledged already), is logged, counted, and
shown on /health. A hook runs once per file: a marker per transfer in ``PARTY/agent-hooks/``, made before it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from labrelay.agent.policy import Backoff, classify, error_fields, jittered
from labrelay.agent.settings import RecipientSettings
from labrelay.agent.worker import Context, Worker
from labrelay.client.fetch import Fetched, FetchReport, fetch_all
from labrelay.crypto.envelopes import envelope_payload
from labrelay.domain.transfers import Manifest
from labrelay.errors import LabrelayError

HOOKS_DIR = "agent-hooks"  # in the party's directory: one marker per transfer whose hook ran

if TYPE_CHECKING:
    from labrelay.client.rotation import Destroyed


class RecipientWorker(Worker):
    side = "recipient"

    def __init__(self, settings: RecipientSettings, ctx: Context) -> None:
        super().__init__(settings.party, ctx)
        self.settings = settings
        self.backoff = Backoff(settings.retry)
        self.started = time.time()

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
        except Exception as exc:  # noqa: BLE001 - never fatal: said, counted, and the next pass backs off
            fields = error_fields(exc)
            self.status.failed(fields)
            self.note_exit(classify(exc).exit_code)
            self.emit("fetch.failed", **fields)
            return False
        self._report(report, destroyed)
        for item in [*report.fetched, *self._written_unhooked(report)]:
            # A file written by a pass that failed afterwards (its receipt not taken) comes back "again" on the
            # next: its hook runs then, once, as the marker in the party's directory says.
            if item.duplicate_of is None and item.path.is_file() and not self._hooked(item):
                self._hook(item)
        return not report.failed

    def _written_unhooked(self, report: FetchReport) -> list[Fetched]:
        """Files this run wrote in a pass that failed after writing them (its receipt cut off): found by their
        sidecars, newer than the agent's start, whose hook has not run."""
        if not self.settings.hook:
            return []
        seen = {item.transfer_id for item in report.fetched}
        found = []
        for sidecar in self.settings.inbox.glob("*.manifest.json"):
            item = _from_sidecar(sidecar, self.started, self.settings.format)
            if item is not None and item.transfer_id not in seen and not self._hooked(item):
                found.append(item)
        return found

    def _hooked(self, item: Fetched) -> bool:
        return not self.settings.hook or (self.party.path / HOOKS_DIR / f"{item.transfer_id}.done").exists()

    def _mark_hooked(self, item: Fetched) -> None:
        folder = self.party.path / HOOKS_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        (folder / f"{item.transfer_id}.done").touch()

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
        self._mark_hooked(item)  # before it runs: a hook is run at most once per file, even across a crash
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
            self._hook_failed({**detail, "reason": "timeout", "timeout": self.settings.hook_timeout})
            return
        except OSError as exc:
            self._hook_failed({**detail, "reason": "cannot run", "message": exc.strerror or type(exc).__name__})
            return
        if done.returncode != 0:
            self._hook_failed({**detail, "reason": "exit", "exit_code": done.returncode})
            return
        self.emit("hook.done", **detail)

    def _hook_failed(self, detail: dict[str, object]) -> None:
        self.status.hook_failed(detail)
        self.note_exit(1)
        self.emit("hook.failed", **detail)


def _from_sidecar(sidecar: Path, since: float, output_format: str) -> Fetched | None:
    """A written file's description, from the manifest sidecar fetch writes beside it (None: older, or not ours)."""
    try:
        if sidecar.stat().st_mtime < since:
            return None
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
        manifest = Manifest.from_payload(envelope_payload(doc["manifest"]))
    except (OSError, ValueError, KeyError, TypeError, LabrelayError):
        return None
    stem = sidecar.name.removesuffix(".manifest.json")
    data = [p for p in sidecar.parent.glob(f"{stem}.*") if p != sidecar]
    if len(data) != 1:
        return None
    return Fetched(
        manifest.transfer_id,
        manifest.sender,
        data[0],
        data[0].stat().st_size,
        manifest.record_count,
        acknowledged=False,
        batch_id=manifest.batch_id,
        unparsed=bool(doc.get("unparsed")),
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
