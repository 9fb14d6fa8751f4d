"""The rich console the CLI prints through when rich is needed (a terminal, a renderable, a progress bar).

Imported on first need by ``labrelay.cli.ui.Output``: rich's console costs about 20 ms of start-up, which a
command run from cron, writing lines to a log, does not pay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.segment import Segment

from labrelay.cli.printable import printable


class SafeConsole(Console):
    """A rich console that shows, never obeys, control and invisible characters (``printable``): every string
    given to ``print`` is neutralised whole, newlines included, and markup is off unless asked for; every piece
    of text rendered (progress labels, any renderable) is neutralised again, keeping only the line breaks rich
    itself lays out. The console's own control sequences (progress bars) are not text and pass."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            segment if segment.control else segment._replace(text=printable(segment.text, newlines=True))
            for segment in buffer
        )
