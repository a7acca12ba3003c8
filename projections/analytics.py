"""Portfolio analytics: one summary row per plan, kept up to date from the global log.

The asynchronous projection (run like the audit trail, see projections/runner.py) folds each
plan and writes its `PlanFigures` (table analytics_plans, keyed by plan_id) with the
checkpoint in the same transaction. `GET /analytics?seller_org=NAME` then only reads the rows
of one seller organisation and aggregates them with `portfolio`: no events are read per
request. Only counts, rates and day figures leave here, never an item's text; the one text
that does is the normalised title of milestones (milestones are always shared by both sides).

Definitions (also in the README, "The plan model"):

- win rate: closed won / closed (won + lost), split by whether the plan has a buyer
  endorsement (only buyer decision makers or the champion can endorse);
- days to close: created_at -> closed_at in days, the median over closed plans;
- on-time rate by side: of the milestones and action items that are done and have a due
  date, those completed on or before that date (UTC), by the side of the owner stakeholder
  (unowned items are not counted);
- slip days by milestone type: milestones have no `kind`, so the type is the title
  normalised (lower case, single spaces): the sum of the days each slip moved the due date;
- stalled now: open plans whose `projections.health.health` status is `stalled` at the time
  of the request, computed from the plan state stored in the row.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import msgspec

from domain.decider import evolve
from domain.model import ActionItem, Milestone, Plan
from projections.health import health
from projections.runner import LogEvent
from projections.states import Loader, PlanStates, recorded_of

log = logging.getLogger(__name__)


class OnTime(msgspec.Struct, frozen=True):
    """Done items with a due date of one side, and how many were done by that date."""

    completed: int = 0
    on_time: int = 0


class MilestoneSlips(msgspec.Struct, frozen=True):
    type: str  # the milestone title, normalised
    slips: int
    slip_days: int


class PlanFigures(msgspec.Struct, frozen=True):
    """One plan's contribution to its seller organisation's analytics (a read-model row)."""

    plan_id: str
    version: int
    seller_org: str
    status: str
    endorsed: bool
    created_at: datetime | None
    closed_at: datetime | None
    seller_members: list[str]  # active seller-side members: who may read the org's analytics
    on_time: dict[str, OnTime]  # by owner side
    milestones: list[MilestoneSlips]
    state: str = ""  # the open plan's state (JSON) for `health`; "" when closed


def milestone_type(title: str) -> str:
    return " ".join(title.lower().split())


def _health_state(plan: Plan) -> Plan:
    """What `health` reads of a plan: comments and meeting notes are dropped."""
    return msgspec.structs.replace(plan, comments={}, status_updates=())


_encode = msgspec.json.Encoder().encode
_decode_plan = msgspec.json.Decoder(Plan).decode


def figures(plan: Plan) -> PlanFigures:
    on_time: dict[str, list[int]] = {"buyer": [0, 0], "seller": [0, 0]}
    items: list[Milestone | ActionItem] = [*plan.milestones.values(), *plan.action_items.values()]
    for item in items:
        if item.status != "done" or item.completed_at is None or item.due is None:
            continue
        owner = plan.stakeholders.get(item.owner) if item.owner is not None else None
        if owner is None:
            continue
        counts = on_time[owner.side]
        counts[0] += 1
        if item.completed_at.astimezone(UTC).date() <= item.due:
            counts[1] += 1
    milestones = [
        MilestoneSlips(
            type=milestone_type(m.title),
            slips=len(m.slips),
            slip_days=sum((s.to_due - s.from_due).days for s in m.slips if s.from_due is not None),
        )
        for m in (plan.milestones[mid] for mid in plan.milestone_order if mid in plan.milestones)
    ]
    return PlanFigures(
        plan_id=plan.id,
        version=plan.version,
        seller_org=plan.seller_org,
        status=plan.status,
        endorsed=bool(plan.endorsements),
        created_at=plan.created_at,
        closed_at=plan.closed_at,
        seller_members=sorted(
            m.email for m in plan.members.values() if m.active and m.side == "seller"
        ),
        on_time={side: OnTime(c, k) for side, (c, k) in on_time.items()},
        milestones=milestones,
        state="" if plan.is_closed else _encode(_health_state(plan)).decode(),
    )


class AnalyticsProjection:
    """Log events -> the latest `PlanFigures` of each plan touched by the batch."""

    def __init__(self, load: Loader, capacity: int = 1024) -> None:
        self.states = PlanStates(load, capacity)

    async def project(self, events: Sequence[LogEvent]) -> list[PlanFigures]:
        latest: dict[str, Plan] = {}
        for e in events:
            try:
                before = await self.states.before(e)
            except Exception as exc:
                log.warning("analytics: no state for %s v%s (%s)", e.plan_id, e.version - 1, exc)
                before = Plan(id=e.plan_id, version=e.version - 1)
            try:
                after = evolve(before, recorded_of(e))
            except Exception as exc:  # an event this code cannot read: the figures stay
                log.warning("analytics: cannot apply %s v%s (%s)", e.plan_id, e.version, exc)
                after = msgspec.structs.replace(before, version=e.version)
            self.states.advance(after)
            latest[e.plan_id] = after
            await asyncio.sleep(0)  # a batch is CPU work: let the sockets of this process run
        return [figures(p) for p in latest.values() if p.created_at is not None]

    def reset(self) -> None:
        self.states.reset()


# -- the aggregate (what GET /analytics returns) ---------------------------------------------


class CloseFigures(msgspec.Struct, frozen=True):
    plans: int
    won: int
    lost: int
    win_rate: float | None  # won / (won + lost); None when none is closed
    median_days_to_close: float | None  # created_at -> closed_at, closed plans


class SideFigures(msgspec.Struct, frozen=True):
    completed: int  # done items with a due date, owned by this side
    on_time: int  # of those, done on or before the due date
    rate: float | None


class SlipFigures(msgspec.Struct, frozen=True):
    type: str
    milestones: int
    slipped: int  # milestones of this type that slipped at least once
    slips: int
    slip_days: int
    mean_slip_days: float  # slip_days / milestones


class Stalled(msgspec.Struct, frozen=True):
    count: int
    plan_ids: list[str]


class Analytics(msgspec.Struct, frozen=True):
    seller_org: str
    as_of: datetime
    plans: int
    endorsed: CloseFigures
    not_endorsed: CloseFigures
    on_time: dict[str, SideFigures]
    milestone_slips: list[SlipFigures]
    stalled: Stalled


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _close(rows: list[PlanFigures]) -> CloseFigures:
    won = sum(r.status == "closed_won" for r in rows)
    lost = sum(r.status == "closed_lost" for r in rows)
    days = [
        (r.closed_at - r.created_at).total_seconds() / 86400
        for r in rows
        if r.closed_at is not None and r.created_at is not None
    ]
    median = round(statistics.median(days), 2) if days else None
    return CloseFigures(len(rows), won, lost, _rate(won, won + lost), median)


def portfolio(seller_org: str, rows: Iterable[PlanFigures], now: datetime) -> Analytics:
    rows = sorted(rows, key=lambda r: r.plan_id)
    sides = {}
    for side in ("buyer", "seller"):
        completed = sum(r.on_time[side].completed for r in rows if side in r.on_time)
        on_time = sum(r.on_time[side].on_time for r in rows if side in r.on_time)
        sides[side] = SideFigures(completed, on_time, _rate(on_time, completed))
    by_type: dict[str, list[MilestoneSlips]] = {}
    for r in rows:
        for m in r.milestones:
            by_type.setdefault(m.type, []).append(m)
    slips = [
        SlipFigures(
            type=t,
            milestones=len(ms),
            slipped=sum(m.slips > 0 for m in ms),
            slips=sum(m.slips for m in ms),
            slip_days=sum(m.slip_days for m in ms),
            mean_slip_days=round(sum(m.slip_days for m in ms) / len(ms), 2),
        )
        for t, ms in sorted(by_type.items())
    ]
    stalled = [
        r.plan_id
        for r in rows
        if r.state and health(_decode_plan(r.state), now).status == "stalled"
    ]
    return Analytics(
        seller_org=seller_org,
        as_of=now,
        plans=len(rows),
        endorsed=_close([r for r in rows if r.endorsed]),
        not_endorsed=_close([r for r in rows if not r.endorsed]),
        on_time=sides,
        milestone_slips=slips,
        stalled=Stalled(len(stalled), stalled),
    )
