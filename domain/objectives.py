"""Objectives: the measurable outcomes the buyer wants (metric, baseline, target, by when)
and the projected outcome or ROI that justifies the purchase."""

from __future__ import annotations

from datetime import date
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
from domain.model import Objective, Plan
from domain.rules import MAX_TEXT, require_new_id, require_open, require_text

_FIELDS = ("title", "metric", "baseline", "target", "by", "projected_outcome")


class AddObjective(Command, frozen=True, tag="add_objective"):
    """A success criterion, e.g. "Forecast accuracy" from 70 % to 90 % by 30 Sep."""

    title: str
    id: str = ""
    metric: str = ""
    baseline: str = ""
    target: str = ""
    by: date | None = None
    projected_outcome: str = ""


class UpdateObjective(Command, frozen=True, tag="update_objective"):
    id: str
    title: str | Unset = UNSET
    metric: str | Unset = UNSET
    baseline: str | Unset = UNSET
    target: str | Unset = UNSET
    by: date | Unset | None = UNSET
    projected_outcome: str | Unset = UNSET


class ObjectiveAdded(Event, frozen=True, tag="ObjectiveAdded"):
    id: str
    title: str
    metric: str = ""
    baseline: str = ""
    target: str = ""
    by: date | None = None
    projected_outcome: str = ""


class ObjectiveUpdated(Event, frozen=True, tag="ObjectiveUpdated"):
    id: str
    changes: dict[str, Any]
    previous: dict[str, Any] = {}


def _trimmed(cmd: UpdateObjective) -> UpdateObjective:
    """Text fields as add_objective stores them, so " 90 % " is no change from "90 %"."""
    fields: dict[str, Any] = {}
    if cmd.title is not UNSET:
        fields["title"] = require_text(cmd.title, "title")
    for name in ("metric", "baseline", "target"):
        value = getattr(cmd, name)
        if value is not UNSET:
            fields[name] = require_text(value, name) if value.strip() else ""
    if cmd.projected_outcome is not UNSET:
        fields["projected_outcome"] = cmd.projected_outcome.strip()[:MAX_TEXT]
    return msgspec.structs.replace(cmd, **fields)


def add_objective(plan: Plan, cmd: AddObjective, ctx: Context) -> list[Event]:
    require_open(plan)
    require_new_id(plan, cmd.id)
    return [
        ObjectiveAdded(
            id=cmd.id,
            title=require_text(cmd.title, "title"),
            metric=require_text(cmd.metric, "metric") if cmd.metric.strip() else "",
            baseline=require_text(cmd.baseline, "baseline") if cmd.baseline.strip() else "",
            target=require_text(cmd.target, "target") if cmd.target.strip() else "",
            by=cmd.by,
            projected_outcome=cmd.projected_outcome.strip()[:MAX_TEXT],
        )
    ]


def update_objective(plan: Plan, cmd: UpdateObjective, ctx: Context) -> list[Event]:
    require_open(plan)
    current = plan.objective(cmd.id)
    changes = changes_of(_trimmed(cmd), current, _FIELDS)
    if not changes:
        return []
    return [
        ObjectiveUpdated(
            id=cmd.id, changes=encoded_changes(changes), previous=previous_of(current, changes)
        )
    ]


def objective_added(plan: Plan, e: ObjectiveAdded) -> Plan:
    o = msgspec.convert(msgspec.to_builtins(e), type=Objective)
    return msgspec.structs.replace(plan, objectives={**plan.objectives, e.id: o})


def objective_updated(plan: Plan, e: ObjectiveUpdated) -> Plan:
    o = apply_changes(plan.objectives[e.id], e.changes)
    return msgspec.structs.replace(plan, objectives={**plan.objectives, e.id: o})
