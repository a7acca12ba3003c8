"""Forks: a closed-won plan goes on as a new plan (normally an onboarding kickoff).

The child's first event, `PlanForked`, names the parent plan, the parent's version that
records the fork and that event's stored hash, so anyone can check the link against the
parent's hash chain. The parent records `ChildPlanForked`, so lineage reads both ways.

Both commands are issued by the server (POST /plans/{id}/fork), never sent by clients: the
server reads the parent, checks it through `RecordFork`, and only then creates the child
with `ForkPlan`, which carries the people, objectives, open commitments and open risks as
ordinary commands (`Seed`s) decided in the same append.
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from domain import action_items as ai
from domain import dependencies as dep
from domain import members as mem
from domain import milestones as ms
from domain import objectives as ob
from domain import risks as rk
from domain import stakeholders as sh
from domain.base import Command, Context, Event
from domain.errors import DomainError, Malformed
from domain.model import ChildLink, CompellingEvent, Plan, PlanKind, Side
from domain.plans import PlanForked
from domain.rules import require_text
from domain.visibility import view_for

# What a new plan can be built from: a fork's carried items, a template's skeleton.
Seed = (
    mem.AddMember
    | sh.AddStakeholder
    | ob.AddObjective
    | ms.AddMilestone
    | ms.UpdateMilestone
    | ai.AddActionItem
    | ai.SetActionItemStatus
    | dep.AddDependency
    | rk.AddRisk
)

_HASH = re.compile(r"[0-9a-f]{64}")


class ForkPlan(Command, frozen=True, tag="fork_plan"):
    """Create this plan as a fork of `parent_plan_id` at `parent_version` (server only)."""

    server_only = True
    parent_plan_id: str
    parent_version: int
    parent_hash: str
    title: str
    buyer_org: str
    seller_org: str
    side: Side
    kind: PlanKind = "onboarding"
    value_statement: str = ""
    compelling_event: CompellingEvent | None = None
    name: str = ""
    seeds: list[Seed] = []


class RecordFork(Command, frozen=True, tag="record_fork"):
    """Record on the parent that `child_plan_id` is forked from it (server only, owners)."""

    server_only = True
    permission = "manage"
    child_plan_id: str
    title: str
    kind: PlanKind = "onboarding"


class ChildPlanForked(Event, frozen=True, tag="ChildPlanForked"):
    child_plan_id: str
    title: str
    kind: PlanKind = "onboarding"


def fork_plan(plan: Plan, cmd: ForkPlan, ctx: Context) -> list[Event]:
    """The child's first two events; the decider adds what its seeds cause."""
    if plan.exists:
        raise DomainError("plan_exists", "a plan with this id already exists")
    if not cmd.parent_plan_id or cmd.parent_plan_id == plan.id:
        raise Malformed("a plan is forked from another plan", field="parent_plan_id")
    if cmd.parent_version < 1:
        raise Malformed("`parent_version` starts at 1", field="parent_version")
    if not _HASH.fullmatch(cmd.parent_hash):
        raise Malformed("`parent_hash` is a SHA-256 in hex", field="parent_hash")
    return [
        PlanForked(
            parent_plan_id=cmd.parent_plan_id,
            parent_version=cmd.parent_version,
            parent_hash=cmd.parent_hash,
            title=require_text(cmd.title, "title"),
            buyer_org=require_text(cmd.buyer_org, "buyer_org"),
            seller_org=require_text(cmd.seller_org, "seller_org"),
            kind=cmd.kind,
            value_statement=cmd.value_statement.strip(),
            compelling_event=cmd.compelling_event,
        ),
        mem.MemberAdded(email=ctx.actor, side=cmd.side, role="owner", name=cmd.name),
    ]


def record_fork(plan: Plan, cmd: RecordFork, ctx: Context) -> list[Event]:
    """Only a won plan is forked: its commitments are what onboarding delivers."""
    if plan.status != "closed_won":
        raise DomainError(
            "fork_needs_closed_won",
            f"the plan is {plan.status.replace('_', ' ')}: only a closed-won plan can be forked",
        )
    if cmd.child_plan_id == plan.id or any(c.plan_id == cmd.child_plan_id for c in plan.children):
        raise DomainError("duplicate_id", f"{cmd.child_plan_id!r} is already a fork of this plan")
    return [
        ChildPlanForked(
            child_plan_id=cmd.child_plan_id, title=require_text(cmd.title, "title"), kind=cmd.kind
        )
    ]


