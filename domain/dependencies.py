"""Dependencies between milestones and action items. The graph stays a DAG."""

from __future__ import annotations

import msgspec

from domain.base import Command, Context, Event
from domain.errors import DomainError, Malformed, NotFound
from domain.model import Dependency, Plan
from domain.rules import require_new_id, require_open, require_owner, require_visible


class AddDependency(Command, frozen=True, tag="add_dependency"):
    """`to_id` waits on `from_id`."""

    from_id: str
    to_id: str
    id: str = ""
    critical: bool = False
    contingency: str = ""
    escalation_contact: str | None = None


class RemoveDependency(Command, frozen=True, tag="remove_dependency"):
    id: str


class DependencyAdded(Event, frozen=True, tag="DependencyAdded"):
    id: str
    from_id: str
    to_id: str
    critical: bool = False
    contingency: str = ""
    escalation_contact: str | None = None


class DependencyRemoved(Event, frozen=True, tag="DependencyRemoved"):
    id: str


def _schedulable(plan: Plan, item_id: str, field: str) -> None:
    if item_id not in plan.milestones and item_id not in plan.action_items:
        raise NotFound(f"`{field}` {item_id!r} is not a milestone or action item", field=field)


def reaches(plan: Plan, start: str, goal: str) -> bool:
    """True when `goal` can be reached from `start` along existing dependency edges."""
    edges: dict[str, list[str]] = {}
    for d in plan.dependencies.values():
        edges.setdefault(d.from_id, []).append(d.to_id)
    seen: set[str] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node in seen:
            continue
        seen.add(node)
        stack.extend(edges.get(node, ()))
    return False


def add_dependency(plan: Plan, cmd: AddDependency, ctx: Context) -> list[Event]:
    require_open(plan)
    require_new_id(plan, cmd.id)
    _schedulable(plan, cmd.from_id, "from_id")
    _schedulable(plan, cmd.to_id, "to_id")
    require_visible(plan, cmd.from_id, ctx.member)
    require_visible(plan, cmd.to_id, ctx.member)
    if cmd.from_id == cmd.to_id:
        raise Malformed("an item cannot depend on itself", field="to_id")
    if any(d.from_id == cmd.from_id and d.to_id == cmd.to_id for d in plan.dependencies.values()):
        return []
    if reaches(plan, cmd.to_id, cmd.from_id):
        raise DomainError(
            "dependency_cycle",
            f"{plan.item_title(cmd.from_id)!r} already waits on {plan.item_title(cmd.to_id)!r}: "
            "this dependency would make a cycle",
        )
    require_owner(plan, cmd.escalation_contact, "escalation_contact")
    return [
        DependencyAdded(
            id=cmd.id,
            from_id=cmd.from_id,
            to_id=cmd.to_id,
            critical=cmd.critical,
            contingency=cmd.contingency.strip(),
            escalation_contact=cmd.escalation_contact,
        )
    ]


def remove_dependency(plan: Plan, cmd: RemoveDependency, ctx: Context) -> list[Event]:
    require_open(plan)
    if cmd.id not in plan.dependencies:
        raise NotFound(f"no dependency {cmd.id!r} in this plan", item_id=cmd.id)
    require_visible(plan, cmd.id, ctx.member)
    return [DependencyRemoved(id=cmd.id)]


def dependency_added(plan: Plan, e: DependencyAdded) -> Plan:
    d = Dependency(
        id=e.id,
        from_id=e.from_id,
        to_id=e.to_id,
        critical=e.critical,
        contingency=e.contingency,
        escalation_contact=e.escalation_contact,
    )
    return msgspec.structs.replace(plan, dependencies={**plan.dependencies, e.id: d})


def dependency_removed(plan: Plan, e: DependencyRemoved) -> Plan:
    deps = dict(plan.dependencies)
    del deps[e.id]
    # Its discussion goes with it: an orphaned comment would lose the side it belongs to
    # (and would hang off whatever item takes the id next). Replies follow their parent.
    gone = {e.id}
    comments = {}
    for comment_id, comment in plan.comments.items():
        if comment.item_id in gone:
            gone.add(comment_id)
        else:
            comments[comment_id] = comment
    return msgspec.structs.replace(plan, dependencies=deps, comments=comments)
