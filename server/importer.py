"""Plan import from the items CSV (the export format round-trips): `POST /plans/import` and
`mapstream import`. Registered by server.http.routes() and server.cli."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []


def register(sub: Any) -> None:
    """Add `mapstream import` to the CLI's subparsers."""


def openapi(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) to merge into /openapi.json; `ref` formats a component $ref."""
    return {}, {}
