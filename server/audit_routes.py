"""Auditor routes (audit trail, diff, verify, tags). Registered by server.http.routes()."""

from __future__ import annotations

from starlette.routing import Route


def routes() -> list[Route]:
    return []
