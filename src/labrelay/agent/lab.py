"""The lab side: an outbox watched (file events, and a sweep as a safety net), each complete file claimed (moved
into ``.taking/``, where nothing else can replace it), sent exactly once from there through the idempotent routed
send, then filed into ``sent/`` or ``failed/``. Files left in ``.taking/`` by a run that stopped are resumed
first: sending one again is safe (the relay answers "already sent").

Failures (decided by the error's class): the relay away or asking to come back later (unreachable, timed out,
429, 503, frozen) and the party's lock held by a manual run are waited out: retried for ever, at the back-off,
never counted against the file. Other operational failures (the relay answered with an error that may not go
away: 507 storage full, another 5xx…) and unexpected errors count: after ``attempts`` of them, ``failed/``. Data,
usage and security refusals go to ``failed/`` at once. A file being retried stays in ``.taking/`` (the backlog
counts it). A file that cannot be moved (a full disk, permissions, an unsafe ``sent/``) stays in ``.taking/`` too,
the move retried at the back-off.

Events (``file.*``): ``file.taken`` at each attempt; ``file.retry`` after each failure that leaves the file to be
tried again (``counted`` says whether it counts against ``attempts``; ``stage`` is ``send``, ``claim`` or
``move``); exactly one terminal event per file: ``file.sent`` (``already_sent`` true when the send found it sent
before) or ``file.failed`` (with the error's kind and message), unless it vanished first (``file.vanished``);
``file.ignored`` once for each name in the outbox that is not input (a link, a directory, a special file).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from labrelay.agent.outbox import Completeness, NotRegular, Sorter, scan, settled
from labrelay.agent.policy import Backoff, classify, detailed_error, error_fields
from labrelay.agent.settings import LabSettings
from labrelay.agent.worker import Context, Stopping, Worker
from labrelay.domain.timeutil import to_rfc3339
from labrelay.errors import PartyBusy, RelayFrozen, Unavailable, UsageError

# The relay did not answer, or said "come back later", or a manual run holds the party's lock: waited out (and
# a stop that cut the client's retries short: left in .taking/ for the next start, not counted either).
WAITED = (Unavailable, RelayFrozen, PartyBusy, Stopping)


def waited(exc: BaseException) -> bool:
    """Whether a failure is waited out (retried for ever, not counted against the file's attempts)."""
    return isinstance(exc, WAITED)


def local_fields(exc: BaseException) -> dict[str, Any]:
    """An OSError's errno name (``ENOSPC``) and the system's fixed text for it (never its path), or a labrelay
    error's fields."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return {
            "kind": errno.errorcode.get(exc.errno, "OSError"),
            "error_type": type(exc).__name__,
            "exit_code": 1,
            "message": os.strerror(exc.errno),
        }
    return error_fields(exc)


@dataclass
class _Attempts:
    made: int = 0  # failures counted against ``attempts``
    tries: int = 0  # sends begun
    failures: int = 0  # every failure, for the back-off
    next_at: float = 0.0
    filed: tuple[str, dict[str, Any]] | None = None  # decided (sent/failed and its document), not yet moved


class LabWorker(Worker):
    side = "lab"

    def __init__(self, settings: LabSettings, ctx: Context) -> None:
        super().__init__(settings.party, ctx)
        if not settings.outbox.is_dir():
            raise UsageError(f"the outbox {settings.outbox} is not a directory")
        self.settings = settings
        self.sorter = Sorter(settings.outbox)
        self.complete = Completeness(settings.stable_for)
        self.backoff = Backoff(settings.retry)
        self.attempts: dict[str, _Attempts] = {}
        self.ignored: set[str] = set()

    # ---------------------------------------------------------------- loops

    def run(self) -> None:
        """File events wake the loop at once; the timeout is the sweep (and the re-check of files settling). An
        error of the sweep itself is a bug: it ends the thread (and the process, which systemd restarts)."""
        wake = max(0.2, min(self.settings.sweep, self.settings.stable_for / 2))
        self.sweep()
        for _ in self._wakes(wake):
            self.sweep()

    def _wakes(self, wake: float) -> Iterator[None]:
        """One item per file event or timeout; without inotify (limits, a network file system), on a timer."""
        try:
            from watchfiles import watch  # noqa: PLC0415 - only the long-running lab side needs it

            changes = iter(
                watch(
                    self.settings.outbox,
                    stop_event=self.ctx.stop,
                    yield_on_timeout=True,
                    rust_timeout=int(wake * 1000),
                    debounce=200,
                    recursive=False,
                    raise_interrupt=False,
                )
            )
            while True:
                try:
                    next(changes)
                except StopIteration:
                    return
                yield
        except Exception as exc:  # noqa: BLE001 - only watch()'s own errors land here: sweep() runs outside the try
            self.emit("agent.watch_unavailable", **error_fields(exc))
        while not self.ctx.stop.wait(wake):
            yield

    def run_once(self) -> bool:
        """Resume what ``.taking/`` holds, then take every complete file once: one last modified ``stable_for`` ago
        at once, a younger one after watching it stay still for ``stable_for`` (a file just renamed from ``.part``
        keeps its write time); a file still changing after three times that is left to the next run."""
        stable_for = self.settings.stable_for
        for name in self._claimed():
            self.take(name, once=True, claimed=True)
        give_up = time.monotonic() + 3 * stable_for
        tried: set[str] = set()
        while not self.ctx.stop.is_set():
            files = {name: snap for name, snap in self._scan().items() if name not in tried}
            ready = set(settled(files, stable_for, time.time())) | set(self.complete.ready(files))
            for name in sorted(ready):
                if self.ctx.stop.is_set():
                    break
                tried.add(name)
                self.take(name, once=True)
            if not set(files) - ready or time.monotonic() >= give_up:
                break
            self.ctx.stop.wait(min(0.5, max(0.05, stable_for / 4)))
        for name in set(self._scan()) - tried:
            self.emit("file.settling", file=name)  # still being written: the next run takes it
        self._scan()
        return self.worst == 0

    def sweep(self) -> None:
        try:
            files = self._scan()
            claimed = self.sorter.claimed()
        except (OSError, UsageError) as exc:  # the outbox unmounted, permissions changed: said, tried next sweep
            fields = local_fields(exc)
            self.status.failed({"kind": "outbox-unreadable", "message": f"{self.settings.outbox}: {fields['message']}"})
            self.emit("outbox.unreadable", outbox=str(self.settings.outbox), **fields)
            return
        now = time.monotonic()
        for name in set(self.attempts) - set(files) - set(claimed):
            del self.attempts[name]
        for name in claimed:  # resumed first: claimed by an earlier pass (or run), or waiting to be retried
            if self.ctx.stop.is_set():
                return
            if self.attempts.get(name, _Attempts()).next_at <= now:
                self.take(name, claimed=True)
        for name in self.complete.ready(files):
            if self.ctx.stop.is_set():
                return
            if name not in claimed and self.attempts.get(name, _Attempts()).next_at <= now:
                self.take(name)

    def _scan(self) -> dict[str, tuple[int, int]]:
        """The outbox's candidates; the backlog set (with the files in ``.taking/``); ``file.ignored`` said once for
        each new name that is not input."""
        others: dict[str, str] = {}
        files = scan(self.settings.outbox, others)
        for name in sorted(set(others) - self.ignored):
            self.emit("file.ignored", file=name, why=others[name])
        self.ignored = set(others)
        self.status.set_backlog(len(files) + len(self._claimed()))
        return files

    def _claimed(self) -> list[str]:
        try:
            return self.sorter.claimed()
        except (OSError, UsageError):
            return []  # said by the claim or the move that meets it

    # ---------------------------------------------------------------- one file

    def take(self, name: str, *, once: bool = False, claimed: bool = False) -> None:
        """Claim one complete file (unless ``claimed`` already), send it and file it; on a failure that is retried,
        schedule its next attempt (the file stays in ``.taking/``)."""
        attempts = self.attempts.setdefault(name, _Attempts())
        if not claimed and not self._claim(name, attempts):
            return
        if attempts.filed is None:
            attempts.tries += 1
            self.emit("file.taken", file=name, attempt=attempts.tries, resumed=claimed or None)
            try:
                report = self._send(self.sorter.taking_dir / name)
            except Exception as exc:  # noqa: BLE001 - classified by class: retried, or failed/ with its reason
                self._failed(name, exc, attempts, once=once)
                return
            attempts.filed = ("sent", report)
        self._file(name, attempts)

    def _claim(self, name: str, attempts: _Attempts) -> bool:
        try:
            self.sorter.claim(name)
        except FileNotFoundError:
            self._vanished(name)
            return False
        except FileExistsError:
            return False  # a file of that name is still being taken: this one waits for it
        except NotRegular:
            self.complete.forget(name)
            return False  # swapped for a link since the scan: the next scan says file.ignored
        except (OSError, UsageError) as exc:  # .taking/ unsafe or unwritable: said, retried at the back-off
            self._retry(name, attempts, local_fields(exc), 2 if isinstance(exc, UsageError) else 1, stage="claim")
            return False
        return True

    def _file(self, name: str, attempts: _Attempts) -> None:
        """Move the claimed file to where its outcome says, with its document; if the move fails, it stays in
        ``.taking/`` and the move is retried (not the send)."""
        if attempts.filed is None:
            return
        where, doc = attempts.filed
        try:
            dest = self.sorter.sent(name, doc) if where == "sent" else self.sorter.failed(name, doc)
        except (OSError, UsageError) as exc:
            if not (self.sorter.taking_dir / name).exists():
                self._vanished(name)
                return
            fields = local_fields(exc)
            self.status.failed(fields)
            self._retry(name, attempts, fields, 2 if isinstance(exc, UsageError) else 1, stage="move")
            return
        self._forget(name)
        if where == "sent":
            self._sent(name, dest, doc)
        else:
            self._gave_up(name, dest, doc)

    def _sent(self, name: str, dest: Path, report: dict[str, Any]) -> None:
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
        if not (self.sorter.taking_dir / name).exists():
            self._vanished(name)
            return
        counted = not waited(exc)
        attempts.made += counted
        if not counted or (kind.retried and (once or not self.backoff.exhausted(attempts.made))):
            self._retry(name, attempts, fields, kind.exit_code, stage="send", counted=counted)
            return
        attempts.filed = (
            "failed",
            {
                "party": self.party.name,
                "source": name,
                "at": to_rfc3339(self.ctx.clock.now()),
                "attempts": attempts.made,
                "retried": kind.retried,
                "class": kind.value,
                "error": detailed_error(exc),  # the full diagnostics: here only, never in the log
                "exit_code": kind.exit_code,
                "resubmit": "fix the cause, then move the file back into the outbox",
            },
        )
        self._file(name, attempts)

    def _retry(
        self, name: str, attempts: _Attempts, fields: dict[str, Any], code: int, *, stage: str, counted: bool = False
    ) -> None:
        delay = self.backoff.delay(attempts.failures)
        attempts.failures += 1
        attempts.next_at = time.monotonic() + delay
        self.note_exit(code)
        self.emit(
            "file.retry",
            file=name,
            attempt=attempts.tries,
            counted=counted,
            stage=stage,
            retry_in=round(delay, 1),
            **fields,
        )

    def _gave_up(self, name: str, dest: Path, reason: dict[str, Any]) -> None:
        self.note_exit(reason["exit_code"])
        self.ctx.metrics.files.labels(self.party.name, "failed").inc()
        self.emit(
            "file.failed",
            file=name,
            moved_to=str(dest),
            attempts=reason["attempts"],
            **{"class": reason["class"]},
            **{k: v for k, v in reason["error"].items() if k != "detail"},
        )

    def _vanished(self, name: str) -> None:
        self._forget(name)
        self.emit("file.vanished", file=name)

    def _forget(self, name: str) -> None:
        self.attempts.pop(name, None)
        self.complete.forget(name)
