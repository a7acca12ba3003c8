"""The reference web client, served at `/` from server/web/ (no build step).
Registered by server.http.routes()."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []


def openapi(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) to merge into /openapi.json; `ref` formats a component $ref."""
    return {}, {}
