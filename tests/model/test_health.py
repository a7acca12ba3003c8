"""Plan health, table-driven: each finding and each status, with a fixed `now`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import httpx
import pytest

from domain.action_items import ActionItemAdded, ActionItemStatusChanged
from domain.cadence import CadenceSet
from domain.comments import CommentAdded
from domain.dependencies import DependencyAdded
from domain.milestones import MilestoneAdded, MilestoneCompleted, MilestoneRescheduled
from domain.model import Plan
from domain.plans import CompellingEventSet, PlanActivated
from domain.stakeholders import StakeholderAdded, StakeholderRemoved, StakeholderUpdated
from domain.visibility import view_for
from projections.health import health
from tests.domain.support import EDITOR, NOW, PLAN, History, closed, given
from tests.support import auth

TODAY = NOW.date()  # Monday 3 March 2025
SOON = NOW + timedelta(hours=6)  # "now" in most cases: the same day
CE = TODAY + timedelta(days=88)  # Friday 30 May 2025


def day(n: int) -> date:
    return TODAY + timedelta(days=n)


def at(days: float) -> datetime:
    return NOW + timedelta(days=days)


def ms(i: int, due: date | None = None, **fields: object) -> MilestoneAdded:
    """Milestone `m{i}`, owned alternately by Ana (buyer) and Sid (seller), with an outcome."""
    values: dict[str, object] = {
        "title": f"Milestone {i}",
        "outcome": "signed off by both sides",
        "owner": "ana" if i % 2 else "sid",
        "due": due if due is not None else day(10 + 7 * i),
        **fields,
    }
    return MilestoneAdded(id=f"m{i}", **values)  # type: ignore[arg-type]


CARL = StakeholderAdded(
    id="carl", name="Carl", side="buyer", persona="economic buyer", influence="decision_maker"
)


def healthy(*extra: History, milestones: int = 8, active: bool = True) -> tuple[History, ...]:
    """An active plan with nothing to report: 8 owned milestones with outcomes due well before
    the compelling event, both sides committed, the key people, a next review, and the buyer
    active today. `extra` events come after it."""
    return (
        *PLAN,
        CARL,
        CompellingEventSet(name="Go-live", date=CE),
        *(ms(i) for i in range(1, milestones + 1)),
        CadenceSet(kind="weekly operational", reporter="sid", next_review=day(14)),
        *((PlanActivated(),) if active else ()),
        (EDITOR, CommentAdded(id="hello", item_id="plan", text="Looks good")),
        *extra,
    )


@dataclass(frozen=True)
class Case:
    name: str
    history: tuple[History, ...]
    status: str
    findings: set[tuple[str, str]]
    now: datetime = SOON


CASES = [
    Case("a healthy plan is on track with nothing to say", healthy(), "on_track", set()),
    Case(
        "an item 1 to 6 days overdue puts the plan at risk",
        healthy(ms(9, day(-3))),
        "at_risk",
        {("overdue", "m9")},
    ),
    Case(
        "an item 7 days overdue stalls the plan",
        healthy(ms(9, day(-7))),
        "stalled",
        {("overdue", "m9")},
    ),
    Case(
        "a done item is never overdue",
        healthy(ms(9, day(-7)), MilestoneCompleted(id="m9")),
        "on_track",
        set(),
    ),
    Case(
        "an action item due within a week is due soon, the plan on track",
        healthy(ActionItemAdded(id="a1", milestone_id="m1", title="Send", owner="ana", due=day(7))),
        "on_track",
        {("due_soon", "a1")},
    ),
    Case(
        "an item due today is due soon, not overdue",
        healthy(ms(9, day(0))),
        "on_track",
        {("due_soon", "m9")},
    ),
    Case(
        "no buyer activity for 5 days stalls an active plan",
        healthy(),
        "stalled",
        {("stale", "plan")},
        now=at(5),
    ),
    Case(
        "seller activity does not count as the buyer's",
        healthy(CommentAdded(id="c2", item_id="plan", text="Any news?")),
        "stalled",
        {("stale", "plan")},
        now=at(6),
    ),
    Case(
        "a draft plan is never stale",
        healthy(active=False),
        "on_track",
        set(),
        now=at(6),
    ),
    Case(
        "a slipped milestone is reported with its total slip",
        healthy(
            MilestoneRescheduled(id="m2", from_due=day(24), to_due=day(28), reason="CISO away"),
            MilestoneRescheduled(id="m2", from_due=day(28), to_due=day(30), reason="again"),
        ),
        "on_track",
        {("slipped", "m2")},
    ),
    Case(
        "a critical prerequisite projected to finish after what waits on it is late",
        healthy(
            DependencyAdded(id="d1", from_id="m1", to_id="m2", critical=True),
            MilestoneRescheduled(id="m1", from_due=day(17), to_due=day(27), reason="no data"),
        ),
        "at_risk",
        {("critical_dependency_late", "d1"), ("slipped", "m1")},
    ),
    Case(
        "a critical prerequisite that is overdue is late",
        healthy(ms(9, day(-1)), DependencyAdded(id="d1", from_id="m9", to_id="m2", critical=True)),
        "at_risk",
        {("critical_dependency_late", "d1"), ("overdue", "m9")},
    ),
    Case(
        "a late prerequisite that is not critical is no alarm",
        healthy(
            DependencyAdded(id="d1", from_id="m1", to_id="m2"),
            MilestoneRescheduled(id="m1", from_due=day(17), to_due=day(27), reason="no data"),
        ),
        "on_track",
        {("slipped", "m1")},
    ),
    Case(
        "a slip past the compelling event makes the slack negative",
        healthy(
            MilestoneRescheduled(
                id="m8", from_due=day(66), to_due=CE + timedelta(days=3), reason="budget"
            )
        ),
        "at_risk",
        {("negative_slack", "m8"), ("slipped", "m8")},
    ),
    Case(
        "a follow-up planned after the compelling event does not eat the slack",
        healthy(ms(9, CE + timedelta(days=20))),
        "on_track",
        set(),
    ),
    Case(
        "a prerequisite pushing an item past the compelling event makes the slack negative",
        healthy(
            ms(9, CE + timedelta(days=20)),
            DependencyAdded(id="d1", from_id="m9", to_id="m8"),
        ),
        "at_risk",
        {("negative_slack", "m8")},
    ),
    Case(
        "a plan without a compelling event has nothing to work back from",
        (*healthy()[: len(PLAN) + 1], *healthy()[len(PLAN) + 2 :]),
        "on_track",
        {("no_compelling_event", "plan")},
    ),
    Case(
        "open milestones and action items without an owner",
        healthy(
            ms(9, owner=None),
            ActionItemAdded(id="a1", milestone_id="m1", title="Send", due=day(20)),
        ),
        "on_track",
        {("no_owner", "m9"), ("no_owner", "a1")},
    ),
    Case(
        "a done item without an owner is no finding",
        healthy(
            ActionItemAdded(id="a1", milestone_id="m1", title="Send", due=day(20)),
            ActionItemStatusChanged(id="a1", status="done", previous="not_started"),
        ),
        "on_track",
        set(),
    ),
    Case(
        "a milestone without an outcome has no definition of done",
        healthy(ms(9, outcome="")),
        "on_track",
        {("no_definition_of_done", "m9")},
    ),
    Case(
        "fewer than 8 milestones is outside the healthy range",
        healthy(milestones=7),
        "on_track",
        {("milestone_count", "plan")},
    ),
    Case(
        "12 milestones is still healthy",
        healthy(milestones=12),
        "on_track",
        set(),
    ),
    Case(
        "more than 12 milestones is outside the healthy range",
        healthy(milestones=13),
        "on_track",
        {("milestone_count", "plan")},
    ),
    Case(
        "a plan where only the buyer owns open items is one-sided",
        healthy(*(MilestoneCompleted(id=f"m{i}") for i in (2, 4, 6, 8))),
        "on_track",
        {("one_sided", "plan")},
    ),
    Case(
        "a plan where only the seller owns open items is one-sided",
        healthy(*(MilestoneCompleted(id=f"m{i}") for i in (1, 3, 5, 7))),
        "on_track",
        {("one_sided", "plan")},
    ),
    Case(
        "no economic buyer among the buyer's stakeholders",
        healthy(StakeholderRemoved(id="carl")),
        "on_track",
        {("missing_economic_buyer", "plan")},
    ),
    Case(
        "no champion among the buyer's stakeholders",
        healthy(
            StakeholderUpdated(
                id="ana", changes={"persona": "end user"}, previous={"persona": "champion"}
            )
        ),
        "on_track",
        {("missing_champion", "plan")},
    ),
    Case(
        "a seller-side champion does not count",
        healthy(
            StakeholderUpdated(id="ana", changes={"persona": "end user"}, previous={}),
            StakeholderUpdated(id="sid", changes={"persona": "champion"}, previous={}),
        ),
        "on_track",
        {("missing_champion", "plan")},
    ),
    Case(
        "no next review date",
        healthy(CadenceSet(kind="weekly operational", reporter="sid")),
        "on_track",
        {("no_next_review", "plan")},
    ),
    Case(
        "a next review date that has passed",
        healthy(CadenceSet(kind="weekly operational", next_review=day(-1))),
        "on_track",
        {("no_next_review", "plan")},
    ),
    Case(
        "a closed plan is on track with nothing to watch",
        healthy(ms(9, day(-30), owner=None, outcome=""), closed("won")),
        "on_track",
        set(),
        now=at(30),
    ),
    Case(
        "the worst finding decides: stalled beats at risk",
        healthy(ms(9, day(-2)), ms(10, day(-9))),
        "stalled",
        {("overdue", "m9"), ("overdue", "m10")},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_health(case: Case):
    report = health(given(*case.history), case.now)
    assert report.status == case.status
    assert {(f.code, f.item_id) for f in report.findings} == case.findings
    assert all(f.message for f in report.findings)


def test_the_messages_say_how_late_and_by_how_much():
    plan = given(
        *healthy(
            ms(9, day(-3)),
            MilestoneRescheduled(id="m2", from_due=day(24), to_due=day(31), reason="CISO away"),
        )
    )
    messages = {f.code: f.message for f in health(plan, SOON).findings}
    assert messages["overdue"] == "'Milestone 9' is 3 days overdue (due 28 Feb 2025)"
    assert messages["slipped"] == (
        "'Milestone 2' slipped 1 time, 7 days in total (from 27 Mar 2025 to 3 Apr 2025)"
    )
    assert health(plan, SOON).total_slip_days == 7


def test_the_critical_path_follows_the_prerequisites_that_finish_last():
    plan = given(
        *healthy(
            DependencyAdded(id="d1", from_id="m1", to_id="m3"),
            DependencyAdded(id="d2", from_id="m2", to_id="m3"),
            DependencyAdded(id="d3", from_id="m3", to_id="m8"),
            DependencyAdded(id="d4", from_id="m7", to_id="m8"),
        )
    )
    report = health(plan, SOON)
    # m8 finishes last; of what it waits on, m7 (day 59) finishes after m3 (day 31)
    assert report.critical_path == ["m7", "m8"]
    assert report.projected_finish == day(66)
    assert report.slack_days == (CE - day(66)).days == 22


def test_a_slipped_prerequisite_moves_the_critical_path_and_eats_the_slack():
    plan = given(
        *healthy(
            DependencyAdded(id="d1", from_id="m1", to_id="m3"),
            DependencyAdded(id="d2", from_id="m3", to_id="m8"),
            MilestoneRescheduled(id="m1", from_due=day(17), to_due=day(80), reason="no data"),
        )
    )
    report = health(plan, SOON)
    assert report.critical_path == ["m1", "m3", "m8"]
    assert (report.projected_finish, report.slack_days) == (day(80), 8)


def test_on_equal_finishes_the_longer_chain_is_critical():
    plan = given(
        *healthy(
            ms(9, day(66)),
            DependencyAdded(id="d1", from_id="m2", to_id="m9"),
        )
    )
    assert health(plan, SOON).critical_path == ["m2", "m9"]


def test_an_overdue_item_is_projected_to_finish_today():
    plan = given(*healthy(ms(9, day(-3)), DependencyAdded(id="d1", from_id="m9", to_id="m1")))
    assert health(plan, SOON).critical_path == ["m8"]  # m9 -> m1 finishes long before m8
    assert health(given(*healthy(milestones=0), ms(9, day(-3))), SOON).critical_path == ["m9"]


def test_no_slack_without_a_compelling_event_or_a_dated_open_item():
    undated = given(*healthy(milestones=0))
    report = health(undated, SOON)
    assert (report.critical_path, report.slack_days, report.projected_finish) == ([], None, None)


def test_the_other_sides_internal_items_never_reach_findings():
    secret = ActionItemAdded(
        id="secret",
        milestone_id="m1",
        title="Prepare discount approval",
        due=day(-10),
        visibility="internal",
        internal_to="seller",
    )
    plan = given(*healthy(secret))
    buyer = health(view_for(plan, "buyer"), SOON)
    seller = health(view_for(plan, "seller"), SOON)
    assert "secret" not in {f.item_id for f in buyer.findings} and buyer.status == "on_track"
    assert {("overdue", "secret"), ("no_owner", "secret")} <= {
        (f.code, f.item_id) for f in seller.findings
    }
    assert seller.status == "stalled"


def test_health_is_a_function_of_the_plan_and_now():
    plan: Plan = given(*healthy(ms(9, day(-3))))
    assert health(plan, SOON) == health(plan, SOON)
    assert health(plan, SOON).as_of == TODAY


# -- over HTTP -------------------------------------------------------------------------------


async def test_the_health_route_reports_each_side_its_own_view(http: httpx.AsyncClient):
    seller, buyer = "hal@seller.example", "hana@buyer.example"
    r = await http.post(
        "/plans",
        json={"title": "T", "buyer_org": "B", "seller_org": "S", "side": "seller"},
        headers=auth(seller),
    )
    plan_id = r.json()["plan_id"]

    async def send(type_: str, who: str = seller, **data: object) -> None:
        body = {"type": type_, "command_id": uuid.uuid4().hex, "data": data}
        r = await http.post(f"/plans/{plan_id}/commands", json=body, headers=auth(who))
        assert r.status_code == 200, r.text

    await send("add_member", email=buyer, side="buyer", role="editor")
    await send("add_milestone", id="m1", title="Kickoff")
    await send(
        "add_action_item",
        id="secret",
        milestone_id="m1",
        title="Margin check",
        visibility="internal",
        due="2020-01-01",
    )
    by_buyer = (await http.get(f"/plans/{plan_id}/health", headers=auth(buyer))).json()
    by_seller = (await http.get(f"/plans/{plan_id}/health", headers=auth(seller))).json()
    assert set(by_buyer) >= {
        "plan_id",
        "version",
        "status",
        "findings",
        "critical_path",
        "slack_days",
    }
    assert "secret" not in {f["item_id"] for f in by_buyer["findings"]}
    assert by_buyer["status"] == "on_track"
    assert {"code": "overdue", "item_id": "secret"}.items() <= next(
        f for f in by_seller["findings"] if f["item_id"] == "secret" and f["code"] == "overdue"
    ).items()
    assert by_seller["status"] == "stalled"
    stranger = await http.get(f"/plans/{plan_id}/health", headers=auth("eve@x.example"))
    assert stranger.status_code == 404
