"""The demo plan is a realistic mid-flight deal, and every part of the plan model is in it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from domain.model import Plan
from domain.visibility import view_for
from projections.health import health
from server.demo import BUYER, SELLER, demo_commands
from server.plans import PlanService
from server.store import Store

NOW = datetime(2026, 5, 4, 9, tzinfo=UTC)


async def build(store: Store) -> tuple[str, Plan]:
    service = PlanService(store, clock=lambda: NOW)
    plan_id = f"demo-{uuid.uuid4().hex[:8]}"
    for n, (actor, command) in enumerate(demo_commands(NOW.date())):
        await service.handle(plan_id, command, actor, command_id=f"demo-{n}")
    return plan_id, await service.current(plan_id)


async def test_the_demo_is_a_mid_flight_deal_with_the_whole_model(store: Store):
    _, plan = await build(store)
    assert plan.status == "active" and len(plan.milestones) == 10
    assert sum(m.status == "done" for m in plan.milestones.values()) == 2
    owners = {plan.stakeholders[i.owner].side for i in plan.action_items.values() if i.owner}
    assert owners == {"buyer", "seller"}
    assert [m.id for m in plan.milestones.values() if m.slips] == ["security"]
    assert any(d.critical for d in plan.dependencies.values())
    [endorsement] = plan.endorsements
    assert (endorsement.by, endorsement.stakeholder) == (BUYER, "bianca")
    assert endorsement.version == plan.version - 1  # the plan as it read when she endorsed it
    assert len(plan.objectives) == 2 and len(plan.risks) == 2
    assert plan.cadence is not None and plan.cadence.reporter == "sam"
    assert [u.status for u in plan.status_updates] == ["at_risk"]


async def test_the_versions_the_readme_quotes_are_still_there(store: Store):
    plan_id, _ = await build(store)
    events = await store.read_stream(plan_id, upto=29)
    assert events[23].type == "ActionItemAdded" and events[23].audience == "seller"
    assert (events[27].type, events[28].type) == ("MilestoneRescheduled", "CommentAdded")
    assert events[27].actor == SELLER


async def test_the_demo_reads_at_risk_with_a_critical_path_to_go_live(store: Store):
    _, plan = await build(store)
    report = health(view_for(plan, "buyer"), NOW)
    assert report.status == "at_risk"
    found = {(f.code, f.item_id) for f in report.findings}
    assert ("overdue", "dpq") in found and ("slipped", "security") in found
    assert ("no_definition_of_done", "kickoff") in found
    assert not {c for c, _ in found} & {"one_sided", "missing_champion", "stale", "no_owner"}
    assert report.critical_path[-1] == "go-live" and report.slack_days == 0
