"""Plan-model routes: health, templates, forks, lineage and portfolio analytics. Registered
by server.http.routes().

Each route decodes, asks the pure functions in `domain/` and `projections/`, and answers.
Portfolio analytics reads the rows of its asynchronous projection (projections/analytics.py),
never the events.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain import chain
from domain.access import authorize
from domain.base import Context
from domain.decider import decide, decide_all, recorded_onto
from domain.errors import DomainError, Forbidden, Malformed
from domain.forks import ChildPlanForked, ForkPlan, RecordFork, Seed, carried
from domain.model import ChildLink, CompellingEvent, ParentLink, Plan, PlanKind
from domain.plans import CreatePlan, PlanForked
from domain.rules import MAX_TITLE
from domain.templates import Skeleton, Template, check, from_plan, instantiate, try_out
from domain.visibility import view_for
from projections.analytics import Analytics, portfolio
from projections.health import Health, health
from server.apidoc import PLAN_ID, SELLER_ORG, Doc
from server.codec import NewPlan, check_org, check_plan_id, decode, json_response, read_body
from server.http import current_user, org_access, plan_for_member, services
from server.plans import new_id
from server.store import Store
from server.template_store import TemplateStore
from server.tools import link_of

_SKELETON = msgspec.json.Decoder(Skeleton)


class SaveAsTemplate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    description: str = ""


class ForkIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """POST /plans/{id}/fork. The child's compelling event defaults to the parent's; a
    `command_id` makes the fork safe to retry (the same child, created once)."""

    title: str | None = None
    kind: PlanKind = "onboarding"
    template_id: str | None = None
    compelling_event: CompellingEvent | None = None
    plan_id: str | None = None
    command_id: str | None = None


_SAVE_AS = msgspec.json.Decoder(SaveAsTemplate)
_FORK_IN = msgspec.json.Decoder(ForkIn)


def _templates(request: Request) -> TemplateStore:
    store: Store = request.app.state.store
    return TemplateStore(store.pool)


async def _body(request: Request) -> bytes:
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    return body if body.strip() else b"{}"


def _command_id(raw: str | None) -> str | None:
    """A client's idempotency key, as POST /plans/{id}/commands accepts it."""
    if raw is not None and (not raw or len(raw) > 200 or not raw.isprintable()):
        raise Malformed("`command_id` must be 1 to 200 printable characters", field="command_id")
    return raw


def _context(request: Request, user: str, plan: Plan) -> Context:
    return Context(actor=user, now=services(request).clock(), member=plan.member(user))


# -- health ----------------------------------------------------------------------------------


class HealthOut(Health, frozen=True, kw_only=True):
    plan_id: str
    version: int


async def get_health(request: Request) -> Response:
    """GET /plans/{id}/health: on track, at risk or stalled, and why (your side's view)."""
    user = current_user(request)
    plan, side = await plan_for_member(request, user)
    report = health(view_for(plan, side), services(request).clock())
    return json_response(
        HealthOut(plan_id=plan.id, version=plan.version, **msgspec.structs.asdict(report))
    )


# -- portfolio analytics ---------------------------------------------------------------------


async def get_analytics(request: Request) -> Response:
    """GET /analytics?seller_org=NAME: one seller organisation's figures, for admins and for
    seller-side members of at least one of its plans (others 403, known org or not)."""
    user = current_user(request)
    org = check_org(request.query_params.get("seller_org", ""))
    store: Store = request.app.state.store
    if not await org_access(request, user, org):
        raise Forbidden(
            "analytics are for admins and the seller-side members of the organisation's plans"
        )
    runner = getattr(request.app.state, "projections", {}).get("analytics")
    if runner is not None:
        runner.wake()  # the figures follow the log within moments; no waiting here
    rows = await store.read_analytics(org, request.app.state.settings.orgs.domains.get(org))
    report = await asyncio.to_thread(portfolio, org, rows, services(request).clock())
    return json_response(report)


# -- templates -------------------------------------------------------------------------------


async def list_templates(request: Request) -> Response:
    """GET /templates: the built-in templates and the ones you saved."""
    user = current_user(request)
    return json_response({"templates": await _templates(request).list(user)})


async def _save(request: Request, skeleton: Skeleton, user: str) -> Response:
    check(skeleton)
    try_out(Template(id="new", **msgspec.structs.asdict(skeleton)))
    template = await _templates(request).save(skeleton, user)
    return json_response({"template_id": template.id, "template": template}, status_code=201)


