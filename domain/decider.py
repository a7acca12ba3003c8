"""The plan decider: `decide(plan, command, ctx) -> events` and `evolve(plan, recorded) -> plan`.

Both are pure: time, actor and new ids come in through the command and its context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, assert_never

import msgspec

from domain import action_items as ai
from domain import cadence as cad
from domain import comments as co
from domain import dependencies as dep
from domain import endorsements as en
from domain import forks as fk
from domain import members as mem
from domain import milestones as ms
from domain import objectives as ob
from domain import plans as pl
from domain import risks as rk
from domain import stakeholders as sh
from domain import status_updates as su
from domain import versions as ver
from domain.access import authorize
from domain.base import Context, Event, Recorded
from domain.errors import DomainError, NotFound
from domain.model import Plan
from domain.upcast import upcast

PlanCommand = (
    pl.CreatePlan
    | pl.UpdatePlan
    | pl.SetCompellingEvent
    | pl.ActivatePlan
    | pl.ClosePlan
    | fk.ForkPlan
    | fk.RecordFork
    | mem.AddMember
    | mem.JoinPlan
    | mem.ChangeMemberRole
    | mem.RevokeMember
    | sh.AddStakeholder
    | sh.UpdateStakeholder
    | sh.RemoveStakeholder
    | ms.AddMilestone
    | ms.UpdateMilestone
    | ms.RescheduleMilestone
    | ms.CompleteMilestone
    | ms.ReorderMilestones
    | ai.AddActionItem
    | ai.UpdateActionItem
    | ai.SetActionItemStatus
    | ai.RescheduleActionItem
    | dep.AddDependency
    | dep.RemoveDependency
    | ob.AddObjective
    | ob.UpdateObjective
    | rk.AddRisk
    | rk.UpdateRisk
    | cad.SetCadence
    | su.PostStatusUpdate
    | en.EndorsePlan
    | co.AddComment
    | ver.TagVersion
)

PlanEvent = (
    pl.PlanCreated
    | pl.PlanForked
    | pl.PlanUpdated
    | pl.CompellingEventSet
    | pl.PlanActivated
    | pl.PlanClosed
    | fk.ChildPlanForked
    | mem.MemberAdded
    | mem.MemberRoleChanged
    | mem.MemberRevoked
    | sh.StakeholderAdded
    | sh.StakeholderUpdated
    | sh.StakeholderRemoved
    | ms.MilestoneAdded
    | ms.MilestoneUpdated
    | ms.MilestoneRescheduled
    | ms.MilestoneCompleted
    | ms.MilestonesReordered
    | ai.ActionItemAdded
    | ai.ActionItemUpdated
    | ai.ActionItemStatusChanged
    | ai.ActionItemRescheduled
    | dep.DependencyAdded
    | dep.DependencyRemoved
    | ob.ObjectiveAdded
    | ob.ObjectiveUpdated
    | rk.RiskAdded
    | rk.RiskUpdated
    | cad.CadenceSet
    | su.StatusUpdatePosted
    | en.PlanEndorsed
    | co.CommentAdded
    | ver.VersionTagged
)


def _tags(union: Any) -> dict[str, type[Any]]:
    return {msgspec.inspect.type_info(t).tag: t for t in union.__args__}  # type: ignore[attr-defined]


ALL_COMMAND_TYPES: dict[str, type[Any]] = _tags(PlanCommand)
# What clients may send (POST /plans/{id}/commands, the socket): the server issues the rest.
COMMAND_TYPES: dict[str, type[Any]] = {
    name: t for name, t in ALL_COMMAND_TYPES.items() if not t.server_only
}
EVENT_TYPES: dict[str, type[Any]] = _tags(PlanEvent)

# Commands that name a new item get a server id when the client chose none.
CREATES_ITEM: frozenset[str] = frozenset(
    name
    for name, t in ALL_COMMAND_TYPES.items()
    if "id" in t.__struct_fields__ and name.startswith("add_")
)


def decide(plan: Plan, cmd: PlanCommand, ctx: Context) -> list[Event]:
    """The events `cmd` causes, or a MapstreamError. `[]` means nothing changes."""
    if isinstance(cmd, pl.CreatePlan):
        return pl.create_plan(plan, cmd, ctx)
    if isinstance(cmd, fk.ForkPlan):
        return decide_all(plan, cmd.seeds, ctx, head=fk.fork_plan(plan, cmd, ctx))
    if not plan.exists:
        raise NotFound("no such plan")
    if isinstance(cmd, mem.JoinPlan):
        return mem.join_plan(plan, cmd, ctx)  # the server has checked the invite
    # the membership the rules see is the one just authorized, whatever the caller passed
    ctx = dataclasses.replace(ctx, member=authorize(plan, ctx.actor, cmd.permission))
    match cmd:
        case pl.UpdatePlan():
            return pl.update_plan(plan, cmd, ctx)
        case pl.SetCompellingEvent():
            return pl.set_compelling_event(plan, cmd, ctx)
        case pl.ActivatePlan():
            return pl.activate_plan(plan, cmd, ctx)
        case pl.ClosePlan():
            return pl.close_plan(plan, cmd, ctx)
        case fk.RecordFork():
            return fk.record_fork(plan, cmd, ctx)
        case mem.JoinPlan():
            return mem.join_plan(plan, cmd, ctx)
        case mem.AddMember():
            return mem.add_member(plan, cmd, ctx)
        case mem.ChangeMemberRole():
            return mem.change_member_role(plan, cmd, ctx)
        case mem.RevokeMember():
            return mem.revoke_member(plan, cmd, ctx)
        case sh.AddStakeholder():
            return sh.add_stakeholder(plan, cmd, ctx)
        case sh.UpdateStakeholder():
            return sh.update_stakeholder(plan, cmd, ctx)
        case sh.RemoveStakeholder():
            return sh.remove_stakeholder(plan, cmd, ctx)
        case ms.AddMilestone():
            return ms.add_milestone(plan, cmd, ctx)
        case ms.UpdateMilestone():
            return ms.update_milestone(plan, cmd, ctx)
        case ms.RescheduleMilestone():
            return ms.reschedule_milestone(plan, cmd, ctx)
        case ms.CompleteMilestone():
            return ms.complete_milestone(plan, cmd, ctx)
        case ms.ReorderMilestones():
            return ms.reorder_milestones(plan, cmd, ctx)
        case ai.AddActionItem():
            return ai.add_action_item(plan, cmd, ctx)
        case ai.UpdateActionItem():
            return ai.update_action_item(plan, cmd, ctx)
        case ai.SetActionItemStatus():
            return ai.set_action_item_status(plan, cmd, ctx)
        case ai.RescheduleActionItem():
            return ai.reschedule_action_item(plan, cmd, ctx)
        case dep.AddDependency():
            return dep.add_dependency(plan, cmd, ctx)
        case dep.RemoveDependency():
            return dep.remove_dependency(plan, cmd, ctx)
        case ob.AddObjective():
            return ob.add_objective(plan, cmd, ctx)
        case ob.UpdateObjective():
            return ob.update_objective(plan, cmd, ctx)
        case rk.AddRisk():
            return rk.add_risk(plan, cmd, ctx)
        case rk.UpdateRisk():
            return rk.update_risk(plan, cmd, ctx)
        case cad.SetCadence():
            return cad.set_cadence(plan, cmd, ctx)
        case su.PostStatusUpdate():
            return su.post_status_update(plan, cmd, ctx)
        case en.EndorsePlan():
            return en.endorse_plan(plan, cmd, ctx)
        case co.AddComment():
            return co.add_comment(plan, cmd, ctx)
        case ver.TagVersion():
            return ver.tag_version(plan, cmd, ctx)
        case _:
            assert_never(cmd)


def decide_all(
    plan: Plan, commands: Iterable[PlanCommand], ctx: Context, *, head: Iterable[Event] = ()
) -> list[Event]:
    """The events of `head` and then of each command, each decided on the plan the events
    before it leave: all or nothing (the first refusal raises). A fork is decided this way
    in one append; a template is tried out this way before any of it is stored."""
    events = list(head)
    plan = recorded_onto(plan, events, ctx)
    for cmd in commands:
        caused = decide(plan, cmd, ctx)
        plan = recorded_onto(plan, caused, ctx)
        events += caused
    return events


def recorded_onto(plan: Plan, events: Iterable[Event], ctx: Context) -> Plan:
    """`plan` after `events`, recorded by the context's actor at its time."""
    for event in events:
        plan = evolve(plan, Recorded(plan.version + 1, ctx.actor, ctx.now, event))
    return plan


