"""Errors with stable codes. The server maps `code` to an HTTP status in one table."""

from __future__ import annotations

from typing import Any


class MapstreamError(Exception):
    """Base of every error a client may see: a stable snake_case `code` plus a sentence."""

    code = "error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


class Malformed(MapstreamError):
    """The request could not be understood: bad JSON, unknown type, missing or wrong field."""

    code = "malformed"


class NotFound(MapstreamError):
    code = "not_found"


class Forbidden(MapstreamError):
    code = "forbidden"


class VersionConflict(MapstreamError):
    """`expected_version` is stale; `current_version` says where the plan is now."""

    code = "version_conflict"

    def __init__(self, current_version: int, expected_version: int) -> None:
        super().__init__(
            f"the plan is at version {current_version}, not {expected_version}: "
            "reload it and try again",
            current_version=current_version,
        )
        self.current_version = current_version


class DomainError(MapstreamError):
    """A plan rule refused the command. `rule` names the rule, e.g. `done_is_final`."""

    code = "rule_violation"

    def __init__(self, rule: str, message: str, **extra: Any) -> None:
        super().__init__(message, rule=rule, **extra)
        self.rule = rule
