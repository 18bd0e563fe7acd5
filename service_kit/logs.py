"""JSON logs, one object per line, each carrying the request id of the RPC it belongs to."""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import queue
import sys
import time
from logging.handlers import QueueHandler, QueueListener
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "keel_request_id", default=None
)

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


class _Handoff(QueueHandler):
    """Hands records to the writer thread; keeps what only this thread knows (the
    request id) and the exception text, and leaves the JSON encoding to the writer."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        request_id = request_id_var.get()
        if request_id and "request_id" not in record.__dict__:
            record.request_id = request_id
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        record.msg, record.args = record.getMessage(), None
        # Extra fields are encoded later, on another thread, when what they refer to may be
        # gone (websockets logs weak references to connections): keep plain values only.
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and not isinstance(value, str | int | float | bool):
                try:
                    record.__dict__[key] = json.loads(json.dumps(value, default=str))
                except (ReferenceError, TypeError, ValueError):
                    record.__dict__[key] = repr(type(value))
        return record


_listener: QueueListener | None = None


def configure_logging(level: str) -> None:
    """Send every logger's records to stderr as JSON lines at ``level``.

    Records are encoded and written by a background thread, so a slow stderr
    never stalls the event loop (an access log line is written per RPC).
    """
    global _listener
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(JsonFormatter())
    if _listener is not None:
        _listener.stop()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = QueueListener(records, writer)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [_Handoff(records)]
    root.setLevel(level)
    for noisy in ("aiosqlite", "asyncio", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def flush_logging() -> None:
    """Write out every queued record now (before an exit that skips ``atexit``)."""
    if _listener is not None:
        _listener.stop()