def evolve(plan: Plan, rec: Recorded) -> Plan:
    """The plan after one recorded event. Never raises for an event `decide` produced."""
    plan = _apply(plan, rec)
    member = plan.members.get(rec.actor)
    activity = plan.last_activity
    if member is not None:
        activity = {**activity, member.side: rec.at}
    return msgspec.structs.replace(
        plan, version=rec.version, updated_at=rec.at, last_activity=activity
    )


def _apply(plan: Plan, rec: Recorded) -> Plan:
    e: PlanEvent = rec.event
    match e:
        case pl.PlanCreated() | pl.PlanForked():
            return pl.plan_created(plan, e, rec, plan.id)
        case pl.PlanUpdated():
            return pl.plan_updated(plan, e)
        case pl.CompellingEventSet():
            return pl.compelling_event_set(plan, e)
        case pl.PlanActivated():
            return msgspec.structs.replace(plan, status="active")
        case pl.PlanClosed():
            return pl.plan_closed(plan, e, rec.at)
        case fk.ChildPlanForked():
            return fk.child_plan_forked(plan, e, rec.version, rec.actor, rec.at)
        case mem.MemberAdded():
            return mem.member_added(plan, e)
        case mem.MemberRoleChanged():
            return mem.member_role_changed(plan, e)
        case mem.MemberRevoked():
            return mem.member_revoked(plan, e)
        case sh.StakeholderAdded():
            return sh.stakeholder_added(plan, e)
        case sh.StakeholderUpdated():
            return sh.stakeholder_updated(plan, e)
        case sh.StakeholderRemoved():
            return sh.stakeholder_removed(plan, e)
        case ms.MilestoneAdded():
            return ms.milestone_added(plan, e)
        case ms.MilestoneUpdated():
            return ms.milestone_updated(plan, e)
        case ms.MilestoneRescheduled():
            return ms.milestone_rescheduled(plan, e, rec.at)
        case ms.MilestoneCompleted():
            return ms.milestone_completed(plan, e, rec.at)
        case ms.MilestonesReordered():
            return ms.milestones_reordered(plan, e)
        case ai.ActionItemAdded():
            return ai.action_item_added(plan, e)
        case ai.ActionItemUpdated():
            return ai.action_item_updated(plan, e)
        case ai.ActionItemStatusChanged():
            return ai.action_item_status_changed(plan, e, rec.at)
        case ai.ActionItemRescheduled():
            return ai.action_item_rescheduled(plan, e, rec.at)
        case dep.DependencyAdded():
            return dep.dependency_added(plan, e)
        case dep.DependencyRemoved():
            return dep.dependency_removed(plan, e)
        case ob.ObjectiveAdded():
            return ob.objective_added(plan, e)
        case ob.ObjectiveUpdated():
            return ob.objective_updated(plan, e)
        case rk.RiskAdded():
            return rk.risk_added(plan, e)
        case rk.RiskUpdated():
            return rk.risk_updated(plan, e)
        case cad.CadenceSet():
            return cad.cadence_set(plan, e)
        case su.StatusUpdatePosted():
            return su.status_update_posted(plan, e, rec.actor, rec.at)
        case en.PlanEndorsed():
            return en.plan_endorsed(plan, e, rec.actor, rec.at)
        case co.CommentAdded():
            return co.comment_added(plan, e, rec.actor, rec.at)
        case ver.VersionTagged():
            return ver.version_tagged(plan, e)
        case _:
            assert_never(e)


def fold(records: Iterable[Recorded], plan: Plan | None = None, plan_id: str = "") -> Plan:
    """Current state is always the fold of the events; any stored state is a cache of this."""
    state = plan if plan is not None else Plan(id=plan_id)
    for rec in records:
        state = evolve(state, rec)
    return state


# -- decoding stored events ----------------------------------------------------------------

_EVENT_DECODERS = {name: msgspec.json.Decoder(t) for name, t in EVENT_TYPES.items()}
_DICT = msgspec.json.Decoder(dict[str, Any])


def schema_version_of(event_type: str) -> int:
    return int(EVENT_TYPES[event_type].schema_version)


def decode_event(event_type: str, schema_version: int, data: bytes | str) -> Event:
    """A stored event as a typed struct, upcast from older schema versions on the way."""
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise DomainError("unknown_event", f"unknown event type {event_type!r}")
    if schema_version == cls.schema_version:
        return _EVENT_DECODERS[event_type].decode(data)  # type: ignore[no-any-return]
    raw = upcast(event_type, schema_version, _DICT.decode(data), cls.schema_version)
    return msgspec.convert(raw, type=cls)  # type: ignore[no-any-return]
