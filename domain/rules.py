"""Checks shared by several deciders. Each raises DomainError with a stable `rule`."""

from __future__ import annotations

from datetime import date

from domain.errors import DomainError, Forbidden, Malformed
from domain.model import Member, Plan, Side

MAX_TITLE = 200
MAX_TEXT = 10_000


def require_text(value: str, field: str, *, limit: int = MAX_TITLE) -> str:
    text = value.strip()
    if not text:
        raise Malformed(f"`{field}` must not be empty", field=field)
    if len(text) > limit:
        raise Malformed(f"`{field}` is longer than {limit} characters", field=field)
    return text


def require_owner(plan: Plan, owner: str | None, field: str = "owner") -> None:
    """An owner, backup or approver must be an active stakeholder of the plan."""
    if owner is None:
        return
    s = plan.stakeholders.get(owner)
    if s is None or not s.active:
        raise DomainError(
            "owner_must_be_stakeholder",
            f"`{field}` {owner!r} is not a stakeholder of this plan: add them first",
            field=field,
        )


def require_new_id(plan: Plan, item_id: str) -> None:
    if not item_id.strip():
        raise Malformed("an item id must not be empty", field="id")
    # "plan" is what a comment on the plan itself names: an item must not take it
    if item_id == "plan" or plan.has_item(item_id):
        raise DomainError("duplicate_id", f"an item with id {item_id!r} already exists")


def item_audience(plan: Plan, item_id: str) -> Side | None:
    """The only side that may see the item (None = both): internal action items, and
    comments and dependencies that hang off one."""
    item = plan.action_items.get(item_id)
    if item is not None and item.visibility == "internal":
        return item.internal_to
    comment = plan.comments.get(item_id)
    if comment is not None:
        return item_audience(plan, comment.item_id)
    dependency = plan.dependencies.get(item_id)
    if dependency is not None:
        return item_audience(plan, dependency.from_id) or item_audience(plan, dependency.to_id)
    return None


def require_visible(plan: Plan, item_id: str, member: Member | None) -> None:
    """An item internal to one side is invisible to the other, so it cannot act on it."""
    side = item_audience(plan, item_id)
    if side is not None and member is not None and member.side != side:
        raise Forbidden("this item is internal to the other side")


def require_open(plan: Plan) -> None:
    if plan.is_closed:
        raise DomainError(
            "closed_plan_is_read_only",
            f"the plan is {plan.status.replace('_', ' ')}: it takes comments only; fork it to go on",
        )


def slip_days(from_due: date | None, to_due: date) -> int:
    return 0 if from_due is None else (to_due - from_due).days
