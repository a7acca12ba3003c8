"""Exports: the one-page plan (Markdown), the items table (CSV) and the calendar (iCalendar).

Every renderer is pure and takes the plan *as the reader's side sees it*
(`domain.visibility.view_for`), so the other side's internal items never appear.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, datetime, timedelta

import icalendar

from domain.model import ActionItem, Milestone, Plan

CSV_COLUMNS = (
    "kind",
    "id",
    "milestone",
    "title",
    "owner",
    "owner_side",
    "due",
    "status",
    "deadline",
    "slips",
    "visibility",
)

_STATUS = {
    "not_started": "not started",
    "in_progress": "in progress",
    "blocked": "blocked",
    "done": "done",
}


def _items(plan: Plan) -> Iterator[Milestone | ActionItem]:
    """Milestones in plan order, each followed by its action items; strays at the end."""
    by_milestone: dict[str, list[ActionItem]] = {}
    for a in plan.action_items.values():
        by_milestone.setdefault(a.milestone_id, []).append(a)
    for mid in plan.milestone_order:
        m = plan.milestones.get(mid)
        if m is None:
            continue
        yield m
        yield from by_milestone.pop(mid, [])
    for rest in by_milestone.values():
        yield from rest


def _owner(plan: Plan, who: str | None) -> str:
    if who is None:
        return ""
    s = plan.stakeholders.get(who)
    return s.name if s is not None else who


def _owner_side(plan: Plan, who: str | None) -> str:
    s = plan.stakeholders.get(who) if who is not None else None
    return s.side if s is not None else ""


def _day(d: date | None) -> str:
    return d.isoformat() if d is not None else ""


# -- Markdown ----------------------------------------------------------------------------------


def _md(text: str) -> str:
    """One line of user text, safe inside a Markdown table cell or list item."""
    text = " ".join(text.split())
    for ch in "\\|*_`[]<>#":
        text = text.replace(ch, "\\" + ch)
    return text


def markdown(plan: Plan) -> str:
    """The one page a champion forwards to the CFO."""
    out = [f"# {_md(plan.title) or 'Mutual action plan'}", ""]
    out.append(f"**Buyer:** {_md(plan.buyer_org)} · **Seller:** {_md(plan.seller_org)}")
    out.append("")
    out.append(f"Status: {plan.status.replace('_', ' ')} · version {plan.version}")
    out.append("")
    if plan.value_statement:
        out += ["## Why", "", _md(plan.value_statement), ""]
    if plan.compelling_event is not None:
        ce = plan.compelling_event
        out += ["## Compelling event", "", f"{_md(ce.name)}: {_day(ce.date)}", ""]
    if plan.objectives:
        out += ["## Objectives", ""]
        for o in plan.objectives.values():
            line = f"- {_md(o.title)}"
            measure = " ".join(
                part
                for part in (
                    _md(o.metric),
                    f"from {_md(o.baseline)}" if o.baseline else "",
                    f"to {_md(o.target)}" if o.target else "",
                    f"by {_day(o.by)}" if o.by else "",
                )
                if part
            )
            out.append(f"{line}: {measure}" if measure else line)
        out.append("")
    out += ["## Milestones", ""]
    milestones = [plan.milestones[m] for m in plan.milestone_order if m in plan.milestones]
    if milestones:
        out += ["| # | Milestone | Owner | Due | Status |", "|---|---|---|---|---|"]
        for n, m in enumerate(milestones, 1):
            due = _day(m.due) + (" (hard)" if m.deadline == "hard" and m.due else "")
            out.append(
                f"| {n} | {_md(m.title)} | {_md(_owner(plan, m.owner)) or '—'} "
                f"| {due or '—'} | {_STATUS[m.status]} |"
            )
    else:
        out.append("No milestones yet.")
    out.append("")
    risks = [r for r in plan.risks.values() if r.status == "open"]
    out += ["## Open risks", ""]
    if risks:
        for r in risks:
            line = f"- {_md(r.title)} (likelihood {r.likelihood}, impact {r.impact})"
            if r.owner:
                line += f", owner {_md(_owner(plan, r.owner))}"
            if r.mitigation:
                line += f": {_md(r.mitigation)}"
            out.append(line)
    else:
        out.append("None.")
    out.append("")
    review = plan.cadence.next_review if plan.cadence is not None else None
    out += ["## Next review", "", _day(review) or "Not scheduled.", ""]
    return "\n".join(out)


# -- CSV ---------------------------------------------------------------------------------------

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    """User text that a spreadsheet will not run as a formula (CSV injection). Text that
    starts with `'` gets one more, so import (`projections.imports.uncell`) drops exactly one."""
    return "'" + text if text.startswith((*_FORMULA_STARTS, "'")) else text


def csv_table(plan: Plan) -> str:
    """One row per milestone and action item, milestones in order, each followed by its items."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for item in _items(plan):
        if isinstance(item, Milestone):
            row = {
                "kind": "milestone",
                "milestone": item.id,
                "deadline": item.deadline,
                "visibility": "shared",
            }
        else:
            row = {
                "kind": "action_item",
                "milestone": item.milestone_id,
                "deadline": "",
                "visibility": item.visibility,
            }
        row.update(
            id=item.id,
            title=item.title,
            owner=_owner(plan, item.owner),
            owner_side=_owner_side(plan, item.owner),
            due=_day(item.due),
            status=item.status,
            slips=str(len(item.slips)),
        )
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


# -- iCalendar ---------------------------------------------------------------------------------


def _event(uid: str, day: date, summary: str, description: str, stamp: datetime) -> icalendar.Event:
    event = icalendar.Event()
    event.add("uid", uid)
    event.add("dtstamp", stamp)
    event.add("dtstart", day)  # a date: an all-day event (VALUE=DATE)
    event.add("dtend", day + timedelta(days=1))
    event.add("summary", summary)
    if description:
        event.add("description", description)
    event.add("transp", "TRANSPARENT")
    return event


def calendar(plan: Plan, stamp: datetime) -> bytes:
    """Due dates of milestones and action items, and the next review, as all-day events."""
    cal = icalendar.Calendar()
    cal.add("prodid", "-//Mapstream//Mutual action plan//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", plan.title or plan.id)
    for item in _items(plan):
        if item.due is None:
            continue
        kind = "Milestone" if isinstance(item, Milestone) else "Action item"
        owner = _owner(plan, item.owner)
        details = [f"{kind} of {plan.title}", f"Status: {_STATUS[item.status]}"]
        if owner:
            details.append(f"Owner: {owner}")
        cal.add_component(
            _event(
                f"{plan.id}.{item.id}@mapstream",
                item.due,
                f"{kind} due: {item.title}",
                "\n".join(details),
                stamp,
            )
        )
    c = plan.cadence
    if c is not None and c.next_review is not None:
        cal.add_component(
            _event(
                f"{plan.id}.next-review@mapstream",
                c.next_review,
                f"Plan review: {plan.title}",
                " ".join(p for p in (c.kind, c.channel) if p),
                stamp,
            )
        )
    return bytes(cal.to_ical())
