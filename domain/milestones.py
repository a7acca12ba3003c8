"""Milestones: the 8-12 steps of the plan, in buyer language, each with one owner."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import msgspec

from domain.base import (
    UNSET,
    Command,
    Context,
    Event,
    Unset,
    apply_changes,
    changes_of,
    encoded_changes,
    previous_of,
)
from domain.errors import DomainError, Malformed
from domain.model import DeadlineKind, ItemStatus, Milestone, Plan, Slip
from domain.rules import MAX_TEXT, require_new_id, require_open, require_owner, require_text

_FIELDS = ("title", "outcome", "owner", "backup", "approver", "deadline")


class AddMilestone(Command, frozen=True, tag="add_milestone"):
    title: str
    id: str = ""
    outcome: str = ""
    owner: str | None = None
    backup: str | None = None
    approver: str | None = None
    due: date | None = None
    deadline: DeadlineKind = "soft"
    position: int | None = None


class UpdateMilestone(Command, frozen=True, tag="update_milestone"):
    """Change fields other than the due date (a date change is a reschedule, with a reason)."""

    id: str
    title: str | Unset = UNSET
    outcome: str | Unset = UNSET
    owner: str | Unset | None = UNSET
    backup: str | Unset | None = UNSET
    approver: str | Unset | None = UNSET
    deadline: DeadlineKind | Unset = UNSET
    status: ItemStatus | Unset = UNSET


class RescheduleMilestone(Command, frozen=True, tag="reschedule_milestone"):
    id: str
    due: date
    reason: str
    contingency: str = ""


class CompleteMilestone(Command, frozen=True, tag="complete_milestone"):
    id: str


class ReorderMilestones(Command, frozen=True, tag="reorder_milestones"):
    order: list[str]


class MilestoneAdded(Event, frozen=True, tag="MilestoneAdded"):
    id: str
    title: str
    outcome: str = ""
    owner: str | None = None
    backup: str | None = None
    approver: str | None = None
    due: date | None = None
    deadline: DeadlineKind = "soft"
    position: int | None = None


class MilestoneUpdated(Event, frozen=True, tag="MilestoneUpdated"):
    id: str
    changes: dict[str, Any]
    previous: dict[str, Any] = {}


class MilestoneRescheduled(Event, frozen=True, tag="MilestoneRescheduled"):
    id: str
    from_due: date | None
    to_due: date
    reason: str
    contingency: str = ""


class MilestoneCompleted(Event, frozen=True, tag="MilestoneCompleted"):
    id: str


class MilestonesReordered(Event, frozen=True, tag="MilestonesReordered"):
    order: list[str]
    previous: list[str] = []


def _check_people(plan: Plan, owner: Any, backup: Any, approver: Any) -> None:
    for field, who in (("owner", owner), ("backup", backup), ("approver", approver)):
        if who is not UNSET:
            require_owner(plan, who, field)


def add_milestone(plan: Plan, cmd: AddMilestone, ctx: Context) -> list[Event]:
    require_open(plan)
    require_new_id(plan, cmd.id)
    _check_people(plan, cmd.owner, cmd.backup, cmd.approver)
    if cmd.position is not None and not 0 <= cmd.position <= len(plan.milestone_order):
        raise Malformed(
            f"`position` must be between 0 and {len(plan.milestone_order)}", field="position"
        )
    return [
        MilestoneAdded(
            id=cmd.id,
            title=require_text(cmd.title, "title"),
            outcome=cmd.outcome.strip()[:MAX_TEXT],
            owner=cmd.owner,
            backup=cmd.backup,
            approver=cmd.approver,
            due=cmd.due,
            deadline=cmd.deadline,
            position=cmd.position,
        )
    ]


def update_milestone(plan: Plan, cmd: UpdateMilestone, ctx: Context) -> list[Event]:
    require_open(plan)
    current = plan.milestone(cmd.id)
    if cmd.title is not UNSET:
        cmd = msgspec.structs.replace(cmd, title=require_text(cmd.title, "title"))
    _check_people(plan, cmd.owner, cmd.backup, cmd.approver)
    if cmd.status is not UNSET and cmd.status == "done" and current.status != "done":
        raise DomainError(
            "complete_via_complete_milestone",
            "use complete_milestone to mark a milestone done",
        )
    if current.status == "done" and cmd.status is not UNSET and cmd.status != "done":
        raise DomainError("done_is_final", f"'{current.title}' is done")
    changes = changes_of(cmd, current, (*_FIELDS, "status"))
    if not changes:
        return []
    return [
        MilestoneUpdated(
            id=cmd.id, changes=encoded_changes(changes), previous=previous_of(current, changes)
        )
    ]


def reschedule_milestone(plan: Plan, cmd: RescheduleMilestone, ctx: Context) -> list[Event]:
    """A slip is history: keep the old date and the reason."""
    require_open(plan)
    milestone = plan.milestone(cmd.id)
    if milestone.status == "done":
        raise DomainError("done_is_final", f"'{milestone.title}' is done", item_id=cmd.id)
    if cmd.due == milestone.due:
        return []
    reason = require_text(cmd.reason, "reason", limit=MAX_TEXT)
    return [
        MilestoneRescheduled(
            id=cmd.id,
            from_due=milestone.due,
            to_due=cmd.due,
            reason=reason,
            contingency=cmd.contingency.strip(),
        )
    ]


def complete_milestone(plan: Plan, cmd: CompleteMilestone, ctx: Context) -> list[Event]:
    require_open(plan)
    milestone = plan.milestone(cmd.id)
    if milestone.status == "done":
        return []
    return [MilestoneCompleted(id=cmd.id)]


def reorder_milestones(plan: Plan, cmd: ReorderMilestones, ctx: Context) -> list[Event]:
    require_open(plan)
    if sorted(cmd.order) != sorted(plan.milestone_order) or len(set(cmd.order)) != len(cmd.order):
        raise Malformed("`order` must list every milestone id exactly once", field="order")
    if tuple(cmd.order) == plan.milestone_order:
        return []
    return [MilestonesReordered(order=list(cmd.order), previous=list(plan.milestone_order))]


def _put(plan: Plan, m: Milestone) -> Plan:
    return msgspec.structs.replace(plan, milestones={**plan.milestones, m.id: m})


def milestone_added(plan: Plan, e: MilestoneAdded) -> Plan:
    m = Milestone(
        id=e.id,
        title=e.title,
        outcome=e.outcome,
        owner=e.owner,
        backup=e.backup,
        approver=e.approver,
        due=e.due,
        deadline=e.deadline,
    )
    order = list(plan.milestone_order)
    order.insert(len(order) if e.position is None else e.position, e.id)
    return msgspec.structs.replace(_put(plan, m), milestone_order=tuple(order))


def milestone_updated(plan: Plan, e: MilestoneUpdated) -> Plan:
    return _put(plan, apply_changes(plan.milestones[e.id], e.changes))


def milestone_rescheduled(plan: Plan, e: MilestoneRescheduled, at: datetime) -> Plan:
    m = plan.milestones[e.id]
    slip = Slip(e.from_due, e.to_due, e.reason, e.contingency, at)
    return _put(plan, msgspec.structs.replace(m, due=e.to_due, slips=(*m.slips, slip)))


def milestone_completed(plan: Plan, e: MilestoneCompleted, at: datetime) -> Plan:
    m = plan.milestones[e.id]
    return _put(plan, msgspec.structs.replace(m, status="done", completed_at=at))


def milestones_reordered(plan: Plan, e: MilestonesReordered) -> Plan:
    return msgspec.structs.replace(plan, milestone_order=tuple(e.order))
