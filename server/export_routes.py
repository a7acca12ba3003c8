"""Export routes (one-pager, items table, calendar). Registered by server.http.routes()."""

from __future__ import annotations

from typing import Any

from starlette.routing import Route


def routes() -> list[Route]:
    return []


def openapi(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) to merge into /openapi.json."""
    return {}, {}
