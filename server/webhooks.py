"""Webhooks (outbox): subscriptions per seller organisation, signed deliveries read from the
global log with a checkpoint. Registered by server.http.routes(), server.cli and server.app."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []


def register(sub: Any) -> None:
    """Add `mapstream webhooks ...` to the CLI's subparsers."""


def start(app: Starlette) -> list[asyncio.Task[None]]:
    """Background tasks (the delivery worker) started in the app's lifespan."""
    return []


def openapi(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) to merge into /openapi.json; `ref` formats a component $ref."""
    return {}, {}
