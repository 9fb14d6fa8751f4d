"""The progress bars ``ui.TerminalProgress`` shows on a terminal (loaded only there: rich's progress module is a
noticeable share of a small command's start-up)."""

from __future__ import annotations

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text


class _CountColumn(ProgressColumn):
    """``1,200/10,000 records 800/s`` for records, ``12.0/40.0 MB 5.1 MB/s`` for bytes: each task in its unit."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "bytes")
        speed = task.finished_speed or task.speed
        if unit == "bytes":
            total = f"/{decimal(int(task.total))}" if task.total is not None else ""
            rate = f" {decimal(int(speed))}/s" if speed else ""
            return Text(f"{decimal(int(task.completed))}{total}{rate}")
        total = f"/{int(task.total):,}" if task.total is not None else ""
        rate = f" {speed:,.0f}/s" if speed else ""
        return Text(f"{int(task.completed):,}{total} {unit}{rate}")


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        _CountColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
