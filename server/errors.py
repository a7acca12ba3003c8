"""One table from error code to HTTP status; the hub sends the same body as a `reject`."""

from __future__ import annotations

from typing import Any

import msgspec

from domain.errors import MapstreamError


class PayloadTooLarge(MapstreamError):
    code = "payload_too_large"


class RateLimited(MapstreamError):
    code = "rate_limited"


STATUS: dict[str, int] = {
    "malformed": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "version_conflict": 409,
    "payload_too_large": 413,
    "rule_violation": 422,
    "import_invalid": 422,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
}


def status_of(error: MapstreamError) -> int:
    return STATUS.get(error.code, 400)


def error_body(error: MapstreamError) -> dict[str, Any]:
    return {"error": error.body()}


def decode_error_to_malformed(exc: msgspec.DecodeError | msgspec.ValidationError) -> MapstreamError:
    """msgspec says e.g. "Expected `int`, got `str` - at `$.due`": keep it, and name the field."""
    from domain.errors import Malformed

    text = str(exc)
    extra: dict[str, Any] = {}
    if "- at `$." in text:
        extra["field"] = text.rsplit("- at `$.", 1)[1].rstrip("`").split(".")[0].split("[")[0]
    elif "missing required field `" in text:
        extra["field"] = text.split("missing required field `", 1)[1].split("`")[0]
    elif "unknown field `" in text:
        extra["field"] = text.split("unknown field `", 1)[1].split("`")[0]
    return Malformed(text, **extra)


def database_down(exc: BaseException) -> bool:
    """True when `exc` means PostgreSQL is unreachable or going away (retrying later helps)."""
    import asyncpg

    if isinstance(
        exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.PostgresConnectionError
    ):
        return True
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    # 08: connection exceptions; 57P01-57P03: admin shutdown, crash shutdown, cannot connect now
    return isinstance(exc, asyncpg.PostgresError) and (
        sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03")
    )
