"""Auditor routes: audit trail, diff, tags, verify. Registered by server.http.routes().

Every route is for plan members, and shows what the caller's side may see: the other side's
internal items are in no audit row and in no diff.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain.decider import decode_event
from domain.errors import Malformed, MapstreamError
from domain.model import Plan, Side
from domain.visibility import view_for
from projections.audit import AuditRow
from projections.diff import ItemDiff, diff, versions_by_item
from server.apidoc import PLAN_ID, Doc
from server.codec import int_query, json_response
from server.http import current_user, plan_for_member, services
from server.replica import serve_read
from server.store import Store
from server.tools import audit_query, verdict_body, verify_with_head, version_of

# How long GET /audit waits for the asynchronous trail to reach the plan's version.
CATCH_UP_SECONDS = 2.0


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def _trail_version(request: Request, plan: Plan, store: Store) -> int:
    """The plan's last version in the audit trail, after waiting briefly for the runner."""
    version = await store.audit_version(plan.id)
    runner = getattr(request.app.state, "projections", {}).get("audit")
    if version >= plan.version or runner is None:
        return version
    runner.wake()
    try:
        async with asyncio.timeout(CATCH_UP_SECONDS):
            while version < plan.version:
                await asyncio.sleep(0.02)
                version = await store.audit_version(plan.id)
    except TimeoutError:
        pass
    return version


async def get_audit(request: Request) -> Response:
    """GET /plans/{id}/audit?actor=&item=&type=&from=&to=&after=&limit=: the trail, in order.

    `from`/`to` take a version, a tag or an ISO-8601 time; `type` a comma-separated list of
    event types; `actor` an email or a name. Pages: pass `next` back as `after`."""
    user = current_user(request)
    limit = int_query(request, "limit", 100, low=1, high=1000)
    after = int_query(request, "after", 0)
    return await serve_read(
        request,
        user,
        lambda svc, plan, side: _audit_page(request, svc.store, plan, side, limit, after),
    )


async def _audit_page(
    request: Request, store: Store, plan: Plan, side: Side, limit: int, after: int
) -> Response:
    params = request.query_params
    query = audit_query(
        plan,
        actor=params.get("actor"),
        item=params.get("item"),
        types=params.get("type"),
        start=params.get("from"),
        end=params.get("to"),
        side=side,
        after=after,
        limit=limit,
    )
    trail_version = await _trail_version(request, plan, store)
    rows = await store.read_audit(plan.id, query)
    return json_response(
        {
            "plan_id": plan.id,
            "version": plan.version,
            "trail_version": trail_version,
            "complete": trail_version >= plan.version,
            "rows": [msgspec.Raw(row.encode()) for _, row in rows],
            "next": rows[-1][0] if len(rows) == limit else None,
        }
    )


async def get_diff(request: Request) -> Response:
    """GET /plans/{id}/diff?from=N&to=M: items added, removed and changed, with the events.

    `from` and `to` are versions or tags; `to` defaults to the current version, `from=0` is
    the empty plan before creation."""
    user = current_user(request)
    plan, side = await plan_for_member(request, user)
    svc = services(request)
    raw_from = request.query_params.get("from")
    if not raw_from:
        raise Malformed("give `from`: a version or a tag", field="from")
    start = version_of(plan, raw_from, "from")
    raw_to = request.query_params.get("to")
    end = version_of(plan, raw_to, "to") if raw_to else plan.version
    if start > end:
        raise Malformed(f"`from` ({start}) is after `to` ({end})", field="from")
    before = Plan(id=plan.id) if start == 0 else await svc.at_version(plan.id, start)
    after = plan if end == plan.version else await svc.at_version(plan.id, end)
    events = await svc.store.read_stream(plan.id, after=start, upto=end)
    seen: list[tuple[int, Any]] = []
    for e in events:
        if e.audience is None or e.audience == side:
            try:
                seen.append((e.version, decode_event(e.type, e.schema_version, e.data)))
            except (MapstreamError, LookupError, msgspec.ValidationError):
                continue  # an event this code cannot read changes no item it knows
    changes = diff(view_for(before, side), view_for(after, side), versions_by_item(seen))
    return json_response(DiffPage(plan.id, start, end, changes))


