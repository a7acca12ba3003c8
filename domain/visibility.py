"""Internal items: one side's private notes never reach the other side.

`audience` says, at decision time, which side alone may see an event (None = both).
`view_for` cuts a state down to what one side may see. Every surface uses these two.
"""

from __future__ import annotations

from typing import Any

import msgspec

from domain import action_items as ai
from domain import comments as co
from domain import dependencies as dep
from domain.model import Plan, Side
from domain.rules import item_audience


def audience(plan: Plan, event: Any) -> Side | None:
    """The only side that may see `event`, judged on the plan before it applies."""
    match event:
        case ai.ActionItemAdded():
            return event.internal_to if event.visibility == "internal" else None
        case ai.ActionItemUpdated():
            before = item_audience(plan, event.id)
            if "visibility" in event.changes:
                # becoming shared is news to both; becoming internal is seen by that side only
                return (
                    None
                    if event.changes["visibility"] == "shared"
                    else event.changes.get("internal_to")
                )
            return before
        case ai.ActionItemStatusChanged() | ai.ActionItemRescheduled():
            return item_audience(plan, event.id)
        case co.CommentAdded():
            return item_audience(plan, event.item_id)
        case dep.DependencyAdded():
            return item_audience(plan, event.from_id) or item_audience(plan, event.to_id)
        case dep.DependencyRemoved():
            return item_audience(plan, event.id)
        case _:
            return None


def hidden_ids(plan: Plan, side: Side) -> set[str]:
    return {
        item.id
        for item in plan.action_items.values()
        if item.visibility == "internal" and item.internal_to != side
    }


def view_for(plan: Plan, side: Side) -> Plan:
    """The plan as `side` may see it: the other side's internal items are simply not there."""
    hidden = hidden_ids(plan, side)
    if not hidden:
        return plan
    return msgspec.structs.replace(
        plan,
        action_items={k: v for k, v in plan.action_items.items() if k not in hidden},
        # a reply hangs off a comment: follow the chain to the item it is about
        comments={
            k: v for k, v in plan.comments.items() if item_audience(plan, v.item_id) in (None, side)
        },
        dependencies={
            k: v
            for k, v in plan.dependencies.items()
            if v.from_id not in hidden and v.to_id not in hidden
        },
    )
