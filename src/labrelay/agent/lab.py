"""The lab side: an outbox watched (file events, and a sweep as a safety net), each complete file validated and
sent exactly once through the idempotent routed send, then sorted into ``sent/`` or ``failed/``.

Events (``file.*``): ``file.retry`` after an operational failure (the file stays and is tried again after a
back-off); exactly one terminal event per file: ``file.sent`` (``already_sent`` true when the send found it sent
before) or ``file.failed`` (with the error's kind and message), unless it vanished from the outbox first
(``file.vanished``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from labrelay.agent.outbox import Completeness, Sorter, scan, settled
from labrelay.agent.policy import Backoff, classify, error_fields
from labrelay.agent.settings import LabSettings
from labrelay.agent.worker import Context, Worker
from labrelay.domain.timeutil import to_rfc3339


@dataclass
class _Attempts:
    made: int = 0
    next_at: float = 0.0


class LabWorker(Worker):
    side = "lab"

    def __init__(self, settings: LabSettings, ctx: Context) -> None:
        super().__init__(settings.party, ctx)
        if not settings.outbox.is_dir():
            from labrelay.errors import UsageError  # noqa: PLC0415 - the one usage error of this module

            raise UsageError(f"the outbox {settings.outbox} is not a directory")
        self.settings = settings
        self.sorter = Sorter(settings.outbox)
        self.complete = Completeness(settings.stable_for)
        self.backoff = Backoff(settings.retry)
        self.attempts: dict[str, _Attempts] = {}

    # ---------------------------------------------------------------- loops

    def run(self) -> None:
        """File events wake the loop at once; the timeout is the sweep (and the re-check of files settling)."""
        wake = max(0.2, min(self.settings.sweep, self.settings.stable_for / 2))
        try:
            from watchfiles import watch  # noqa: PLC0415 - only the long-running lab side needs it

            self.sweep()
            for _changes in watch(
                self.settings.outbox,
                stop_event=self.ctx.stop,
                yield_on_timeout=True,
                rust_timeout=int(wake * 1000),
                debounce=200,
                recursive=False,
                raise_interrupt=False,
            ):
                self.sweep()
        except Exception as exc:  # noqa: BLE001 - no inotify (limits, a network file system): sweep on a timer
            self.emit("agent.watch_unavailable", **error_fields(exc))
            while not self.ctx.stop.wait(wake):
                self.sweep()

    def run_once(self) -> bool:
        """Take every complete file once: one last modified ``stable_for`` ago at once, a younger one after
        watching it stay still for ``stable_for`` (a file just renamed from ``.part`` keeps its write time); a file
        still changing after three times that is left to the next run."""
        stable_for = self.settings.stable_for
        give_up = time.monotonic() + 3 * stable_for
        tried: set[str] = set()
        while not self.ctx.stop.is_set():
            files = {name: snap for name, snap in scan(self.settings.outbox).items() if name not in tried}
            self.status.set_backlog(len(files))
            ready = set(settled(files, stable_for, time.time())) | set(self.complete.ready(files))
            for name in sorted(ready):
                if self.ctx.stop.is_set():
                    break
                tried.add(name)
                self.take(name, once=True)
            if not set(files) - ready or time.monotonic() >= give_up:
                break
            self.ctx.stop.wait(min(0.5, max(0.05, stable_for / 4)))
        for name in set(scan(self.settings.outbox)) - tried:
            self.emit("file.settling", file=name)  # still being written: the next run takes it
        self.status.set_backlog(len(scan(self.settings.outbox)))
        return self.worst == 0

    def sweep(self) -> None:
        try:
            files = scan(self.settings.outbox)
        except OSError as exc:  # the outbox unmounted, its permissions changed: said, and tried again next sweep
            self.status.failed({"kind": "outbox-unreadable", "message": f"{self.settings.outbox}: {exc.strerror}"})
            self.emit("outbox.unreadable", outbox=str(self.settings.outbox), message=exc.strerror)
            return
        self.status.set_backlog(len(files))
        now = time.monotonic()
        for name in set(self.attempts) - set(files):
            del self.attempts[name]
        for name in self.complete.ready(files):
            if self.ctx.stop.is_set():
                return
            if self.attempts.get(name, _Attempts()).next_at <= now:
                self.take(name)

    # ---------------------------------------------------------------- one file

    def take(self, name: str, *, once: bool = False) -> None:
        """Send one complete file and sort it; on an operational failure, schedule its next attempt."""
        attempts = self.attempts.setdefault(name, _Attempts())
        attempts.made += 1
        self.emit("file.taken", file=name, attempt=attempts.made)
        try:
            report = self._send(self.settings.outbox / name)
        except Exception as exc:  # noqa: BLE001 - classified by class: retried, or failed/ with its reason
            self._failed(name, exc, attempts, once=once)
            return
        try:
            dest = self.sorter.sent(name, report)
        except FileNotFoundError:
            self._vanished(name)
            return
        self._forget(name)
        self.status.succeeded()
        self.ctx.metrics.files.labels(self.party.name, "already_sent" if report["already_sent"] else "sent").inc()
        self.ctx.metrics.records.labels(self.party.name, self.side).inc(report.get("records") or 0)
        self.emit(
            "file.sent",
            file=name,
            moved_to=str(dest),
            batch_id=report["batch_id"],
            already_sent=report["already_sent"],
            records=report.get("records"),
            transfers=len(report.get("transfers") or {}),
        )

    def _send(self, path: Path) -> dict[str, Any]:
        from labrelay.client.routed import SendOptions, send_results  # noqa: PLC0415 - loads polars
        from labrelay.client.send import tidy  # noqa: PLC0415 - beside it

        s = self.settings
        options = SendOptions(
            ttl=timedelta(seconds=s.ttl),
            restrict=list(s.to) or None,
            input_format=s.input_format,
            dpo=s.dpo,
            ledger_retention=timedelta(seconds=s.ledger_retention),
            max_rejected=s.max_rejected,
            fail_on_held=s.fail_on_held,
        )
        with self.locked():
            tidy(self.party)
            routed = send_results(self.party, self.client, path, self.ctx.clock, options)
        return {
            "party": self.party.name,
            "source": path.name,
            "at": to_rfc3339(self.ctx.clock.now()),
            "records": routed.records,
            **routed.as_dict(),
        }

    def _failed(self, name: str, exc: Exception, attempts: _Attempts, *, once: bool) -> None:
        kind = classify(exc)
        fields = error_fields(exc)
        self.status.failed(fields)
        if not (self.settings.outbox / name).exists():
            self._vanished(name)
            return
        if kind.retried and (once or not self.backoff.exhausted(attempts.made)):
            delay = self.backoff.delay(attempts.made - 1)
            attempts.next_at = time.monotonic() + delay
            self.note_exit(kind.exit_code)
            self.emit("file.retry", file=name, attempt=attempts.made, retry_in=round(delay, 1), **fields)
            return
        reason = {
            "party": self.party.name,
            "source": name,
            "at": to_rfc3339(self.ctx.clock.now()),
            "attempts": attempts.made,
            "retried": kind.retried,
            "class": kind.value,
            "error": fields,
            "resubmit": "fix the cause, then move the file back into the outbox",
        }
        dest = self.sorter.failed(name, reason)
        self._forget(name)
        self.note_exit(kind.exit_code)
        self.ctx.metrics.files.labels(self.party.name, "failed").inc()
        self.emit(
            "file.failed", file=name, moved_to=str(dest), attempts=attempts.made, **{"class": kind.value}, **fields
        )

    def _vanished(self, name: str) -> None:
        self._forget(name)
        self.emit("file.vanished", file=name)

    def _forget(self, name: str) -> None:
        self.attempts.pop(name, None)
        self.complete.forget(name)
