"""Action items: the concrete, owned, dated steps under a milestone."""

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
    as_json,
    changes_of,
    encoded_changes,
    previous_of,
)
from domain.errors import DomainError, Forbidden
from domain.model import ActionItem, ItemStatus, Plan, Side, Slip, Visibility
from domain.rules import MAX_TEXT, require_new_id, require_open, require_owner, require_text

_FIELDS = ("title", "owner", "links", "notes", "visibility")


class AddActionItem(Command, frozen=True, tag="add_action_item"):
    milestone_id: str
    title: str
    id: str = ""
    owner: str | None = None
    due: date | None = None
    links: list[str] = []
    notes: str = ""
    visibility: Visibility = "shared"


class UpdateActionItem(Command, frozen=True, tag="update_action_item"):
    id: str
    title: str | Unset = UNSET
    owner: str | Unset | None = UNSET
    links: list[str] | Unset = UNSET
    notes: str | Unset = UNSET
    visibility: Visibility | Unset = UNSET


class SetActionItemStatus(Command, frozen=True, tag="set_action_item_status"):
    id: str
    status: ItemStatus


class RescheduleActionItem(Command, frozen=True, tag="reschedule_action_item"):
    id: str
    due: date
    reason: str


class ActionItemAdded(Event, frozen=True, tag="ActionItemAdded"):
    id: str
    milestone_id: str
    title: str
    owner: str | None = None
    due: date | None = None
    links: list[str] = []
    notes: str = ""
    visibility: Visibility = "shared"
    internal_to: Side | None = None


class ActionItemUpdated(Event, frozen=True, tag="ActionItemUpdated"):
    """`item` carries the whole item when it becomes shared: the other side never saw it."""

    id: str
    changes: dict[str, Any]
    previous: dict[str, Any] = {}
    item: dict[str, Any] | None = None


class ActionItemStatusChanged(Event, frozen=True, tag="ActionItemStatusChanged"):
    """Schema 2: statuses are not_started / in_progress / blocked / done.

    Schema 1 (before the buyer-language rename) stored todo / doing / blocked / done and no
    previous status; `domain.upcast` lifts those rows when they are read.
    """

    schema_version = 2
    id: str
    status: ItemStatus
    previous: ItemStatus | None = None


class ActionItemRescheduled(Event, frozen=True, tag="ActionItemRescheduled"):
    id: str
    from_due: date | None
    to_due: date
    reason: str


def _visible_to_actor(item: ActionItem, ctx: Context) -> None:
    """An internal item is invisible to the other side, so it cannot be changed from there."""
    if item.visibility == "internal" and ctx.member is not None:
        if ctx.member.side != item.internal_to:
            raise Forbidden("this item is internal to the other side")


def add_action_item(plan: Plan, cmd: AddActionItem, ctx: Context) -> list[Event]:
    require_open(plan)
    require_new_id(plan, cmd.id)
    plan.milestone(cmd.milestone_id)
    require_owner(plan, cmd.owner)
    internal_to = None
    if cmd.visibility == "internal":
        if ctx.member is None:
            raise DomainError("internal_needs_side", "only a plan member can add an internal item")
        internal_to = ctx.member.side
    return [
        ActionItemAdded(
            id=cmd.id,
            milestone_id=cmd.milestone_id,
            title=require_text(cmd.title, "title"),
            owner=cmd.owner,
            due=cmd.due,
            links=[link.strip() for link in cmd.links if link.strip()],
            notes=cmd.notes.strip()[:MAX_TEXT],
            visibility=cmd.visibility,
            internal_to=internal_to,
        )
    ]


def update_action_item(plan: Plan, cmd: UpdateActionItem, ctx: Context) -> list[Event]:
    require_open(plan)
    current = plan.action_item(cmd.id)
    _visible_to_actor(current, ctx)
    if cmd.title is not UNSET:
        cmd = msgspec.structs.replace(cmd, title=require_text(cmd.title, "title"))
    if cmd.owner is not UNSET:
        require_owner(plan, cmd.owner)
    changes = changes_of(cmd, current, _FIELDS)
    if "links" in changes:
        changes["links"] = tuple(changes["links"])
        if changes["links"] == current.links:
            del changes["links"]
    if changes.get("visibility") == "internal":
        if ctx.member is None:
            raise DomainError("internal_needs_side", "only a plan member can make an item internal")
        changes["internal_to"] = ctx.member.side
    elif changes.get("visibility") == "shared":
        changes["internal_to"] = None
    if not changes:
        return []
    encoded = encoded_changes(changes)
    item = None
    if changes.get("visibility") == "shared":
        item = as_json(apply_changes(current, encoded))
    return [
        ActionItemUpdated(
            id=cmd.id, changes=encoded, previous=previous_of(current, changes), item=item
        )
    ]


def set_action_item_status(plan: Plan, cmd: SetActionItemStatus, ctx: Context) -> list[Event]:
    require_open(plan)
    current = plan.action_item(cmd.id)
    _visible_to_actor(current, ctx)
    if current.status == cmd.status:
        return []
    if current.status == "done" and current.owner is not None:
        # reopening: a removed stakeholder may own done items, never open ones
        owner = plan.stakeholders.get(current.owner)
        if owner is None or not owner.active:
            raise DomainError(
                "owner_removed",
                f"'{current.title}' is owned by {current.owner!r}, who is no longer a "
                "stakeholder: assign a current owner first (update_action_item), then reopen it",
                item_id=cmd.id,
            )
    return [ActionItemStatusChanged(id=cmd.id, status=cmd.status, previous=current.status)]


def reschedule_action_item(plan: Plan, cmd: RescheduleActionItem, ctx: Context) -> list[Event]:
    require_open(plan)
    current = plan.action_item(cmd.id)
    _visible_to_actor(current, ctx)
    if current.status == "done":
        raise DomainError("done_is_final", f"'{current.title}' is done", item_id=cmd.id)
    if current.due == cmd.due:
        return []
    reason = require_text(cmd.reason, "reason", limit=MAX_TEXT)
    return [ActionItemRescheduled(id=cmd.id, from_due=current.due, to_due=cmd.due, reason=reason)]


def _put(plan: Plan, item: ActionItem) -> Plan:
    return msgspec.structs.replace(plan, action_items={**plan.action_items, item.id: item})


def action_item_added(plan: Plan, e: ActionItemAdded) -> Plan:
    item = ActionItem(
        id=e.id,
        milestone_id=e.milestone_id,
        title=e.title,
        owner=e.owner,
        due=e.due,
        links=tuple(e.links),
        notes=e.notes,
        visibility=e.visibility,
        internal_to=e.internal_to,
    )
    return _put(plan, item)


def action_item_updated(plan: Plan, e: ActionItemUpdated) -> Plan:
    return _put(plan, apply_changes(plan.action_items[e.id], e.changes))


def action_item_status_changed(plan: Plan, e: ActionItemStatusChanged, at: datetime) -> Plan:
    item = plan.action_items[e.id]
    done_at = at if e.status == "done" else None
    return _put(plan, msgspec.structs.replace(item, status=e.status, completed_at=done_at))


def action_item_rescheduled(plan: Plan, e: ActionItemRescheduled, at: datetime) -> Plan:
    item = plan.action_items[e.id]
    slip = Slip(e.from_due, e.to_due, e.reason, "", at)
    return _put(plan, msgspec.structs.replace(item, due=e.to_due, slips=(*item.slips, slip)))
