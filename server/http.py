"""HTTP routes: each decodes, delegates to the service, and encodes. Nothing else."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from domain.access import authorize
from domain.errors import Forbidden, Malformed, MapstreamError, NotFound
from domain.members import JoinPlan
from domain.model import Plan, Role, Side
from domain.plans import CreatePlan
from domain.visibility import view_for
from server.codec import (
    NewPlan,
    check_plan_id,
    decode,
    decode_command,
    int_query,
    json_response,
    read_body,
)
from server.invites import Invite, InviteStore
from server.plans import CommandAnswer, PlanService, event_out, new_id
from server.replica import serve_read
from server.store import LOG_START, LogCursor
from server.tokens import Unauthorized, issue, verify

_NEW_PLAN = msgspec.json.Decoder(NewPlan)


def services(request: Request) -> PlanService:
    svc: PlanService = request.app.state.plans
    return svc


def current_user(request: Request, *, limit: str = "read") -> str:
    """The authenticated email, or 401; then its rate limit (`read` or `command`), or 429."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "send `Authorization: Bearer <token>`; `mapstream token EMAIL` prints one"
        )
    email = verify(token.strip(), request.app.state.settings.secrets).email
    request.app.state.limits[limit].check(email)
    return email


async def org_access(request: Request, user: str, org: str, *, members: bool = True) -> bool:
    """Whether `user` may see a seller organisation's portfolio: admins, and (with `members`)
    the seller-side members of at least one of its plans (GET /analytics, webhooks); for a
    verified organisation (MAPSTREAM_ORGS) only members at one of its email domains."""
    settings = request.app.state.settings
    if user in settings.admins:
        return True
    if not members or not settings.orgs.speaks_for(user, org):
        return False
    return bool(await request.app.state.store.is_seller_member(org, user))


async def plan_for_member(
    request: Request, user: str, plans: PlanService | None = None
) -> tuple[Plan, Side]:
    """The current plan and the caller's side; a non-member is told there is no such plan.

    `plans` reads another copy (server/replica.py); by default the primary."""
    plan_id = check_plan_id(request.path_params["plan_id"])
    try:
        plan = await (plans or services(request)).current(plan_id)
    except NotFound:
        raise NotFound(f"no plan {plan_id!r} that you can see") from None
    member = plan.member(user)
    if member is None:
        raise NotFound(f"no plan {plan_id!r} that you can see")
    authorize(plan, user, "read")
    return plan, member.side


def answer_body(plan_id: str, answer: CommandAnswer, side: Side | None) -> dict[str, Any]:
    return {
        "plan_id": plan_id,
        "version": answer.version,
        "events": [event_out(e, side) for e in answer.events],
    }


async def create_plan(request: Request) -> Response:
    """POST /plans: the caller becomes owner on `side`."""
    user = current_user(request, limit="command")
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    new: NewPlan = decode(body, _NEW_PLAN)
    if new.template_id is not None:
        from server.model_routes import create_from_template

        return await create_from_template(request, new, user)
    plan_id = check_plan_id(new.plan_id) if new.plan_id else new_id()
    command = CreatePlan(
        title=new.title,
        buyer_org=new.buyer_org,
        seller_org=new.seller_org,
        side=new.side,
        kind=new.kind,
        value_statement=new.value_statement,
        compelling_event=new.compelling_event,
        name=new.name,
    )
    answer = await services(request).handle(
        plan_id, command, user, command_id=new.command_id, expected_version=0
    )
    return json_response({"plan_id": plan_id, "version": answer.version}, status_code=201)


async def post_command(request: Request) -> Response:
    """POST /plans/{plan_id}/commands: decode, delegate, encode."""
    user = current_user(request, limit="command")
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    envelope, command = decode_command(body)
    plan_id = check_plan_id(request.path_params["plan_id"])
    # membership and role are checked by the decider against the state it decides on
    answer = await services(request).handle(
        plan_id,
        command,
        user,
        command_id=envelope.command_id,
        correlation_id=envelope.correlation_id or request.headers.get("x-correlation-id"),
        expected_version=envelope.expected_version,
    )
    return json_response(answer_body(plan_id, answer, None))


