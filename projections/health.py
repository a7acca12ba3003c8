"""Plan health: is the plan on track, at risk or stalled, and why.

`health(plan, now)` is pure; the caller passes the plan as the reader's side sees it
(`domain.visibility.view_for`), so the other side's internal items never show up.

Status:
- **stalled**: an open item is 7 or more days overdue, or an active plan has had no
  buyer-side activity for 5 or more days;
- **at risk**: an open item is 1 to 6 days overdue, a critical dependency is late, or the
  slack to the compelling event is negative;
- **on track** otherwise. A closed plan is on track with no findings: there is nothing left
  to watch.

Schedule (critical path and slack). An open item's *projected finish* is its due date (today
if it is overdue), pushed later by any open prerequisite that finishes later (dependencies:
the item waits on its prerequisites). The items that must be done by the compelling event
are the open items due on or before it, and those that slipped past it (a slip moved them
from a date on or before it); an item planned after the compelling event from the start is
a follow-up and does not count. The **critical path** is the chain of those items, linked by
dependencies, that ends at the latest projected finish: from the item that finishes last,
follow back, at each step, the prerequisite that finishes last (ties: the longer chain, then
plan order). **Slack** is the compelling event's date minus that latest projected finish,
in days (negative: the plan cannot meet the compelling event); none without a compelling
event or a dated open item. Without a compelling event, the critical path runs through all
dated open items.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Literal

import msgspec

from domain.endorsements import persona_key
from domain.model import ActionItem, Milestone, Plan, Side

Status = Literal["on_track", "at_risk", "stalled"]

DUE_SOON_DAYS = 7  # an open item due within a week (today included) is due soon
STALLED_OVERDUE_DAYS = 7  # an item this late stalls the plan; 1 to 6 days puts it at risk
STALE_DAYS = 5  # an active plan the buyer has not touched for this long is stalled
HEALTHY_MILESTONES = (8, 12)  # the healthy range of milestones in a plan, inclusive

Scheduled = Milestone | ActionItem


class Finding(msgspec.Struct, frozen=True):
    code: str
    item_id: str  # "plan" for findings about the whole plan
    message: str


class Health(msgspec.Struct, frozen=True):
    status: Status
    findings: list[Finding]
    critical_path: list[str]
    slack_days: int | None
    projected_finish: date | None = None
    total_slip_days: int = 0
    as_of: date | None = None


def _day(d: date) -> str:
    return f"{d.day} {d:%b %Y}"


def _days(n: int) -> str:
    return f"{n} day{'s' if n != 1 else ''}"


def _open_items(plan: Plan) -> Iterator[Scheduled]:
    """Open milestones in plan order, then open action items."""
    for mid in plan.milestone_order:
        m = plan.milestones[mid]
        if m.status != "done":
            yield m
    for a in plan.action_items.values():
        if a.status != "done":
            yield a


def _planned_due(item: Scheduled) -> date | None:
    """The date the item was first planned for (before any slip)."""
    if item.slips and item.slips[0].from_due is not None:
        return item.slips[0].from_due
    return item.due


class _Schedule:
    """Projected finishes over the dependency graph of the open items."""

    def __init__(self, plan: Plan, today: date) -> None:
        self.items = {i.id: i for i in _open_items(plan)}
        self.order = {item_id: n for n, item_id in enumerate(self.items)}
        self.today = today
        self.prereqs: dict[str, list[str]] = {}
        for d in plan.dependencies.values():
            if d.from_id in self.items and d.to_id in self.items:
                self.prereqs.setdefault(d.to_id, []).append(d.from_id)
        self._finish: dict[str, date | None] = {}
        self._length: dict[str, int] = {}
        for item_id in self.items:
            self._visit(item_id, set())

    def _visit(self, item_id: str, path: set[str]) -> None:
        if item_id in self._finish or item_id in path:  # the domain keeps it a DAG
            return
        path.add(item_id)
        due = self.items[item_id].due
        finishes = [max(due, self.today)] if due is not None else []
        length = 0
        for p in self.prereqs.get(item_id, []):
            self._visit(p, path)
            before = self._finish.get(p)
            if before is not None:
                finishes.append(before)
            length = max(length, self._length.get(p, 0))
        path.discard(item_id)
        self._finish[item_id] = max(finishes) if finishes else None
        self._length[item_id] = length + 1

    def finish(self, item_id: str) -> date | None:
        return self._finish.get(item_id)

    def _rank(self, item_id: str) -> tuple[date, int, int]:
        return (
            self._finish.get(item_id) or date.min,
            self._length.get(item_id, 0),
            -self.order[item_id],
        )

    def critical_path(self, candidates: list[str]) -> list[str]:
        dated = [c for c in candidates if self._finish.get(c) is not None]
        if not dated:
            return []
        node = max(dated, key=self._rank)
        path = [node]
        while self.prereqs.get(node):
            node = max(self.prereqs[node], key=self._rank)
            path.append(node)
        return path[::-1]


def _must_meet(item: Scheduled, deadline: date) -> bool:
    """Due by the compelling event, or slipped past it from a date on or before it."""
    if item.due is not None and item.due <= deadline:
        return True
    return any(s.from_due is not None and s.from_due <= deadline for s in item.slips)


def _has_persona(plan: Plan, persona: str, side: Side = "buyer") -> bool:
    return any(
        s.active and s.side == side and persona_key(s.persona) == persona
        for s in plan.stakeholders.values()
    )


def health(plan: Plan, now: datetime) -> Health:
    """The plan's health as of `now` (its UTC date is "today")."""
    today = now.astimezone(UTC).date()
    if plan.is_closed:
        return Health("on_track", [], [], None, as_of=today)
    findings: list[Finding] = []
    at_risk = stalled = False
    schedule = _Schedule(plan, today)
    items = list(schedule.items.values())

    # -- time: stale, schedule, overdue, due soon
    if plan.status == "active":
        since = plan.last_activity.get("buyer") or plan.created_at
        if since is not None and now - since >= timedelta(days=STALE_DAYS):
            stalled = True
            quiet = (now - since).days
            findings.append(
                Finding(
                    "stale",
                    "plan",
                    f"no buyer-side activity for {_days(quiet)} (since {_day(since.date())})",
                )
            )

    ce = plan.compelling_event
    candidates = [i.id for i in items if ce is None or _must_meet(i, ce.date)]
    critical_path = schedule.critical_path(candidates)
    projected = schedule.finish(critical_path[-1]) if critical_path else None
    slack = (ce.date - projected).days if ce is not None and projected is not None else None
    if ce is None:
        findings.append(
            Finding(
                "no_compelling_event",
                "plan",
                "no compelling event: set the date the whole plan works back from",
            )
        )
    elif slack is not None and slack < 0 and projected is not None:
        at_risk = True
        findings.append(
            Finding(
                "negative_slack",
                critical_path[-1],
                f"the plan finishes on {_day(projected)}, {_days(-slack)} after "
                f"{ce.name!r} on {_day(ce.date)}",
            )
        )

    for d in plan.dependencies.values():
        before, after = schedule.items.get(d.from_id), schedule.items.get(d.to_id)
        if not d.critical or before is None or after is None:
            continue
        finish = schedule.finish(before.id)
        if before.due is not None and before.due < today:
            why = f"is {_days((today - before.due).days)} overdue"
        elif finish is not None and after.due is not None and finish > after.due:
            why = f"is projected to finish on {_day(finish)}, after {_day(after.due)}"
        else:
            continue
        at_risk = True
        findings.append(
            Finding(
                "critical_dependency_late",
                d.id,
                f"{after.title!r} waits on {before.title!r}, which {why}",
            )
        )

    soon: list[Finding] = []
    for item in items:
        if item.due is None:
            continue
        late_by = (today - item.due).days
        if late_by > 0:
            if late_by >= STALLED_OVERDUE_DAYS:
                stalled = True
            else:
                at_risk = True
            findings.append(
                Finding(
                    "overdue",
                    item.id,
                    f"{item.title!r} is {_days(late_by)} overdue (due {_day(item.due)})",
                )
            )
        elif -late_by <= DUE_SOON_DAYS:
            when = "today" if late_by == 0 else f"in {_days(-late_by)}"
            soon.append(
                Finding("due_soon", item.id, f"{item.title!r} is due {when} ({_day(item.due)})")
            )
    findings += soon

    # -- history: slips
    total_slip = 0
    for mid in plan.milestone_order:
        m = plan.milestones[mid]
        slipped = sum((s.to_due - s.from_due).days for s in m.slips if s.from_due is not None)
        if slipped > 0:
            total_slip += slipped
            first = _planned_due(m)
            findings.append(
                Finding(
                    "slipped",
                    m.id,
                    f"{m.title!r} slipped {len(m.slips)} time{'s' if len(m.slips) != 1 else ''}, "
                    f"{_days(slipped)} in total"
                    + (f" (from {_day(first)} to {_day(m.due)})" if first and m.due else ""),
                )
            )

    # -- shape: owners, definitions of done, size, both sides, key people, cadence
    def owner_side(item: Scheduled) -> Side | None:
        s = plan.stakeholders.get(item.owner) if item.owner is not None else None
        return s.side if s is not None and s.active else None

    for item in items:
        if owner_side(item) is None:
            findings.append(Finding("no_owner", item.id, f"{item.title!r} has no owner"))
        if isinstance(item, Milestone) and not item.outcome:
            findings.append(
                Finding(
                    "no_definition_of_done",
                    item.id,
                    f"{item.title!r} has no outcome: say what done looks like",
                )
            )
    low, high = HEALTHY_MILESTONES
    if not low <= len(plan.milestones) <= high:
        findings.append(
            Finding(
                "milestone_count",
                "plan",
                f"the plan has {len(plan.milestones)} milestones; {low} to {high} is healthy",
            )
        )
    sides = {owner_side(i) for i in items} - {None}
    if sides:
        for side in ("buyer", "seller"):
            if side not in sides:
                findings.append(
                    Finding(
                        "one_sided",
                        "plan",
                        f"no open item is owned by the {side} side: a mutual plan needs "
                        "commitments from both sides",
                    )
                )
    for code, persona in (
        ("missing_economic_buyer", "economic buyer"),
        ("missing_champion", "champion"),
    ):
        if not _has_persona(plan, persona):
            findings.append(
                Finding(code, "plan", f"no {persona} among the buyer-side stakeholders")
            )
    review = plan.cadence.next_review if plan.cadence is not None else None
    if review is None:
        findings.append(
            Finding("no_next_review", "plan", "no next review date: set the cadence's next review")
        )
    elif review < today:
        findings.append(
            Finding(
                "no_next_review",
                "plan",
                f"the next review date ({_day(review)}) has passed: set the next one",
            )
        )

    status: Status = "stalled" if stalled else "at_risk" if at_risk else "on_track"
    return Health(status, findings, critical_path, slack, projected, total_slip, today)
