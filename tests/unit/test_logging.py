"""The relay's log keeps an exception's type, never its traceback or message (which could carry request data)."""

from __future__ import annotations

import logging
import sys

from labrelay.cli.logging import TypeOnly


def test_tracebacks_are_reduced_to_the_exception_type() -> None:
    try:
        raise ValueError("bound parameter: 1840275123456 DUPONT")  # what a driver error might echo
    except ValueError:
        record = logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", None, sys.exc_info()
        )
    assert TypeOnly().filter(record)
    text = logging.Formatter().format(record)
    assert "ValueError" in text
    assert "DUPONT" not in text
    assert "Traceback" not in text
    assert "1840275123456" not in text
