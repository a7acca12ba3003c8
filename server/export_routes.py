"""Export routes (one-pager, items table, calendar). Registered by server.http.routes().

Every export is rendered from `view_for(plan, side)`: the other side's internal items are in
no export. The renderers are pure (projections/exports.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain.visibility import view_for
from projections import exports
from server.apidoc import PLAN_ID, Doc
from server.http import current_user, plan_for_member, services


def _download(body: str | bytes, media_type: str, plan_id: str, ext: str) -> Response:
    return Response(
        body,
        media_type=media_type,
        headers={
            # plan ids are [A-Za-z0-9_-]: safe in a quoted filename
            "content-disposition": f'attachment; filename="plan-{plan_id}.{ext}"',
            "x-content-type-options": "nosniff",
        },
    )


async def export_markdown(request: Request) -> Response:
    """GET /plans/{id}/export.md: the one-page plan a champion forwards (your side's view)."""
    user = current_user(request)
    plan, side = await plan_for_member(request, user)
    body = exports.markdown(view_for(plan, side))
    return _download(body, "text/markdown; charset=utf-8", plan.id, "md")


async def export_csv(request: Request) -> Response:
    """GET /plans/{id}/export.csv: one row per milestone and action item (UTF-8 with BOM)."""
    user = current_user(request)
    plan, side = await plan_for_member(request, user)
    body = "\ufeff" + exports.csv_table(view_for(plan, side))  # the BOM tells Excel it is UTF-8
    return _download(body.encode("utf-8"), "text/csv; charset=utf-8", plan.id, "csv")


async def export_ics(request: Request) -> Response:
    """GET /plans/{id}/export.ics: due dates and the next review as all-day events."""
    user = current_user(request)
    plan, side = await plan_for_member(request, user)
    body = exports.calendar(view_for(plan, side), services(request).clock())
    return _download(body, "text/calendar; charset=utf-8", plan.id, "ics")


def routes() -> list[Route]:
    return [
        Route("/plans/{plan_id}/export.md", export_markdown, methods=["GET"]),
        Route("/plans/{plan_id}/export.csv", export_csv, methods=["GET"]),
        Route("/plans/{plan_id}/export.ics", export_ics, methods=["GET"]),
    ]


_EXPORTS = {
    "md": (
        "text/markdown",
        "The one-page plan: title, orgs, value statement, compelling event, objectives, "
        "milestones with owners, due dates and status, open risks, next review",
    ),
    "csv": (
        "text/csv",
        "The items table, one row per milestone and action item (UTF-8 with BOM); columns: "
        + ", ".join(exports.CSV_COLUMNS),
    ),
    "ics": (
        "text/calendar",
        "Due dates of milestones and action items and the next review, as all-day events "
        "(RFC 5545)",
    ),
}


def openapi(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) to merge into /openapi.json."""
    errors = Doc(ref).errors("404 not_found (not a member)")
    paths: dict[str, Any] = {}
    for ext, (media_type, what) in _EXPORTS.items():
        paths[f"/plans/{{plan_id}}/export.{ext}"] = {
            "get": {
                "summary": f"{what} (your side's view: the other side's internal items left out)",
                "parameters": [PLAN_ID],
                "responses": {
                    "200": {
                        "description": f"the plan as {media_type}",
                        "content": {media_type: {"schema": {"type": "string"}}},
                    },
                    **errors,
                },
            }
        }
    return paths, {}
