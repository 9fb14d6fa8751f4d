"""The agent's log: one JSON object a line on stdout, for journald, a log shipper or a test to read.

Each event has ``ts`` (RFC 3339, UTC), ``event`` and, when it concerns one, ``party``; then ids (file name,
transfer, batch), counts, and for failures ``policy.error_fields``: the error's ``kind`` (its stable code), its
``error_class``, ``error_type`` and ``exit_code``, and a fixed ``message`` chosen by its class, never the error's own
text (a message may quote what an input held: a header row that was a patient's record). Never a record's contents.
Non-ASCII and control characters are escaped (``\\uXXXX``), so a file name cannot forge a line of its own.
"""

from __future__ import annotations

import json
import threading
from typing import Any, TextIO

from labrelay.domain.timeutil import to_rfc3339
from labrelay.ports import Clock


class EventLog:
    """Thread-safe: each event is written and flushed whole."""

    def __init__(self, stream: TextIO, clock: Clock) -> None:
        self._stream = stream
        self._clock = clock
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        doc = {"ts": to_rfc3339(self._clock.now()), "event": event}
        doc.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(doc, ensure_ascii=True, default=str, separators=(",", ":"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