async def create_template(request: Request) -> Response:
    """POST /templates: a skeleton, checked by building it into a scratch plan first."""
    user = current_user(request, limit="command")
    skeleton: Skeleton = decode(await _body(request), _SKELETON)
    return await _save(request, skeleton, user)


async def save_as_template(request: Request) -> Response:
    """POST /plans/{id}/save-as-template {name, description?}: editors save the plan's shape."""
    user = current_user(request, limit="command")
    plan, side = await plan_for_member(request, user)
    authorize(plan, user, "edit")
    body: SaveAsTemplate = decode(await _body(request), _SAVE_AS)
    return await _save(request, from_plan(plan, side, body.name.strip(), body.description), user)


async def _apply(
    request: Request,
    plan_id: str,
    seeds: list[Seed],
    user: str,
    command_id: str | None,
) -> int:
    """Append `seeds` one by one; with a `command_id`, each has its own derived id, so a
    retried request appends each once."""
    version = 0
    for n, seed in enumerate(seeds):
        answer = await services(request).handle(
            plan_id, seed, user, command_id=f"{command_id}:{n}" if command_id else None
        )
        version = answer.version
    return version


async def create_from_template(request: Request, new: NewPlan, user: str) -> Response:
    """POST /plans with `template_id`: create the plan, then the template's items, dated in
    business days back from the compelling event. The whole build is tried in memory first,
    so a template that cannot apply changes nothing."""
    assert new.template_id is not None
    template = await _templates(request).get(new.template_id, user)
    new = msgspec.structs.replace(new, command_id=_command_id(new.command_id))
    if new.compelling_event is None:
        raise Malformed(
            "a template counts its dates back from `compelling_event`: give {name, date}",
            field="compelling_event",
        )
    plan_id = check_plan_id(new.plan_id) if new.plan_id else _derived_id(user, new.command_id)
    create = CreatePlan(
        title=new.title,
        buyer_org=new.buyer_org,
        seller_org=new.seller_org,
        side=new.side,
        kind=template.kind if new.kind == "sales" else new.kind,
        value_statement=new.value_statement,
        compelling_event=new.compelling_event,
        name=new.name,
    )
    ctx = Context(actor=user, now=services(request).clock())
    created = recorded_onto(Plan(id=plan_id), decide(Plan(id=plan_id), create, ctx), ctx)
    seeds = instantiate(template, created, new.compelling_event.date)
    decide_all(created, seeds, ctx)
    answer = await services(request).handle(
        plan_id, create, user, command_id=new.command_id, expected_version=0
    )
    version = await _apply(request, plan_id, seeds, user, new.command_id)
    return json_response(
        {"plan_id": plan_id, "version": max(version, answer.version), "template_id": template.id},
        status_code=201,
    )


# -- forks -----------------------------------------------------------------------------------


def _derived_id(*parts: str | None) -> str:
    """A new plan's id: the same for a retried request (same user and command_id)."""
    if parts[-1] is None:
        return new_id()
    return hashlib.sha256("|".join(p or "" for p in parts).encode()).hexdigest()[:12]


def _default_title(parent: Plan, kind: PlanKind) -> str:
    prefix = "Onboarding: " if kind == "onboarding" else "Continued: "
    return (prefix + parent.title)[:MAX_TITLE]


