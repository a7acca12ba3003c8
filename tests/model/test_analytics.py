"""Portfolio analytics (GET /analytics): a small portfolio built through the service, its
figures computed by hand, the projection rebuilt from zero, and who may read it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec

from domain import action_items as ai
from domain import endorsements as en
from domain import members as mem
from domain import milestones as ms
from domain import plans as pl
from domain import stakeholders as sh
from domain.decider import PlanCommand
from projections.analytics import figures
from server.plans import PlanService
from server.store import Store
from server.tools import projection_runners
from tests.support import auth, running_app, settings_for

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
D0 = T0.date()
SELLER = "sally@seller.example"  # seller-side owner of every plan of the portfolio
BUYER = "bert@buyer.example"  # buyer-side editor and champion of every plan
ADMIN = "root@mapstream.example"
STRANGER = "eve@elsewhere.example"


def day(n: int) -> date:
    return D0 + timedelta(days=n)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, days: int) -> None:
        self.now = T0 + timedelta(days=days)


async def _build(service: PlanService, clock: Clock, org: str) -> dict[str, str]:
    """Four plans of `org`: A won with an endorsement, B lost without one, C open and
    stalled, D a fresh draft (created at the real time)."""
    ids = {name: f"an-{name.lower()}-{uuid.uuid4().hex[:8]}" for name in "ABCD"}

    async def run(plan: str, *steps: tuple[int, str, PlanCommand]) -> None:
        for days, actor, command in steps:
            clock.at(days)
            await service.handle(ids[plan], command, actor)

    def start(plan: str) -> list[tuple[int, str, PlanCommand]]:
        return [
            (
                0,
                SELLER,
                pl.CreatePlan(
                    title=f"Plan {plan}", buyer_org="Acme", seller_org=org, side="seller"
                ),
            ),
            (0, SELLER, mem.AddMember(email=BUYER, side="buyer", role="editor")),
            (
                0,
                SELLER,
                sh.AddStakeholder(
                    id="champ", name="Bert", side="buyer", persona="champion", email=BUYER
                ),
            ),
            (0, SELLER, sh.AddStakeholder(id="sid", name="Sid", side="seller")),
        ]

    # A: "Security Review" (buyer) slips 5 days and is done on time; "Legal review" (seller)
    # is done late; a seller-internal action item is done on time. Endorsed, won after 20 days.
    await run(
        "A",
        *start("A"),
        (0, SELLER, ms.AddMilestone(id="m1", title="Security Review", owner="champ", due=day(10))),
        (0, SELLER, ms.AddMilestone(id="m2", title="Legal review", owner="sid", due=day(5))),
        (
            0,
            SELLER,
            ai.AddActionItem(
                id="a1",
                milestone_id="m1",
                title="Price floor (secret)",
                owner="sid",
                due=day(20),
                visibility="internal",
            ),
        ),
        (0, SELLER, pl.ActivatePlan()),
        (1, BUYER, en.EndorsePlan(version=1)),
        (9, SELLER, ms.RescheduleMilestone(id="m1", due=day(15), reason="SOC 2 report late")),
        (14, BUYER, ms.CompleteMilestone(id="m1")),
        (14, SELLER, ms.CompleteMilestone(id="m2")),
        (14, SELLER, ai.SetActionItemStatus(id="a1", status="done")),
        (20, SELLER, pl.ClosePlan(outcome="won", reason="signed")),
    )
    # B: " security  review" (seller) slips twice, 3 + 3 days; a buyer action item is done
    # late. Lost after 30 days.
    await run(
        "B",
        *start("B"),
        (0, SELLER, ms.AddMilestone(id="m1", title=" security  review", owner="sid", due=day(10))),
        (
            0,
            SELLER,
            ai.AddActionItem(
                id="a1", milestone_id="m1", title="Send DPA", owner="champ", due=day(3)
            ),
        ),
        (0, SELLER, pl.ActivatePlan()),
        (5, SELLER, ms.RescheduleMilestone(id="m1", due=day(13), reason="scope")),
        (6, SELLER, ms.RescheduleMilestone(id="m1", due=day(16), reason="holidays")),
        (14, BUYER, ai.SetActionItemStatus(id="a1", status="done")),
        (30, SELLER, pl.ClosePlan(outcome="lost", reason="budget cut")),
    )
    # C: active, its kickoff long overdue and no buyer activity: stalled at any later date.
    await run(
        "C",
        *start("C"),
        (0, SELLER, ms.AddMilestone(id="m1", title="Kickoff", owner="sid", due=day(2))),
        (0, SELLER, pl.ActivatePlan()),
    )
    # D: a draft created just now, nothing in it: not stalled.
    await PlanService(service.store).handle(ids["D"], start("D")[0][2], SELLER)
    return ids


EXPECTED: dict[str, Any] = {
    "plans": 4,
    "endorsed": {"plans": 1, "won": 1, "lost": 0, "win_rate": 1.0, "median_days_to_close": 20.0},
    "not_endorsed": {
        "plans": 3,
        "won": 0,
        "lost": 1,
        "win_rate": 0.0,
        "median_days_to_close": 30.0,
    },
    "on_time": {
        "buyer": {"completed": 2, "on_time": 1, "rate": 0.5},
        "seller": {"completed": 2, "on_time": 1, "rate": 0.5},
    },
    "milestone_slips": [
        {
            "type": "kickoff",
            "milestones": 1,
            "slipped": 0,
            "slips": 0,
            "slip_days": 0,
            "mean_slip_days": 0.0,
        },
        {
            "type": "legal review",
            "milestones": 1,
            "slipped": 0,
            "slips": 0,
            "slip_days": 0,
            "mean_slip_days": 0.0,
        },
        {
            "type": "security review",
            "milestones": 2,
            "slipped": 2,
            "slips": 3,
            "slip_days": 11,
            "mean_slip_days": 5.5,
        },
    ],
}


async def _caught_up(store: Store) -> None:
    """Wait until the server's analytics runner has applied the whole log."""
    table = store.analytics_table()
    async with asyncio.timeout(15):
        while await table.checkpoint() < await store.log_head():
            await asyncio.sleep(0.05)


