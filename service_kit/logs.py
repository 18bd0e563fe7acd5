"""JSON logs, one object per line, each carrying the request id of the RPC it belongs to,
and never a secret.

Invariants, whatever ``KEEL_LOG_LEVEL`` is:

- **No secret is written.** Every string of every line (message, exception, extra
  fields) passes through :func:`redact`, which replaces with ``[REDACTED]``: URL query
  tokens (``?token=…``, ``&client_secret=…``), the values of ``authorization``,
  ``x-client-secret`` and cookie headers or metadata, client secrets (``ks_…``), webhook
  secrets (``whsec_…``), JWTs (client tokens), passwords in URLs, and the values the
  process registered with :func:`redact_values` (the operator, peer and token-signing
  secrets). A field named like a secret (``authorization``, ``client_secret``,
  ``token`` …) is redacted whole.
- **No frame is written.** The websockets library logs request lines, headers and
  every frame's contents at DEBUG; its loggers stay at INFO or above.
- **Spans are named.** A line written while a trace span is current carries its
  ``trace_id`` and ``span_id`` (hex, as trace viewers show them; :mod:`service_kit.tracing`).
- **Connections are named.** The ``websocket`` field websockets attaches to its lines
  (a connection object, which would print as ``<ServerConnection object at 0x…>``) is
  written as ``peer`` (the client's address) and ``path`` (without the query string).
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import queue
import re
import sys
import time
from collections.abc import Iterable
from logging.handlers import QueueHandler, QueueListener
from typing import Any
from urllib.parse import urlsplit

from service_kit import tracing

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "keel_request_id", default=None
)

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)

REDACTED = "[REDACTED]"
# No value class below matches a backslash or a quote, so a redaction never swallows the
# end of a quoted or escaped string around the secret.
_V = r"[^\s'\"\\,;&#]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # ?token=… &client_secret=… in URLs and HTTP request lines
    (
        re.compile(
            r"(?i)([?&](?:token|access_token|client_secret|secret|password|key|sig|signature)=)"
            + _V
            + "+"
        ),
        rf"\1{REDACTED}",
    ),
    # header or metadata values: "authorization: Bearer …", ('x-client-secret', '…'), …
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization|x-client-secret|x-keel-peer-token|(?:set-)?cookie)"
            r"(\\?['\"]?\s*[:=,]\s*(?:b?\\?['\"])?)(?:(?:bearer|basic)\s+)?" + _V + "+"
        ),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"\bks_[A-Za-z0-9_-]{8,}"), f"ks_{REDACTED}"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{8,}"), f"whsec_{REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?"), REDACTED),
    # scheme://user:password@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/\s@'\"]*:)[^@\s/'\"\\]+@"), rf"\1{REDACTED}@"),
)
_SECRET_FIELD = re.compile(
    r"(?i)^(?:(?:proxy-)?authorization|x-client-secret|(?:client_|webhook_)?secret|token"
    r"|password|cookie|client_token|admin_token|peer_token)$"
)
_registered: list[str] = []
_registered_pattern: re.Pattern[str] | None = None


def redact_values(values: Iterable[str | None]) -> None:
    """Redact these exact values (the process's own secrets) from every later log line.

    Values shorter than 8 characters are ignored (they would redact ordinary words)."""
    global _registered_pattern
    _registered.extend(v for v in values if v and len(v) >= 8 and v not in _registered)
    if _registered:
        longest_first = sorted(_registered, key=len, reverse=True)
        _registered_pattern = re.compile("|".join(map(re.escape, longest_first)))


def redact(text: str) -> str:
    """``text`` with every secret it shows replaced (see the module docstring)."""
    if _registered_pattern is not None:
        text = _registered_pattern.sub(REDACTED, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any, key: str = "") -> Any:
    if key and _SECRET_FIELD.match(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def _describe_connection(connection: Any) -> dict[str, str]:
    """``peer`` and ``path`` of a websockets connection (``websocket`` in its log lines)."""
    described: dict[str, str] = {}
    try:
        peer = connection.remote_address
        request = connection.request
    except (ReferenceError, AttributeError):  # websockets passes a weak proxy
        return described
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        described["peer"] = f"{host}:{peer[1]}"
    path = getattr(request, "path", None)
    if isinstance(path, str):
        described["path"] = urlsplit(path).path
    return described


def _add_trace_fields(fields: dict[str, Any]) -> None:
    """``trace_id`` and ``span_id`` of the current span into ``fields``, when there is one."""
    ids = tracing.log_fields()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        if "trace_id" not in record.__dict__:  # else the handoff noted it, on its thread
            _add_trace_fields(entry)
        for key, value in record.__dict__.items():
            if key == "websocket":
                entry.update(_describe_connection(value))
            elif key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = _redact_value(value, key)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        return json.dumps(entry, default=lambda value: redact(str(value)))


class _Handoff(QueueHandler):
    """Hands records to the writer thread; keeps what only this thread knows (the
    request id) and the exception text, and leaves the JSON encoding to the writer."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        request_id = request_id_var.get()
        if request_id and "request_id" not in record.__dict__:
            record.request_id = request_id
        if "trace_id" not in record.__dict__:
            _add_trace_fields(record.__dict__)
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        record.msg, record.args = record.getMessage(), None
        connection = record.__dict__.pop("websocket", None)
        if connection is not None:  # described now: it may be gone by the time it is written
            record.__dict__.update(_describe_connection(connection))
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
    # Its DEBUG lines are request lines (with ?token=), headers and frame contents.
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLevelName(level)))


def flush_logging() -> None:
    """Write out every queued record now (before an exit that skips ``atexit``)."""
    if _listener is not None:
        _listener.stop()
