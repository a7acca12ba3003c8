"""Risks to the plan: likelihood, impact, mitigation and one owner, open until closed."""

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
from domain.model import Level, Plan, Risk, RiskStatus
from domain.rules import MAX_TEXT, require_new_id, require_open, require_owner, require_text

_FIELDS = ("title", "likelihood", "impact", "mitigation", "owner", "status")


class AddRisk(Command, frozen=True, tag="add_risk"):
    title: str
    id: str = ""
    likelihood: Level = "medium"
    impact: Level = "medium"
    mitigation: str = ""
    owner: str | None = None


class UpdateRisk(Command, frozen=True, tag="update_risk"):
    """Change any field; `status: "closed"` retires the risk (it stays in the plan)."""

    id: str
    title: str | Unset = UNSET
    likelihood: Level | Unset = UNSET
    impact: Level | Unset = UNSET
    mitigation: str | Unset = UNSET
    owner: str | Unset | None = UNSET
    status: RiskStatus | Unset = UNSET


class RiskAdded(Event, frozen=True, tag="RiskAdded"):
    id: str
    title: str
    likelihood: Level = "medium"
    impact: Level = "medium"
    mitigation: str = ""
    owner: str | None = None


class RiskUpdated(Event, frozen=True, tag="RiskUpdated"):
    id: str
    changes: dict[str, Any]
    previous: dict[str, Any] = {}


def add_risk(plan: Plan, cmd: AddRisk, ctx: Context) -> list[Event]:
    require_open(plan)
    require_new_id(plan, cmd.id)
    require_owner(plan, cmd.owner)
    return [
        RiskAdded(
            id=cmd.id,
            title=require_text(cmd.title, "title"),
            likelihood=cmd.likelihood,
            impact=cmd.impact,
            mitigation=cmd.mitigation.strip()[:MAX_TEXT],
            owner=cmd.owner,
        )
    ]


def update_risk(plan: Plan, cmd: UpdateRisk, ctx: Context) -> list[Event]:
    require_open(plan)
    current = plan.risk(cmd.id)
    if cmd.title is not UNSET:
        cmd = msgspec.structs.replace(cmd, title=require_text(cmd.title, "title"))
    if cmd.mitigation is not UNSET:
        cmd = msgspec.structs.replace(cmd, mitigation=cmd.mitigation.strip()[:MAX_TEXT])
    if cmd.owner is not UNSET:
        require_owner(plan, cmd.owner)
    elif cmd.status == "open" and current.status == "closed":
        require_owner(plan, current.owner)  # a reopened risk needs a current owner
    changes = changes_of(cmd, current, _FIELDS)
    if not changes:
        return []
    return [
        RiskUpdated(
            id=cmd.id, changes=encoded_changes(changes), previous=previous_of(current, changes)
        )
    ]


def risk_added(plan: Plan, e: RiskAdded) -> Plan:
    r = msgspec.convert(msgspec.to_builtins(e), type=Risk)
    return msgspec.structs.replace(plan, risks={**plan.risks, e.id: r})


def risk_updated(plan: Plan, e: RiskUpdated) -> Plan:
    r = apply_changes(plan.risks[e.id], e.changes)
    return msgspec.structs.replace(plan, risks={**plan.risks, e.id: r})
