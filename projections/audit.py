"""The audit trail: one row per event, written for a reader who was not there.

    Ramesh Iyer (buyer, security) moved 'Security sign-off' from 16 Jun 2026 to
    23 Jun 2026 (7 days later): waiting for the SOC 2 report

Each row says who (name, side, persona), did what, to which item, from what to what and why,
from the event and the plan as it was just before it. Rows are pure functions of the stream:
the read model built live equals the one rebuilt from position 0. A row keeps its event's
`audience`, so the other side's internal items never reach a reader of the other side.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

import msgspec

from domain import action_items as ai
from domain import comments as co
from domain import dependencies as dep
from domain import members as mem
from domain import milestones as ms
from domain import plans as pl
from domain import stakeholders as sh
from domain import versions as ver
from domain.base import Recorded
from domain.decider import evolve
from domain.model import Plan, Stakeholder
from projections.runner import LogEvent
from projections.states import Loader, PlanStates, recorded_of

log = logging.getLogger(__name__)

_QUOTE_LIMIT = 280
PEOPLE_FIELDS = frozenset(
    {"owner", "backup", "approver", "escalation_contact", "reporter", "stakeholder_id"}
)
DATE_FIELDS = frozenset({"due", "date", "by", "next_review", "from_due", "to_due"})
WORDS = {
    "not_started": "not started",
    "in_progress": "in progress",
    "closed_won": "closed (won)",
    "closed_lost": "closed (lost)",
    "decision_maker": "decision maker",
}
# Plan fields that hold items, and what one item is called.
COLLECTIONS = {
    "members": "member",
    "stakeholders": "stakeholder",
    "objectives": "objective",
    "milestones": "milestone",
    "action_items": "action item",
    "dependencies": "dependency",
    "risks": "risk",
    "comments": "comment",
}


class Change(msgspec.Struct, frozen=True):
    """One field of one item, before and after (values as in the event's JSON)."""

    field: str
    before: Any = msgspec.field(default=None, name="from")
    after: Any = msgspec.field(default=None, name="to")


class AuditRow(msgspec.Struct, frozen=True):
    plan_id: str
    version: int
    position: int
    at: datetime
    type: str
    actor: str  # the email that did it
    actor_name: str
    actor_side: str | None
    actor_persona: str
    item_kind: str  # plan, milestone, action item, stakeholder, member, ...
    item_id: str
    item_title: str
    summary: str  # the one sentence a person reads
    changes: list[Change] = []
    reason: str = ""  # why: reschedule and close reasons
    contingency: str = ""
    items: list[str] = []  # every item the event is about (the `item` filter matches these)
    audience: str | None = None  # None: both sides; else the only side that may read the row
    command_id: str | None = None
    correlation_id: str | None = None


# -- reading the plan ----------------------------------------------------------------------


def day(value: date | str | None) -> str:
    """16 Jun 2026."""
    if value is None or value == "":
        return "no date"
    d = date.fromisoformat(value) if isinstance(value, str) else value
    return f"{d.day} {d:%b %Y}"


def quoted(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return f"'{text if len(text) <= limit else text[: limit - 1] + '…'}'"


def word(value: str) -> str:
    return WORDS.get(value, value.replace("_", " "))


def stakeholder_with_email(plan: Plan, email: str) -> Stakeholder | None:
    for s in plan.stakeholders.values():
        if s.email and s.email == email:
            return s
    return None


def person(plan: Plan, stakeholder_id: str | None) -> str:
    """A stakeholder (owners, approvers, escalation contacts) by name."""
    if stakeholder_id is None:
        return "nobody"
    s = plan.stakeholders.get(stakeholder_id)
    return s.name if s is not None else stakeholder_id


def member_label(plan: Plan, email: str) -> str:
    m = plan.members.get(email)
    s = stakeholder_with_email(plan, email)
    name = (m.name if m is not None else "") or (s.name if s is not None else "")
    return f"{name} <{email}>" if name else email


def actor_of(before: Plan, after: Plan, email: str) -> tuple[str, str | None, str]:
    """(name, side, persona) of who did it, as the plan knew them then."""
    m = before.members.get(email) or after.members.get(email)
    s = stakeholder_with_email(before, email) or stakeholder_with_email(after, email)
    name = (m.name if m is not None else "") or (s.name if s is not None else "") or email
    side = m.side if m is not None else (s.side if s is not None else None)
    return name, side, s.persona if s is not None else ""


def actor_label(name: str, side: str | None, persona: str) -> str:
    details = [d for d in (side, persona) if d]
    return f"{name} ({', '.join(details)})" if details else name


def kind_of(plan: Plan, item_id: str) -> str:
    if item_id == "plan":
        return "plan"
    for field, kind in COLLECTIONS.items():
        collection = getattr(plan, field, None)
        if isinstance(collection, dict) and item_id in collection:
            return kind
    return "item"


def title_of(plan: Plan, item_id: str) -> str:
    if item_id == "plan":
        return plan.title
    if item_id in plan.members:
        return member_label(plan, item_id)
    comment = plan.comments.get(item_id)
    if comment is not None:
        return quoted(comment.text, 60).strip("'")
    dependency = plan.dependencies.get(item_id)
    if dependency is not None:
        return f"{plan.item_title(dependency.to_id)} waits on {plan.item_title(dependency.from_id)}"
    return plan.item_title(item_id)


def show(plan: Plan, field: str, value: Any) -> str:
    """A value as a person reads it: names for stakeholder ids, dates as dates, words."""
    if value is None or value == "" or value == [] or value == {}:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if field in PEOPLE_FIELDS and isinstance(value, str):
        return person(plan, value)
    if field in DATE_FIELDS and isinstance(value, str | date):
        try:
            return day(value)
        except ValueError:
            return quoted(str(value))
    if isinstance(value, list | tuple):
        return ", ".join(show(plan, field, v) for v in value)
    if isinstance(value, dict):
        if "name" in value and "date" in value:
            return f"{quoted(str(value['name']))} on {day(value['date'])}"
        return ", ".join(f"{k} {show(plan, k, v)}" for k, v in value.items())
    if isinstance(value, str):
        return word(value) if field in ("status", "role", "side", "visibility") else quoted(value)
    return str(value)


def field_changes(changes: dict[str, Any], previous: dict[str, Any]) -> list[Change]:
    return [Change(name, previous.get(name), value) for name, value in changes.items()]


def said(plan: Plan, changes: Sequence[Change]) -> str:
    """`title 'A' → 'B'; owner Ana → Sid`."""
    return "; ".join(
        f"{c.field.replace('_', ' ')} {show(plan, c.field, c.before)} → {show(plan, c.field, c.after)}"
        for c in changes
    )


def items_of(event: Any, before: Plan | None = None) -> list[str]:
    """Every item id `event` is about, the main one first; "plan" for the plan itself."""
    out: list[str] = []
    for field in ("id", "email", "item_id", "milestone_id", "from_id", "to_id"):
        value = getattr(event, field, None)
        if isinstance(value, str) and value and value not in out:
            out.append(value)
    if before is not None and isinstance(event, dep.DependencyRemoved):
        d = before.dependencies.get(event.id)
        if d is not None:
            out += [i for i in (d.from_id, d.to_id) if i not in out]
    return out or ["plan"]


# -- one sentence per event ----------------------------------------------------------------


class _Said(msgspec.Struct):
    text: str
    changes: list[Change] = []
    reason: str = ""
    contingency: str = ""


def _sentence(before: Plan, after: Plan, rec: Recorded) -> _Said:
    e = rec.event
    match e:
        case pl.PlanCreated():
            text = (
                f"created the plan {quoted(e.title)} for {e.buyer_org} (buyer) "
                f"and {e.seller_org} (seller)"
            )
            if e.compelling_event is not None:
                text += (
                    f", working back from {quoted(e.compelling_event.name)} "
                    f"on {day(e.compelling_event.date)}"
                )
            return _Said(text)
        case pl.PlanForked():
            return _Said(
                f"started this plan, {quoted(e.title)}, as a fork of plan {e.parent_plan_id} "
                f"at version {e.parent_version} (event hash {e.parent_hash[:12]}…)"
            )
        case pl.PlanUpdated():
            changes = field_changes(e.changes, e.previous)
            return _Said(f"changed the plan: {said(before, changes)}", changes)
        case pl.CompellingEventSet():
            now = {"name": e.name, "date": e.date.isoformat()}
            was = msgspec.to_builtins(e.previous) if e.previous is not None else None
            text = f"set the compelling event to {show(before, 'compelling_event', now)}"
            if was is not None:
                text += f" (was {show(before, 'compelling_event', was)})"
            return _Said(text, [Change("compelling_event", was, now)])
        case pl.PlanActivated():
            return _Said("activated the plan", [Change("status", before.status, "active")])
        case pl.PlanClosed():
            return _Said(
                f"closed the plan as {e.outcome}: {e.reason}",
                [Change("status", before.status, after.status)],
                reason=e.reason,
            )
        case mem.MemberAdded():
            access = f"{e.side} {e.role}"
            if e.email == rec.actor:
                how = " with an invite" if e.invite else ""
                return _Said(f"joined the plan{how} as {access}")
            return _Said(f"gave {member_label(after, e.email)} access as {access}")
        case mem.MemberRoleChanged():
            return _Said(
                f"changed the role of {member_label(before, e.email)} from {e.previous} to {e.role}",
                [Change("role", e.previous, e.role)],
            )
        case mem.MemberRevoked():
            return _Said(
                f"revoked the access of {member_label(before, e.email)}",
                [Change("active", True, False)],
            )
        case sh.StakeholderAdded():
            details = ", ".join(d for d in (e.side, e.persona, e.title) if d)
            return _Said(f"added stakeholder {e.name} ({details})")
        case sh.StakeholderUpdated():
            changes = field_changes(e.changes, e.previous)
            name = person(before, e.id)
            return _Said(f"updated stakeholder {name}: {said(before, changes)}", changes)
        case sh.StakeholderRemoved():
            return _Said(
                f"removed stakeholder {person(before, e.id)}", [Change("active", True, False)]
            )
        case ms.MilestoneAdded():
            text = f"added milestone {quoted(e.title)}"
            if e.owner:
                text += f", owned by {person(before, e.owner)}"
            if e.due:
                text += f", due {day(e.due)}"
                text += " (hard deadline)" if e.deadline == "hard" else ""
            return _Said(text)
        case ms.MilestoneUpdated():
            changes = field_changes(e.changes, e.previous)
            title = quoted(before.item_title(e.id))
            return _Said(f"updated milestone {title}: {said(before, changes)}", changes)
        case ms.MilestoneRescheduled():
            return _moved("", before, e.id, e.from_due, e.to_due, e.reason, e.contingency)
        case ms.MilestoneCompleted():
            m = before.milestones.get(e.id)
            text = f"completed milestone {quoted(before.item_title(e.id))}"
            if m is not None and m.due is not None and rec.at.date() > m.due:
                text += f", {(rec.at.date() - m.due).days} days after its due date"
            return _Said(text, [Change("status", m.status if m else None, "done")])
        case ms.MilestonesReordered():
            titles = ", ".join(quoted(after.item_title(i)) for i in e.order)
            return _Said(
                f"reordered the milestones: {titles}",
                [Change("milestone_order", e.previous, e.order)],
            )
        case ai.ActionItemAdded():
            text = (
                f"added action item {quoted(e.title)} under "
                f"{quoted(before.item_title(e.milestone_id))}"
            )
            if e.owner:
                text += f", owned by {person(before, e.owner)}"
            if e.due:
                text += f", due {day(e.due)}"
            if e.visibility == "internal":
                text += f" (internal to the {e.internal_to} side)"
            return _Said(text)
        case ai.ActionItemUpdated():
            changes = field_changes(e.changes, e.previous)
            shown = [c for c in changes if c.field != "internal_to"]
            title = quoted(before.item_title(e.id))
            return _Said(f"updated action item {title}: {said(before, shown)}", changes)
        case ai.ActionItemStatusChanged():
            item = before.action_items.get(e.id)
            was = e.previous or (item.status if item is not None else None)
            return _Said(
                f"set {quoted(before.item_title(e.id))} from {word(was or 'unknown')} "
                f"to {word(e.status)}",
                [Change("status", was, e.status)],
            )
        case ai.ActionItemRescheduled():
            return _moved("action item ", before, e.id, e.from_due, e.to_due, e.reason, "")
        case dep.DependencyAdded():
            text = (
                f"made {quoted(before.item_title(e.to_id))} wait on "
                f"{quoted(before.item_title(e.from_id))}"
            )
            notes = ["critical"] if e.critical else []
            if e.contingency:
                notes.append(f"contingency: {e.contingency}")
            if e.escalation_contact:
                notes.append(f"escalate to {person(before, e.escalation_contact)}")
            return _Said(text + (f" ({'; '.join(notes)})" if notes else ""))
        case dep.DependencyRemoved():
            d = before.dependencies.get(e.id)
            if d is None:
                return _Said(f"removed dependency {e.id}")
            return _Said(
                f"removed the dependency of {quoted(before.item_title(d.to_id))} "
                f"on {quoted(before.item_title(d.from_id))}"
            )
        case co.CommentAdded():
            if e.item_id == "plan":
                target = "the plan"
            elif e.item_id in before.comments:
                target = f"a comment by {before.comments[e.item_id].author}"
            else:
                target = quoted(title_of(before, e.item_id))
            text = f"commented on {target}: {quoted(e.text, _QUOTE_LIMIT)}"
            if e.mentions:
                names = ", ".join(
                    person(before, m) if m in before.stakeholders else member_label(before, m)
                    for m in e.mentions
                )
                text += f" (mentioning {names})"
            return _Said(text)
        case ver.VersionTagged():
            return _Said(
                f"tagged version {e.version} as {quoted(e.name)}",
                [Change(f"tags.{e.name}", None, e.version)],
            )
        case _:
            return _generic(before, after, e)


def _moved(
    what: str,
    before: Plan,
    item_id: str,
    from_due: date | None,
    to_due: date,
    reason: str,
    contingency: str,
) -> _Said:
    text = f"moved {what}{quoted(before.item_title(item_id))} from {day(from_due)} to {day(to_due)}"
    if from_due is not None:
        days = (to_due - from_due).days
        later = "later" if days > 0 else "earlier"
        text += f" ({abs(days)} day{'s' if abs(days) != 1 else ''} {later})"
    text += f": {reason}"
    if contingency:
        text += f"; contingency: {contingency}"
    change = Change("due", from_due.isoformat() if from_due else None, to_due.isoformat())
    return _Said(text, [change], reason=reason, contingency=contingency)


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


_GENERIC_SKIP = frozenset({"type", "id", "changes", "previous", "reason", "item"})


def _generic(before: Plan, after: Plan, e: Any) -> _Said:
    """Event types this module has no sentence for yet: `RiskAdded` reads `added risk 'X'
    (likelihood high, …)`, an `…Updated` with `changes` reads field by field."""
    words = _CAMEL.sub(" ", type(e).__name__).lower().split()
    verb, noun = (words[-1], " ".join(words[:-1])) if len(words) > 1 else (words[0], "")
    main = items_of(e)[0]
    if main == "plan":
        what, title = ("the plan" if noun == "plan" else noun), ""
    else:
        title = title_of(after, main)
        what = f"{noun} {quoted(title)}"
    changes: list[Change] = []
    changed = getattr(e, "changes", None)
    if isinstance(changed, dict):
        previous = getattr(e, "previous", None)
        changes = field_changes(changed, previous if isinstance(previous, dict) else {})
    text = f"{verb} {what}".strip()
    if changes:
        text += f": {said(before, changes)}"
    else:
        fields = msgspec.to_builtins(e)
        details = [
            f"{name.replace('_', ' ')} {show(before, name, value)}"
            for name, value in fields.items()
            if name not in _GENERIC_SKIP and value not in (None, "", [], {}) and value != title
        ]
        if details:
            text += f" ({', '.join(details)})"
    reason = getattr(e, "reason", "")
    if isinstance(reason, str) and reason:
        text += f": {reason}"
    return _Said(text, changes, reason=reason if isinstance(reason, str) else "")


def describe(before: Plan, after: Plan, e: LogEvent, rec: Recorded) -> AuditRow:
    """The audit row of stored event `e` (decoded as `rec`), `before` and `after` it."""
    name, side, persona = actor_of(before, after, e.actor)
    said_ = _sentence(before, after, rec)
    items = items_of(rec.event, before)
    main = items[0]
    state = after if kind_of(after, main) != "item" else before  # a removed item: before
    return AuditRow(
        plan_id=e.plan_id,
        version=e.version,
        position=e.position,
        at=e.recorded_at,
        type=e.type,
        actor=e.actor,
        actor_name=name,
        actor_side=side,
        actor_persona=persona,
        item_kind=kind_of(state, main),
        item_id=main,
        item_title=title_of(state, main),
        summary=f"{actor_label(name, side, persona)} {said_.text}",
        changes=said_.changes,
        reason=said_.reason,
        contingency=said_.contingency,
        items=items,
        audience=e.audience,
        command_id=e.command_id,
        correlation_id=e.correlation_id,
    )


def unreadable(before: Plan, e: LogEvent, why: str) -> AuditRow:
    """A row for an event this code cannot read: the trail stays complete and says so."""
    name, side, persona = actor_of(before, before, e.actor)
    return AuditRow(
        plan_id=e.plan_id,
        version=e.version,
        position=e.position,
        at=e.recorded_at,
        type=e.type,
        actor=e.actor,
        actor_name=name,
        actor_side=side,
        actor_persona=persona,
        item_kind="plan",
        item_id="plan",
        item_title=before.title,
        summary=(
            f"{actor_label(name, side, persona)} recorded a {e.type} event "
            f"(schema {e.schema_version}) that this version of Mapstream cannot read: {why}"
        ),
        items=["plan"],
        audience=e.audience,
        command_id=e.command_id,
        correlation_id=e.correlation_id,
    )


class AuditProjection:
    """Log events -> audit rows, keeping recent plan states between batches."""

    def __init__(self, load: Loader, capacity: int = 1024) -> None:
        self.states = PlanStates(load, capacity)

    async def project(self, events: Sequence[LogEvent]) -> list[AuditRow]:
        rows = []
        for e in events:
            rows.append(await self.row(e))
            await asyncio.sleep(0)  # a batch is CPU work: let the sockets of this process run
        return rows

    def reset(self) -> None:
        self.states.reset()

    async def row(self, e: LogEvent) -> AuditRow:
        try:
            before = await self.states.before(e)
        except Exception as exc:  # a history this code cannot fold: describe without names
            log.warning("audit: no state for %s v%s (%s)", e.plan_id, e.version - 1, exc)
            before = Plan(id=e.plan_id, version=e.version - 1)
        try:
            rec = recorded_of(e)
            after = evolve(before, rec)
        except Exception as exc:
            self.states.advance(msgspec.structs.replace(before, version=e.version))
            return unreadable(before, e, str(exc))
        self.states.advance(after)
        try:
            return describe(before, after, e, rec)
        except Exception as exc:  # a bug here must not stall the trail: say so in the row
            log.exception("audit: cannot describe %s v%s", e.plan_id, e.version)
            return unreadable(before, e, f"no description ({exc})")


async def _no_state(plan_id: str, version: int) -> Plan:
    raise LookupError(f"{plan_id} v{version}: the events before it were not given")


async def trail(events: Iterable[LogEvent]) -> list[AuditRow]:
    """The audit rows of whole streams (each from version 1), without any database."""
    projection = AuditProjection(_no_state)
    return await projection.project(list(events))
