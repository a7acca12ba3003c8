"""Stakeholders: the people on both sides, with persona and influence."""

from __future__ import annotations

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
from domain.errors import DomainError
from domain.model import Influence, Plan, Side, Stakeholder
from domain.rules import require_new_id, require_open, require_text

_FIELDS = ("name", "title", "side", "persona", "influence", "email", "phone", "calendar_link")


class AddStakeholder(Command, frozen=True, tag="add_stakeholder"):
    name: str
    side: Side
    id: str = ""
    title: str = ""
    persona: str = ""
    influence: Influence | None = None
    email: str = ""
    phone: str = ""
    calendar_link: str = ""


class UpdateStakeholder(Command, frozen=True, tag="update_stakeholder"):
    id: str
    name: str | Unset = UNSET
    title: str | Unset = UNSET
    side: Side | Unset = UNSET
    persona: str | Unset = UNSET
    influence: Influence | Unset | None = UNSET
    email: str | Unset = UNSET
    phone: str | Unset = UNSET
    calendar_link: str | Unset = UNSET


class RemoveStakeholder(Command, frozen=True, tag="remove_stakeholder"):
    id: str


class StakeholderAdded(Event, frozen=True, tag="StakeholderAdded"):
    id: str
    name: str
    side: Side
    title: str = ""
    persona: str = ""
    influence: Influence | None = None
    email: str = ""
    phone: str = ""
    calendar_link: str = ""


class StakeholderUpdated(Event, frozen=True, tag="StakeholderUpdated"):
    id: str
    changes: dict[str, Any]
    previous: dict[str, Any] = {}


class StakeholderRemoved(Event, frozen=True, tag="StakeholderRemoved"):
    id: str


def add_stakeholder(plan: Plan, cmd: AddStakeholder, ctx: Context) -> list[Event]:
    require_open(plan)
    require_new_id(plan, cmd.id)
    return [
        StakeholderAdded(
            id=cmd.id,
            name=require_text(cmd.name, "name"),
            side=cmd.side,
            title=cmd.title.strip(),
            persona=cmd.persona.strip(),
            influence=cmd.influence,
            email=cmd.email.strip().lower(),
            phone=cmd.phone.strip(),
            calendar_link=cmd.calendar_link.strip(),
        )
    ]


def update_stakeholder(plan: Plan, cmd: UpdateStakeholder, ctx: Context) -> list[Event]:
    require_open(plan)
    current = plan.stakeholder(cmd.id)
    if cmd.name is not UNSET:
        cmd = msgspec.structs.replace(cmd, name=require_text(cmd.name, "name"))
    if cmd.email is not UNSET:
        # stored lower-case, as add_stakeholder does, so @-mentions find them
        cmd = msgspec.structs.replace(cmd, email=cmd.email.strip().lower())
    changes = changes_of(cmd, current, _FIELDS)
    if not changes:
        return []
    return [
        StakeholderUpdated(
            id=cmd.id, changes=encoded_changes(changes), previous=previous_of(current, changes)
        )
    ]


def remove_stakeholder(plan: Plan, cmd: RemoveStakeholder, ctx: Context) -> list[Event]:
    require_open(plan)
    s = plan.stakeholder(cmd.id)
    owning = [
        m.title
        for m in plan.milestones.values()
        if m.status != "done" and cmd.id in (m.owner, m.backup)
    ]
    owning += [
        a.title for a in plan.action_items.values() if a.status != "done" and a.owner == cmd.id
    ]
    owning += [r.title for r in plan.risks.values() if r.status == "open" and r.owner == cmd.id]
    if plan.cadence is not None and plan.cadence.reporter == cmd.id:
        owning.append("status reporting")
    if owning:
        raise DomainError(
            "stakeholder_owns_open_items",
            f"{s.name} still owns open items ({', '.join(owning[:3])}): reassign them first",
        )
    return [StakeholderRemoved(id=cmd.id)]


def stakeholder_added(plan: Plan, e: StakeholderAdded) -> Plan:
    s = msgspec.convert(msgspec.to_builtins(e), type=Stakeholder)
    return msgspec.structs.replace(plan, stakeholders={**plan.stakeholders, e.id: s})


def stakeholder_updated(plan: Plan, e: StakeholderUpdated) -> Plan:
    s = apply_changes(plan.stakeholders[e.id], e.changes)
    return msgspec.structs.replace(plan, stakeholders={**plan.stakeholders, e.id: s})


def stakeholder_removed(plan: Plan, e: StakeholderRemoved) -> Plan:
    s = msgspec.structs.replace(plan.stakeholders[e.id], active=False)
    return msgspec.structs.replace(plan, stakeholders={**plan.stakeholders, e.id: s})
