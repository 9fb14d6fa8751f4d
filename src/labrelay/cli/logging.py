"""The relay's logs: one JSON object per line on stderr (structlog), with no payload data (there is none).

Exceptions are logged by type only. uvicorn logs an unhandled exception with its traceback, whose frames and
messages could carry request values (a database driver's bound parameters, say); ``TypeOnly`` reduces it to
the exception's type. The operator reproduces with ``--verbose`` on a test relay when details are needed.

Log lines may reach an operator's terminal: structlog's JSON is ASCII with every control character escaped, and
``Printable`` shows the control and invisible characters of any other record as escapes (labrelay.cli.printable).
"""

from __future__ import annotations

import logging
import sys

import structlog

from labrelay.cli.printable import printable


class TypeOnly(logging.Filter):
    """Replace a record's exception (and traceback) by the exception's type name."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            exc_type = record.exc_info[0]
            name = exc_type.__name__ if exc_type is not None else "exception"
            record.msg = f"{record.getMessage()} ({name}; traceback withheld)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class Printable(logging.Filter):
    """Show a record's control and invisible characters as escapes: a log line cannot rewrite the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = printable(message)
        if safe != message:
            record.msg = safe
            record.args = None
        return True


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi", "starlette"):
        logging.getLogger(name).addFilter(TypeOnly())
    for handler in logging.getLogger().handlers:
        handler.addFilter(TypeOnly())
        handler.addFilter(Printable())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