def parse_time(raw: str, field: str) -> datetime:
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise Malformed(
            f"`{field}` must be an ISO-8601 time, e.g. 2026-06-03T12:00:00Z", field=field
        ) from None
    if at.tzinfo is None:
        raise Malformed(f"`{field}` needs a time zone, e.g. 2026-06-03T12:00:00Z", field=field)
    return at


async def get_plan(request: Request) -> Response:
    """GET /plans/{id}; ?version=N (or a tag name) or ?at=ISO-8601 gives the plan as it was."""
    user = current_user(request)
    return await serve_read(
        request, user, lambda svc, plan, side: _plan_page(request, svc, plan, side)
    )


async def _plan_page(request: Request, svc: PlanService, plan: Plan, side: Side) -> Response:
    version_param = request.query_params.get("version")
    at_param = request.query_params.get("at")
    if version_param and at_param:
        raise Malformed("give `version` or `at`, not both", field="version")
    state = plan
    if version_param:
        if version_param.isdigit():
            version = int(version_param)
        elif version_param in plan.tags:
            version = plan.tags[version_param]
        else:
            raise NotFound(f"no version or tag {version_param!r}", field="version")
        if version < 1:
            raise Malformed("`version` starts at 1", field="version")
        if version != plan.version:
            state = await svc.at_version(plan.id, version)
    elif at_param:
        state = await svc.at_time(plan.id, parse_time(at_param, "at"))
    return json_response(
        {"plan_id": plan.id, "version": state.version, "state": view_for(state, side)}
    )


async def get_events(request: Request) -> Response:
    """GET /plans/{id}/events?since=N&limit=M: the stream in version order."""
    user = current_user(request)
    since = int_query(request, "since", 0)
    limit = int_query(request, "limit", 1000, low=1, high=10_000)

    async def page(svc: PlanService, plan: Plan, side: Side) -> Response:
        events = await svc.store.read_stream(plan.id, after=since, limit=limit)
        return json_response(
            {
                "plan_id": plan.id,
                "version": plan.version,
                "events": [event_out(e, side) for e in events],
            }
        )

    return await serve_read(request, user, page)


