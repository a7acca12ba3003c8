"""The reference web client, served at `/` from server/web/ (no build step).
Registered by server.http.routes().

The client is plain ES modules, one stylesheet and one page; nothing is fetched from
elsewhere. It talks to the same API and socket as any other client (bearer token, `/ws`).
Static files need no token: they hold no plan data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parent / "web"

# The page loads only its own files and talks only to its own origin (the socket included):
# with the token in sessionStorage, injected script must have nowhere to come from.
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _WebFiles(StaticFiles):
    """Static files revalidated on every load (ETag): an upgraded server serves its own JS."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


async def index(request: Request) -> Response:
    """GET /: the web client's page."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET"]),
        Mount("/web", app=_WebFiles(directory=WEB_DIR), name="web"),
    ]


def openapi(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) to merge into /openapi.json; `ref` formats a component $ref."""
    paths = {
        "/": {
            "get": {
                "summary": "The reference web client (static page; its files are under /web/)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the web client's page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        }
    }
    return paths, {}