async def get_tags(request: Request) -> Response:
    """GET /plans/{id}/tags: the named versions, with who tagged them and when."""
    user = current_user(request)
    plan, _side = await plan_for_member(request, user)
    tagged = await _store(request).events_of_type(plan.id, ["VersionTagged"])
    by_name: dict[str, dict[str, Any]] = {}
    for e in tagged:
        name = msgspec.json.decode(e.data).get("name")
        by_name[name] = {"tagged_by": e.actor, "tagged_at": e.recorded_at, "tagged_in": e.version}
    tags = [
        {"name": name, "version": version, **by_name.get(name, {})}
        for name, version in sorted(plan.tags.items(), key=lambda t: (t[1], t[0]))
    ]
    return json_response({"plan_id": plan.id, "tags": tags})


async def get_verify(request: Request) -> Response:
    """GET /plans/{id}/verify: recompute the hash chain from the stored events."""
    user = current_user(request)
    plan, _side = await plan_for_member(request, user)
    verdict = await verify_with_head(_store(request), plan.id)
    return json_response(verdict_body(plan.id, verdict))


# -- the OpenAPI description of these routes (merged by server/openapi.py) -------------------


class AuditPage(msgspec.Struct):
    plan_id: str
    version: int
    trail_version: int
    complete: bool
    rows: list[AuditRow]
    next: int | None


class DiffPage(msgspec.Struct):
    plan_id: str
    start: int = msgspec.field(name="from")
    to: int = 0
    changes: list[ItemDiff] = []


class TagOut(msgspec.Struct):
    name: str
    version: int
    tagged_by: str
    tagged_at: datetime
    tagged_in: int


class TagsPage(msgspec.Struct):
    plan_id: str
    tags: list[TagOut]


class VerifyOut(msgspec.Struct):
    """`{ok: true, version, head_hash}` or `{ok: false, broken_at, reason, intact_to, intact_head}`."""

    plan_id: str
    ok: bool
    version: int | None = None
    head_hash: str | None = None
    broken_at: int | None = None
    reason: str | None = None
    intact_to: int | None = None
    intact_head: str | None = None


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": schema or {"type": "string"},
    }


_BOUND = "a version, a tag or an ISO-8601 time with a zone"


def openapi(ref_template: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) of the auditor routes, for the OpenAPI document."""
    _, components = msgspec.json.schema_components(
        [AuditPage, DiffPage, TagsPage, VerifyOut], ref_template=ref_template
    )

    doc = Doc(ref_template)

    def ok(name: str, what: str) -> dict[str, Any]:
        return {
            "200": {"description": what, "content": doc.body(name)},
            **doc.errors("404 not_found (not a member, no such version or tag)"),
        }

    plan_id = PLAN_ID
    paths = {
        "/plans/{plan_id}/audit": {
            "get": {
                "summary": "The audit trail: one readable row per event (your side's view)",
                "parameters": [
                    plan_id,
                    _query("actor", "an email or a name"),
                    _query("item", "an item id the event is about"),
                    _query("type", "event types, comma-separated"),
                    _query("from", _BOUND),
                    _query("to", _BOUND),
                    _query("after", "the `next` of the previous page", type="integer", minimum=0),
                    _query("limit", "rows per page", type="integer", minimum=1, maximum=1000),
                ],
                "responses": ok("AuditPage", "a page of the trail"),
            }
        },
        "/plans/{plan_id}/diff": {
            "get": {
                "summary": "What changed between two versions (or tags), item by item",
                "parameters": [
                    plan_id,
                    {**_query("from", "a version or a tag"), "required": True},
                    _query("to", "a version or a tag (default: now)"),
                ],
                "responses": ok("DiffPage", "the changes"),
            }
        },
        "/plans/{plan_id}/tags": {
            "get": {
                "summary": "Named versions",
                "parameters": [plan_id],
                "responses": ok("TagsPage", "the tags"),
            }
        },
        "/plans/{plan_id}/verify": {
            "get": {
                "summary": "Recompute the plan's hash chain",
                "parameters": [plan_id],
                "responses": ok("VerifyOut", "the verdict"),
            }
        },
    }
    return paths, components


def routes() -> list[Route]:
    return [
        Route("/plans/{plan_id}/audit", get_audit, methods=["GET"]),
        Route("/plans/{plan_id}/diff", get_diff, methods=["GET"]),
        Route("/plans/{plan_id}/tags", get_tags, methods=["GET"]),
        Route("/plans/{plan_id}/verify", get_verify, methods=["GET"]),
    ]