async def fork_plan(request: Request) -> Response:
    """POST /plans/{id}/fork: owners go on from a closed-won plan in a new plan.

    The parent records the fork first (`RecordFork`: only a closed-won plan, only owners);
    the child is then created in one append whose first event names that parent event and
    its hash, and which carries the people, objectives, open commitments and open risks.
    Everything is decided in memory before the first append. Asking again for the same
    child (same `plan_id` or `command_id`) finishes a fork that was cut short, or answers
    the finished one."""
    user = current_user(request, limit="command")
    parent, side = await plan_for_member(request, user)
    authorize(parent, user, "manage")  # also when the fork is only being finished
    body: ForkIn = decode(await _body(request), _FORK_IN)
    body = msgspec.structs.replace(body, command_id=_command_id(body.command_id))
    svc = services(request)
    child_id = (
        check_plan_id(body.plan_id)
        if body.plan_id
        else _derived_id(parent.id, user, body.command_id)
    )
    title = body.title if body.title is not None else _default_title(parent, body.kind)
    compelling = body.compelling_event or parent.compelling_event
    template: Template | None = None
    if body.template_id is not None:
        template = await _templates(request).get(body.template_id, user)
        if compelling is None:
            raise Malformed(
                "the template counts its dates back from a compelling event: give one",
                field="compelling_event",
            )
    recorded = next((c for c in parent.children if c.plan_id == child_id), None)
    exists = await svc.store.load_plan(child_id) is not None
    if exists and recorded is None:
        raise DomainError("plan_exists", f"a plan with id {child_id!r} already exists")
    record = RecordFork(child_plan_id=child_id, title=title, kind=body.kind)
    member = parent.member(user)
    fork = ForkPlan(
        parent_plan_id=parent.id,
        parent_version=parent.version + 1,
        parent_hash="0" * 64,  # the real link is known once the parent has recorded the fork
        title=title,
        buyer_org=parent.buyer_org,
        seller_org=parent.seller_org,
        side=side,
        kind=body.kind,
        value_statement=parent.value_statement,
        compelling_event=compelling,
        name=member.name if member is not None else "",
        seeds=carried(parent, side, user),
    )
    # decide it all in memory first: the parent's rules, then the child with its template
    if recorded is None:
        decide(parent, record, _context(request, user, parent))
    ctx = Context(actor=user, now=svc.clock())
    empty = Plan(id=child_id)
    if template is not None and compelling is not None:
        built = recorded_onto(empty, decide(empty, fork, ctx), ctx)
        extra = instantiate(template, built, compelling.date)
        fork = msgspec.structs.replace(fork, seeds=[*fork.seeds, *extra])
    decide(empty, fork, ctx)

    if recorded is None:
        answer = await svc.handle(parent.id, record, user, command_id=body.command_id)
        link = ParentLink(parent.id, answer.events[-1].version, answer.events[-1].hash)
    else:
        stored = await svc.store.read_stream(
            parent.id, after=recorded.version - 1, upto=recorded.version
        )
        link = ParentLink(parent.id, recorded.version, stored[0].hash)
    if exists:
        version = (await svc.current(child_id)).version
    else:
        fork = msgspec.structs.replace(fork, parent_version=link.version, parent_hash=link.hash)
        child_cid = f"fork:{body.command_id}" if body.command_id else None
        answer = await svc.handle(child_id, fork, user, command_id=child_cid, expected_version=0)
        version = answer.version
    return json_response({"plan_id": child_id, "version": version, "parent": link}, status_code=201)


# -- lineage ---------------------------------------------------------------------------------


class ParentOut(msgspec.Struct, frozen=True):
    plan_id: str
    version: int
    hash: str
    hash_ok: bool  # the parent's chain verifies up to `version` and ends in `hash`
    records_this_fork: bool  # the parent's event at `version` records this plan as its fork


class ChildOut(msgspec.Struct, frozen=True):
    plan_id: str
    version: int
    title: str
    kind: PlanKind
    forked_by: str
    forked_at: str
    link_ok: bool  # the child's first event names this plan, this version and its hash


class LineageOut(msgspec.Struct, frozen=True):
    plan_id: str
    parent: ParentOut | None
    children: list[ChildOut]
    parent_hash_ok: bool | None  # None: the plan is not a fork


async def _check_parent(store: Store, plan_id: str, link: ParentLink) -> ParentOut:
    """Recompute the parent's hash chain up to the linked version (off the event loop)."""
    events = await store.read_stream(link.plan_id, upto=link.version)
    verdict = await asyncio.to_thread(chain.verify, [link_of(e) for e in events])
    hash_ok = verdict.ok and verdict.version == link.version and verdict.head_hash == link.hash
    recorded = False
    if events and events[-1].version == link.version and events[-1].type == "ChildPlanForked":
        event = msgspec.json.decode(events[-1].data, type=ChildPlanForked)
        recorded = event.child_plan_id == plan_id
    return ParentOut(link.plan_id, link.version, link.hash, hash_ok, recorded)