def child_plan_forked(
    plan: Plan, e: ChildPlanForked, version: int, actor: str, at: datetime
) -> Plan:
    child = ChildLink(e.child_plan_id, version, e.title, e.kind, actor, at)
    return msgspec.structs.replace(plan, children=(*plan.children, child))


# -- what a fork carries --------------------------------------------------------------------


def carried(parent: Plan, side: Side, forker: str) -> list[Seed]:
    """What a fork takes from `parent`, as seen by `side` (the other side's internal items
    stay behind): members (but the forker, who owns the child), current stakeholders,
    objectives (the onboarding's success criteria), open milestones and action items with
    the dependencies between them, and open risks. Not completed work, comments, status
    updates, endorsements or tags: those stay in the parent's history.

    A done milestone that still has open action items comes along as the home of those
    items (not started: work remains). People who are no longer stakeholders are dropped
    from the roles they held."""
    plan = view_for(parent, side)

    def current(who: str | None) -> str | None:
        s = plan.stakeholders.get(who) if who is not None else None
        return who if s is not None and s.active else None

    seeds: list[Seed] = [
        mem.AddMember(email=m.email, side=m.side, role=m.role, name=m.name)
        for m in plan.members.values()
        if m.active and m.email != forker
    ]
    seeds += [
        sh.AddStakeholder(
            id=s.id,
            name=s.name,
            side=s.side,
            title=s.title,
            persona=s.persona,
            influence=s.influence,
            email=s.email,
            phone=s.phone,
            calendar_link=s.calendar_link,
        )
        for s in plan.stakeholders.values()
        if s.active
    ]
    seeds += [
        ob.AddObjective(
            id=o.id,
            title=o.title,
            metric=o.metric,
            baseline=o.baseline,
            target=o.target,
            by=o.by,
            projected_outcome=o.projected_outcome,
        )
        for o in plan.objectives.values()
    ]
    open_items = [a for a in plan.action_items.values() if a.status != "done"]
    homes = {a.milestone_id for a in open_items}
    milestones = [
        plan.milestones[mid]
        for mid in plan.milestone_order
        if plan.milestones[mid].status != "done" or mid in homes
    ]
    for m in milestones:
        seeds.append(
            ms.AddMilestone(
                id=m.id,
                title=m.title,
                outcome=m.outcome,
                owner=current(m.owner),
                backup=current(m.backup),
                approver=current(m.approver),
                due=m.due,
                deadline=m.deadline,
            )
        )
        if m.status in ("in_progress", "blocked"):
            seeds.append(ms.UpdateMilestone(id=m.id, status=m.status))
    for a in open_items:
        seeds.append(
            ai.AddActionItem(
                id=a.id,
                milestone_id=a.milestone_id,
                title=a.title,
                owner=current(a.owner),
                due=a.due,
                links=list(a.links),
                notes=a.notes,
                visibility=a.visibility,
            )
        )
        if a.status != "not_started":
            seeds.append(ai.SetActionItemStatus(id=a.id, status=a.status))
    kept = {m.id for m in milestones} | {a.id for a in open_items}
    seeds += [
        dep.AddDependency(
            id=d.id,
            from_id=d.from_id,
            to_id=d.to_id,
            critical=d.critical,
            contingency=d.contingency,
            escalation_contact=current(d.escalation_contact),
        )
        for d in plan.dependencies.values()
        if d.from_id in kept and d.to_id in kept
    ]
    seeds += [
        rk.AddRisk(
            id=r.id,
            title=r.title,
            likelihood=r.likelihood,
            impact=r.impact,
            mitigation=r.mitigation,
            owner=current(r.owner),
        )
        for r in plan.risks.values()
        if r.status == "open"
    ]
    return seeds
