"""The plan itself: creation, headline fields, compelling event, lifecycle."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

import msgspec

from domain.base import (
    UNSET,
    Command,
    Context,
    Event,
    Recorded,
    Unset,
    changes_of,
    encoded_changes,
    previous_of,
)
from domain.errors import DomainError, Malformed
from domain.members import MemberAdded
from domain.model import CompellingEvent, ParentLink, Plan, PlanKind, Side
from domain.rules import require_open, require_text

# -- commands ---------------------------------------------------------------------------


class CreatePlan(Command, frozen=True, tag="create_plan"):
    """Sent as POST /plans (a template's commands follow it), not as a plan command."""

    server_only = True
    title: str
    buyer_org: str
    seller_org: str
    side: Side
    kind: PlanKind = "sales"
    value_statement: str = ""
    compelling_event: CompellingEvent | None = None
    name: str = ""


class UpdatePlan(Command, frozen=True, tag="update_plan"):
    title: str | Unset = UNSET
    buyer_org: str | Unset = UNSET
    seller_org: str | Unset = UNSET
    value_statement: str | Unset = UNSET


class SetCompellingEvent(Command, frozen=True, tag="set_compelling_event"):
    name: str
    date: date


class ActivatePlan(Command, frozen=True, tag="activate_plan"):
    permission = "manage"


class ClosePlan(Command, frozen=True, tag="close_plan"):
    permission = "manage"
    outcome: Literal["won", "lost"]
    reason: str


# -- events -----------------------------------------------------------------------------


class PlanCreated(Event, frozen=True, tag="PlanCreated"):
    title: str
    buyer_org: str
    seller_org: str
    kind: PlanKind = "sales"
    value_statement: str = ""
    compelling_event: CompellingEvent | None = None


class PlanForked(Event, frozen=True, tag="PlanForked"):
    """First event of a forked plan: a verifiable link to the parent's event at a version."""

    parent_plan_id: str
    parent_version: int
    parent_hash: str
    title: str
    buyer_org: str
    seller_org: str
    kind: PlanKind = "onboarding"
    value_statement: str = ""
    compelling_event: CompellingEvent | None = None


class PlanUpdated(Event, frozen=True, tag="PlanUpdated"):
    changes: dict[str, Any]
    previous: dict[str, Any] = {}


class CompellingEventSet(Event, frozen=True, tag="CompellingEventSet"):
    name: str
    date: date
    previous: CompellingEvent | None = None


class PlanActivated(Event, frozen=True, tag="PlanActivated"):
    pass


class PlanClosed(Event, frozen=True, tag="PlanClosed"):
    outcome: Literal["won", "lost"]
    reason: str


# -- deciders ---------------------------------------------------------------------------


def create_plan(plan: Plan, cmd: CreatePlan, ctx: Context) -> list[Event]:
    if plan.exists:
        raise DomainError("plan_exists", "a plan with this id already exists")
    return [
        PlanCreated(
            title=require_text(cmd.title, "title"),
            buyer_org=require_text(cmd.buyer_org, "buyer_org"),
            seller_org=require_text(cmd.seller_org, "seller_org"),
            kind=cmd.kind,
            value_statement=cmd.value_statement.strip(),
            compelling_event=cmd.compelling_event,
        ),
        MemberAdded(email=ctx.actor, side=cmd.side, role="owner", name=cmd.name),
    ]


def update_plan(plan: Plan, cmd: UpdatePlan, ctx: Context) -> list[Event]:
    require_open(plan)
    # trimmed as create_plan trims: " Title " is no change from "Title"
    trimmed: dict[str, str] = {}
    for field in ("title", "buyer_org", "seller_org"):
        value = getattr(cmd, field)
        if value is not UNSET:
            trimmed[field] = require_text(value, field)
    if cmd.value_statement is not UNSET:
        trimmed["value_statement"] = cmd.value_statement.strip()
    cmd = msgspec.structs.replace(cmd, **trimmed)
    changes = changes_of(cmd, plan, ("title", "buyer_org", "seller_org", "value_statement"))
    if not changes:
        return []
    return [PlanUpdated(changes=encoded_changes(changes), previous=previous_of(plan, changes))]


def set_compelling_event(plan: Plan, cmd: SetCompellingEvent, ctx: Context) -> list[Event]:
    require_open(plan)
    name = require_text(cmd.name, "name")
    new = CompellingEvent(name=name, date=cmd.date)
    if plan.compelling_event == new:
        return []
    return [CompellingEventSet(name=name, date=cmd.date, previous=plan.compelling_event)]


def activate_plan(plan: Plan, cmd: ActivatePlan, ctx: Context) -> list[Event]:
    require_open(plan)
    if plan.status == "active":
        return []
    return [PlanActivated()]


def close_plan(plan: Plan, cmd: ClosePlan, ctx: Context) -> list[Event]:
    if plan.is_closed:
        raise DomainError("already_closed", f"the plan is already {plan.status.replace('_', ' ')}")
    if not cmd.reason.strip():
        raise Malformed("`reason` must say why the plan closed", field="reason")
    return [PlanClosed(outcome=cmd.outcome, reason=cmd.reason.strip())]


# -- evolvers ---------------------------------------------------------------------------


def plan_created(plan: Plan, e: PlanCreated | PlanForked, rec: Recorded, plan_id: str) -> Plan:
    parent = None
    if isinstance(e, PlanForked):
        parent = ParentLink(plan_id=e.parent_plan_id, version=e.parent_version, hash=e.parent_hash)
    return msgspec.structs.replace(
        plan,
        id=plan_id,
        title=e.title,
        buyer_org=e.buyer_org,
        seller_org=e.seller_org,
        kind=e.kind,
        value_statement=e.value_statement,
        compelling_event=e.compelling_event,
        created_by=rec.actor,
        created_at=rec.at,
        parent=parent,
    )


def plan_updated(plan: Plan, e: PlanUpdated) -> Plan:
    fields = {"title", "buyer_org", "seller_org", "value_statement"}
    return msgspec.structs.replace(plan, **{k: v for k, v in e.changes.items() if k in fields})


def compelling_event_set(plan: Plan, e: CompellingEventSet) -> Plan:
    return msgspec.structs.replace(plan, compelling_event=CompellingEvent(e.name, e.date))


def plan_closed(plan: Plan, e: PlanClosed, at: datetime) -> Plan:
    status: Literal["closed_won", "closed_lost"] = (
        "closed_won" if e.outcome == "won" else "closed_lost"
    )
    return msgspec.structs.replace(plan, status=status, close_reason=e.reason, closed_at=at)