async def _check_child(store: Store, plan_id: str, child: ChildLink) -> ChildOut:
    ours = await store.read_stream(plan_id, after=child.version - 1, upto=child.version)
    first = await store.read_stream(child.plan_id, upto=1)
    ok = False
    if ours and first and first[0].type == "PlanForked":
        forked = msgspec.json.decode(first[0].data, type=PlanForked)
        ok = (forked.parent_plan_id, forked.parent_version, forked.parent_hash) == (
            plan_id,
            child.version,
            ours[0].hash,
        )
    return ChildOut(
        child.plan_id, child.version, child.title, child.kind, child.by, child.at.isoformat(), ok
    )


async def get_lineage(request: Request) -> Response:
    """GET /plans/{id}/lineage: the parent (with its hash checked) and the children."""
    user = current_user(request)
    plan, _side = await plan_for_member(request, user)
    store = services(request).store
    parent = None if plan.parent is None else await _check_parent(store, plan.id, plan.parent)
    children = [await _check_child(store, plan.id, c) for c in plan.children]
    return json_response(
        LineageOut(
            plan.id,
            parent,
            children,
            None if parent is None else parent.hash_ok and parent.records_this_fork,
        )
    )


# -- wiring ----------------------------------------------------------------------------------


def openapi(ref_template: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) of these routes, for the OpenAPI document."""
    _, components = msgspec.json.schema_components(
        [HealthOut, Skeleton, Template, SaveAsTemplate, ForkIn, LineageOut, Analytics],
        ref_template=ref_template,
    )

    doc = Doc(ref_template)
    body = doc.body

    def errors(*extra: str) -> dict[str, Any]:
        return doc.errors("404 not_found", *extra)

    plan_id = PLAN_ID
    paths = {
        "/analytics": {
            "get": {
                "summary": "Portfolio analytics of a seller organisation (admins, its sellers)",
                "parameters": [SELLER_ORG],
                "responses": {
                    "200": {"description": "the figures", "content": body("Analytics")},
                    **errors("403 forbidden"),
                },
            }
        },
        "/plans/{plan_id}/health": {
            "get": {
                "summary": "Plan health: on_track, at_risk or stalled, findings, critical path, slack",
                "parameters": [plan_id],
                "responses": {
                    "200": {"description": "the health report", "content": body("HealthOut")},
                    **errors(),
                },
            }
        },
        "/templates": {
            "get": {
                "summary": "Built-in templates and the ones you saved",
                "responses": {"200": {"description": "templates"}, **errors()},
            },
            "post": {
                "summary": "Save a plan skeleton as a template",
                "requestBody": {"required": True, "content": body("Skeleton")},
                "responses": {
                    "201": {"description": "saved"},
                    **errors("413 payload_too_large", "422 rule_violation"),
                },
            },
        },
        "/plans/{plan_id}/save-as-template": {
            "post": {
                "summary": "Save this plan's shape as a template (editors)",
                "parameters": [plan_id],
                "requestBody": {"required": True, "content": body("SaveAsTemplate")},
                "responses": {
                    "201": {"description": "saved"},
                    **errors("403 forbidden", "413 payload_too_large", "422 rule_violation"),
                },
            }
        },
        "/plans/{plan_id}/fork": {
            "post": {
                "summary": "Fork a closed-won plan into a new plan (owners)",
                "parameters": [plan_id],
                "requestBody": {"required": False, "content": body("ForkIn")},
                "responses": {
                    "201": {"description": "the new plan"},
                    **errors(
                        "403 forbidden",
                        "409 version_conflict",
                        "413 payload_too_large",
                        "422 rule_violation (fork_needs_closed_won)",
                    ),
                },
            }
        },
        "/plans/{plan_id}/lineage": {
            "get": {
                "summary": "The plan's parent (hash checked) and children",
                "parameters": [plan_id],
                "responses": {
                    "200": {"description": "the lineage", "content": body("LineageOut")},
                    **errors(),
                },
            }
        },
    }
    return paths, components


def routes() -> list[Route]:
    return [
        Route("/analytics", get_analytics, methods=["GET"]),
        Route("/plans/{plan_id}/health", get_health, methods=["GET"]),
        Route("/templates", list_templates, methods=["GET"]),
        Route("/templates", create_template, methods=["POST"]),
        Route("/plans/{plan_id}/save-as-template", save_as_template, methods=["POST"]),
        Route("/plans/{plan_id}/fork", fork_plan, methods=["POST"]),
        Route("/plans/{plan_id}/lineage", get_lineage, methods=["GET"]),
    ]


__all__ = ["create_from_template", "openapi", "routes"]