def _figures_only(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "as_of"}


async def test_figures_rebuild_and_access(
    http: httpx.AsyncClient, store: Store, database_url: str, tmp_path: Path
) -> None:
    org = f"Seller {uuid.uuid4().hex[:8]}"
    clock = Clock()
    service = PlanService(store, clock=clock)
    ids = await _build(service, clock, org)
    await _caught_up(store)

    # the figures, computed by hand
    answer = await http.get("/analytics", params={"seller_org": org}, headers=auth(SELLER))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["seller_org"] == org
    assert {k: body[k] for k in EXPECTED} == EXPECTED
    assert body["stalled"] == {"count": 1, "plan_ids": [ids["C"]]}
    assert "secret" not in answer.text.lower()  # counts only, never an item's text

    # each stored row is the figures of the plan's current state
    rows = {r.plan_id: r for r in await store.read_analytics(org)}
    assert set(rows) == set(ids.values())
    for plan_id in ids.values():
        assert rows[plan_id] == figures(await service.current(plan_id))

    # rebuilt from position 0, the read model equals the live one
    await projection_runners(store, service)["analytics"].rebuild()
    rebuilt = {r.plan_id: r for r in await store.read_analytics(org)}
    assert msgspec.json.encode(sorted(rebuilt.items())) == msgspec.json.encode(sorted(rows.items()))
    again = await http.get("/analytics", params={"seller_org": org}, headers=auth(SELLER))
    assert _figures_only(again.json()) == _figures_only(body)

    # who may read it: the seller-side members and admins; not the buyer, not strangers
    for who in (BUYER, STRANGER):
        denied = await http.get("/analytics", params={"seller_org": org}, headers=auth(who))
        assert denied.status_code == 403, who
        assert denied.json()["error"]["code"] == "forbidden"
    unknown = await http.get("/analytics", params={"seller_org": "nobody"}, headers=auth(SELLER))
    assert unknown.status_code == 403
    assert (await http.get("/analytics", params={"seller_org": org})).status_code == 401
    missing = await http.get("/analytics", headers=auth(SELLER))
    assert missing.status_code == 400
    async with (
        running_app(settings_for(database_url, tmp_path, admins=frozenset({ADMIN}))) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as admin_http,
    ):
        as_admin = await admin_http.get(
            "/analytics", params={"seller_org": org}, headers=auth(ADMIN)
        )
        assert as_admin.status_code == 200, as_admin.text
        assert _figures_only(as_admin.json()) == _figures_only(body)
        as_buyer = await admin_http.get(
            "/analytics", params={"seller_org": org}, headers=auth(BUYER)
        )
        assert as_buyer.status_code == 403
