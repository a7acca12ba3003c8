"""Hypothesis laws over the real store: stored state is the fold; refusals change nothing."""

from __future__ import annotations

import uuid
from datetime import date

import asyncpg
import msgspec
from hypothesis import given
from hypothesis import strategies as st

from domain import comments as co
from domain import dependencies as dep
from domain import milestones as ms
from domain import plans as pl
from domain import stakeholders as sh
from domain.decider import PlanCommand
from domain.errors import MapstreamError
from domain.model import Plan
from projections.plan_state import rebuild
from server.plans import PlanService, recorded
from server.store import Store

OWNER = "owner@seller.example"
IDS = ["a", "b", "c", "d"]
PEOPLE = ["p1", "p2"]
dates = st.dates(min_value=date(2026, 1, 1), max_value=date(2027, 12, 31))

commands: st.SearchStrategy[PlanCommand] = st.one_of(
    st.builds(
        ms.AddMilestone,
        id=st.sampled_from(IDS),
        title=st.sampled_from(["Kickoff", "", "Sign"]),
        owner=st.sampled_from([None, *PEOPLE]),
        due=st.none() | dates,
    ),
    st.builds(
        ms.RescheduleMilestone,
        id=st.sampled_from(IDS),
        due=dates,
        reason=st.sampled_from(["slip", " "]),
    ),
    st.builds(ms.CompleteMilestone, id=st.sampled_from(IDS)),
    st.builds(
        sh.AddStakeholder,
        id=st.sampled_from(PEOPLE),
        name=st.just("Pat"),
        side=st.sampled_from(["buyer", "seller"]),
    ),
    st.builds(
        dep.AddDependency,
        id=st.sampled_from(["d1", "d2", "d3"]),
        from_id=st.sampled_from(IDS),
        to_id=st.sampled_from(IDS),
    ),
    st.builds(
        co.AddComment,
        id=st.uuids().map(lambda u: u.hex[:8]),
        item_id=st.sampled_from([*IDS, "plan"]),
        text=st.just("hi"),
    ),
    st.builds(pl.ClosePlan, outcome=st.sampled_from(["won", "lost"]), reason=st.just("done")),
)


async def _scenario(url: str, cmds: list[PlanCommand], expected: list[int | None]) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = Store(pool)
        service = PlanService(store)
        plan_id = f"h{uuid.uuid4().hex[:12]}"
        await service.handle(
            plan_id, pl.CreatePlan(title="T", buyer_org="B", seller_org="S", side="seller"), OWNER
        )
        for cmd, exp in zip(cmds, expected, strict=True):
            before = await store.load_plan(plan_id)
            assert before is not None
            try:
                await service.handle(
                    plan_id, cmd, OWNER, expected_version=exp, command_id=uuid.uuid4().hex
                )
            except MapstreamError:
                after = await store.load_plan(plan_id)
                assert after == before, "a refused command changed the stored plan"
                continue
            row = await store.load_plan(plan_id)
            assert row is not None
            events = await store.read_stream(plan_id)
            assert [e.version for e in events] == list(range(1, row.version + 1))
            cached = msgspec.json.decode(row.state, type=Plan)
            assert cached == rebuild(plan_id, (recorded(e) for e in events[: row.state_version]))
            current = await PlanService(store).current(plan_id)
            assert current == rebuild(plan_id, (recorded(e) for e in events))
    finally:
        await pool.close()


@given(
    cmds=st.lists(commands, min_size=1, max_size=12),
    stale=st.lists(st.booleans(), min_size=12, max_size=12),
)
async def test_stored_state_is_the_fold_and_refusals_change_nothing(database_url: str, cmds, stale):
    # every third-ish command names an expected_version that may be stale
    expected: list[int | None] = [
        1 if s and n % 3 == 0 else None for n, s in enumerate(stale[: len(cmds)])
    ]
    await _scenario(database_url, cmds, expected)