class NewInvite(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    side: Side
    role: Role
    email: str | None = None
    expires_in: int | None = None


_NEW_INVITE = msgspec.json.Decoder(NewInvite)


class Acceptance(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    email: str


_ACCEPTANCE = msgspec.json.Decoder(Acceptance)


def invite_out(invite: Invite) -> dict[str, Any]:
    return {**msgspec.to_builtins(invite), "status": invite.status}


async def create_invite(request: Request) -> Response:
    """POST /plans/{id}/invites: owners invite by one-time code (buyers need no account)."""
    user = current_user(request, limit="command")
    plan, _side = await plan_for_member(request, user)
    authorize(plan, user, "manage")
    settings = request.app.state.settings
    new: NewInvite = decode(await read_body(request, settings.max_body_bytes), _NEW_INVITE)
    ttl = new.expires_in if new.expires_in is not None else settings.invite_ttl_seconds
    if not 60 <= ttl <= 90 * 24 * 3600:
        raise Malformed("`expires_in` must be between 60 seconds and 90 days", field="expires_in")
    email = new.email.strip().lower() if new.email else None
    if email is not None and "@" not in email:
        raise Malformed("`email` must be an email address", field="email")
    code, invite = await request.app.state.invites.create(
        plan.id, new.side, new.role, email, user, timedelta(seconds=ttl)
    )
    return json_response(
        {"code": code, "accept": f"/invites/{code}/accept", **invite_out(invite)}, status_code=201
    )


async def list_invites(request: Request) -> Response:
    user = current_user(request)
    plan, _side = await plan_for_member(request, user)
    authorize(plan, user, "manage")
    invites = await request.app.state.invites.list(plan.id)
    return json_response({"plan_id": plan.id, "invites": [invite_out(i) for i in invites]})


async def revoke_invite(request: Request) -> Response:
    user = current_user(request, limit="command")
    plan, _side = await plan_for_member(request, user)
    authorize(plan, user, "manage")
    invite = await request.app.state.invites.revoke(plan.id, request.path_params["invite_id"])
    return json_response(invite_out(invite))


async def accept_invite(request: Request) -> Response:
    """POST /invites/{code}/accept {name, email}: the code is the credential; answers a token."""
    settings = request.app.state.settings
    body: Acceptance = decode(await read_body(request, settings.max_body_bytes), _ACCEPTANCE)
    email = body.email.strip().lower()
    if "@" not in email or len(email) > 254 or not email.isprintable() or " " in email:
        raise Malformed("`email` must be an email address", field="email")
    request.app.state.limits["command"].check(f"invite:{email}")
    store: InviteStore = request.app.state.invites
    invite = await store.claim(request.path_params["code"], email)
    command = JoinPlan(side=invite.side, role=invite.role, invite=invite.invite_id, name=body.name)
    try:
        await services(request).handle(
            invite.plan_id, command, email, command_id=f"invite:{invite.invite_id}"
        )
    except BaseException:
        await store.release(invite.plan_id, invite.invite_id)
        raise
    token = issue(email, settings.signing_secret, settings.token_ttl_seconds)
    return json_response(
        {"token": token, "plan_id": invite.plan_id, "side": invite.side, "role": invite.role}
    )


async def read_log(request: Request) -> Response:
    """GET /log?after=CURSOR&limit=M: the gap-free global log, for integrators (admins only)."""
    user = current_user(request)
    if user not in request.app.state.settings.admins:
        raise Forbidden("the global log is for admins (MAPSTREAM_ADMINS)")
    after = parse_cursor(request.query_params.get("after", ""))
    limit = int_query(request, "limit", 1000, low=1, high=request.app.state.settings.log_page_max)
    events = await services(request).store.read_log(after, limit=limit or 1000)
    cursor = format_cursor(events[-1].cursor) if events else format_cursor(after)
    return json_response({"events": [event_out(e) for e in events], "next": cursor})


def parse_cursor(raw: str) -> LogCursor:
    if not raw:
        return LOG_START
    xid, _, position = raw.partition(".")
    if not (xid.isdigit() and position.isdigit()):
        raise Malformed(
            "`after` is a cursor from a previous page's `next`, e.g. 1234.56", field="after"
        )
    return (int(xid), int(position))


def format_cursor(cursor: LogCursor) -> str:
    return f"{cursor[0]}.{cursor[1]}"


async def openapi(request: Request) -> Response:
    from server import openapi as doc

    if not hasattr(request.app.state, "openapi"):
        request.app.state.openapi = doc.build()
    return json_response(request.app.state.openapi)


async def docs(request: Request) -> Response:
    from server.openapi import DOCS_HTML

    return HTMLResponse(DOCS_HTML)


async def healthz(request: Request) -> Response:
    """Liveness: the process answers. Readiness (database, projections) is GET /readyz."""
    return json_response({"status": "ok"})


def routes() -> list[BaseRoute]:
    from server import (
        audit_routes,
        export_routes,
        importer,
        model_routes,
        observability,
        web_client,
        webhooks,
    )

    return [
        *audit_routes.routes(),
        *model_routes.routes(),
        *export_routes.routes(),
        *webhooks.routes(),
        *importer.routes(),
        *observability.routes(),
        *web_client.routes(),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/plans", create_plan, methods=["POST"]),
        Route("/plans/{plan_id}", get_plan, methods=["GET"]),
        Route("/plans/{plan_id}/commands", post_command, methods=["POST"]),
        Route("/plans/{plan_id}/events", get_events, methods=["GET"]),
        Route("/plans/{plan_id}/invites", create_invite, methods=["POST"]),
        Route("/plans/{plan_id}/invites", list_invites, methods=["GET"]),
        Route("/plans/{plan_id}/invites/{invite_id}/revoke", revoke_invite, methods=["POST"]),
        Route("/invites/{code}/accept", accept_invite, methods=["POST"]),
        Route("/log", read_log, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]


__all__ = ["MapstreamError", "routes"]
