"""Observability: /metrics (Prometheus), /readyz, request ids and JSON logs.
Registered by server.http.routes() and server.app (middleware)."""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware
from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []


def middleware() -> list[Middleware]:
    return []


def openapi(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) to merge into /openapi.json; `ref` formats a component $ref."""
    return {}, {}
