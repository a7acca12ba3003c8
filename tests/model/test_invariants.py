"""Laws of the whole plan model over random *valid* command sequences on real PostgreSQL:
every valid command is accepted, versions stay contiguous, the dependency graph stays a
DAG, owners are stakeholders, the stored plan is the fold of its events, health is
computable on any plan, and any such plan, once won, forks into a plan with the same laws."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from domain import action_items as ai
from domain import cadence as cad
from domain import comments as co
from domain import dependencies as dep
from domain import endorsements as en
from domain import forks as fk
from domain import members as mem
from domain import milestones as ms
from domain import objectives as ob
from domain import plans as pl
from domain import risks as rk
from domain import stakeholders as sh
from domain import status_updates as su
from domain import versions as ver
from domain.decider import PlanCommand, fold
from domain.model import Plan
from domain.visibility import view_for
from projections.health import health
from server.plans import PlanService, recorded
from server.store import Store

OWNER = "olivia@seller.example"
BUYER = "bob@buyer.example"
START = date(2026, 3, 2)


def reaches(plan: Plan, start: str, goal: str) -> bool:
    return dep.reaches(plan, start, goal)


def owns_open_work(plan: Plan, sid: str) -> bool:
    return (
        any(m.status != "done" and sid in (m.owner, m.backup) for m in plan.milestones.values())
        or any(a.status != "done" and a.owner == sid for a in plan.action_items.values())
        or any(r.status == "open" and r.owner == sid for r in plan.risks.values())
        or (plan.cadence is not None and plan.cadence.reporter == sid)
    )


def next_command(data: st.DataObject, plan: Plan, n: int) -> tuple[str, PlanCommand]:
    """A command that the plan's rules accept, drawn from what the plan holds now."""
    people = sorted(s.id for s in plan.stakeholders.values() if s.active)
    person = st.sampled_from([None, *people])
    day = st.integers(0, 120).map(lambda d: START + timedelta(days=d))
    open_ms = [m for m in plan.milestones.values() if m.status != "done"]
    items = sorted([*plan.milestones, *plan.action_items])
    kinds = ["add_stakeholder", "add_milestone", "add_objective", "add_risk", "set_cadence"]
    kinds += ["post_status_update", "add_comment", "tag_version", "endorse_plan"]
    if plan.milestones:
        kinds += ["add_action_item", "add_action_item"]
    if open_ms:
        kinds += ["reschedule_milestone", "complete_milestone", "update_milestone"]
    if plan.action_items:
        kinds += ["set_action_item_status"]
    if len(items) >= 2:
        kinds += ["add_dependency"] * 3
    if plan.risks:
        kinds += ["update_risk"]
    if plan.objectives:
        kinds += ["update_objective"]
    removable = [s for s in people if s != "champ" and not owns_open_work(plan, s)]
    if removable:
        kinds += ["remove_stakeholder"]
    kind = data.draw(st.sampled_from(kinds), label="kind")
    actor = data.draw(st.sampled_from([OWNER, OWNER, BUYER]), label="actor")
    cmd: PlanCommand
    match kind:
        case "add_stakeholder":
            cmd = sh.AddStakeholder(
                id=f"s{n}",
                name=f"Person {n}",
                side=data.draw(st.sampled_from(["buyer", "seller"])),
                persona=data.draw(st.sampled_from(["", "champion", "economic buyer", "legal"])),
            )
        case "add_milestone":
            cmd = ms.AddMilestone(
                id=f"m{n}",
                title=f"Milestone {n}",
                outcome=data.draw(st.sampled_from(["", "signed off"])),
                owner=data.draw(person),
                approver=data.draw(person),
                due=data.draw(st.none() | day),
            )
        case "add_action_item":
            cmd = ai.AddActionItem(
                id=f"a{n}",
                milestone_id=data.draw(st.sampled_from(sorted(plan.milestones))),
                title=f"Do {n}",
                owner=data.draw(person),
                due=data.draw(st.none() | day),
            )
        case "reschedule_milestone":
            cmd = ms.RescheduleMilestone(
                id=data.draw(st.sampled_from(sorted(m.id for m in open_ms))),
                due=data.draw(day),
                reason="the data is late",
            )
        case "complete_milestone":
            cmd = ms.CompleteMilestone(id=data.draw(st.sampled_from(sorted(m.id for m in open_ms))))
        case "update_milestone":
            cmd = ms.UpdateMilestone(
                id=data.draw(st.sampled_from(sorted(m.id for m in open_ms))),
                owner=data.draw(person),
                status=data.draw(st.sampled_from(["not_started", "in_progress", "blocked"])),
            )
        case "set_action_item_status":
            cmd = ai.SetActionItemStatus(
                id=data.draw(st.sampled_from(sorted(plan.action_items))),
                status=data.draw(
                    st.sampled_from(["not_started", "in_progress", "blocked", "done"])
                ),
            )
        case "add_dependency":
            a, b = data.draw(st.lists(st.sampled_from(items), min_size=2, max_size=2, unique=True))
            if reaches(plan, b, a):
                a, b = b, a  # the other way round cannot close a cycle
            cmd = dep.AddDependency(
                id=f"d{n}", from_id=a, to_id=b, critical=data.draw(st.booleans())
            )
        case "add_objective":
            cmd = ob.AddObjective(id=f"o{n}", title=f"Outcome {n}", metric="days", target="3")
        case "update_objective":
            cmd = ob.UpdateObjective(
                id=data.draw(st.sampled_from(sorted(plan.objectives))), target=f"{n}"
            )
        case "add_risk":
            cmd = rk.AddRisk(
                id=f"r{n}",
                title=f"Risk {n}",
                likelihood=data.draw(st.sampled_from(["low", "medium", "high"])),
                owner=data.draw(person),
            )
        case "update_risk":
            rid = data.draw(st.sampled_from(sorted(plan.risks)))
            cmd = rk.UpdateRisk(
                id=rid,
                status=data.draw(st.sampled_from(["open", "closed"])),
                owner=data.draw(person),
            )
        case "set_cadence":
            cmd = cad.SetCadence(
                kind="weekly operational", reporter=data.draw(person), next_review=data.draw(day)
            )
        case "post_status_update":
            cmd = su.PostStatusUpdate(
                status=data.draw(st.sampled_from(["on_track", "at_risk", "off_track"])),
                owner=data.draw(person),
            )
        case "add_comment":
            cmd = co.AddComment(
                id=f"c{n}", item_id=data.draw(st.sampled_from(["plan", *items])), text="ok"
            )
        case "tag_version":
            cmd = ver.TagVersion(name=f"tag {n}")
        case "endorse_plan":
            actor = BUYER  # the buyer champion
            cmd = en.EndorsePlan(version=data.draw(st.integers(1, plan.version)))
        case _:
            assert kind == "remove_stakeholder"
            cmd = sh.RemoveStakeholder(id=data.draw(st.sampled_from(removable)))
    return actor, cmd


def assert_acyclic(edges: Iterable[tuple[str, str]]) -> None:
    edges = list(edges)
    waiting: dict[str, int] = {}
    for a, b in edges:
        waiting.setdefault(a, 0)
        waiting[b] = waiting.get(b, 0) + 1
    ready = [n for n, c in waiting.items() if c == 0]
    taken = 0
    while ready:
        node = ready.pop()
        taken += 1
        for a, b in edges:
            if a == node:
                waiting[b] -= 1
                if waiting[b] == 0:
                    ready.append(b)
    assert taken == len(waiting), f"cycle in {edges}"


def assert_model_invariants(plan: Plan, versions: list[int], now: datetime) -> None:
    assert versions == list(range(1, plan.version + 1)), "versions have a gap"
    assert_acyclic((d.from_id, d.to_id) for d in plan.dependencies.values())

    def active(who: str | None) -> bool:
        return who is None or (who in plan.stakeholders and plan.stakeholders[who].active)

    for m in plan.milestones.values():
        assert all(w is None or w in plan.stakeholders for w in (m.owner, m.backup, m.approver))
        if m.status != "done":
            assert active(m.owner) and active(m.backup)
    for a in plan.action_items.values():
        assert a.owner is None or a.owner in plan.stakeholders
    for r in plan.risks.values():
        assert r.owner is None or r.owner in plan.stakeholders
        if r.status == "open":
            assert active(r.owner)
    assert plan.cadence is None or active(plan.cadence.reporter)
    assert all(u.owner is None or u.owner in plan.stakeholders for u in plan.status_updates)
    assert all(plan.members[e.by].side == "buyer" for e in plan.endorsements)

    for side in ("buyer", "seller"):
        view = view_for(plan, side)  # type: ignore[arg-type]
        report = health(view, now)
        edges = {(d.from_id, d.to_id) for d in view.dependencies.values()}
        path = report.critical_path
        assert all(pair in edges for pair in pairwise(path))
        assert all(f.item_id == "plan" or view.has_item(f.item_id) for f in report.findings)


async def _scenario(url: str, data: st.DataObject, length: int) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    try:
        store = Store(pool)
        service = PlanService(store, clock=lambda: now)
        plan_id = f"v{uuid.uuid4().hex[:12]}"

        async def check(pid: str) -> Plan:
            events = await store.read_stream(pid)
            plan = await PlanService(store).current(pid)
            assert plan == fold((recorded(e) for e in events), plan_id=pid)
            assert_model_invariants(plan, [e.version for e in events], now)
            return plan

        setup: list[tuple[str, PlanCommand]] = [
            (OWNER, pl.CreatePlan(title="T", buyer_org="B", seller_org="S", side="seller")),
            (OWNER, mem.AddMember(email=BUYER, side="buyer", role="editor")),
            (
                OWNER,
                sh.AddStakeholder(
                    id="champ", name="Bob", side="buyer", persona="champion", email=BUYER
                ),
            ),
            (OWNER, pl.SetCompellingEvent(name="Go-live", date=START + timedelta(days=90))),
            (OWNER, pl.ActivatePlan()),
        ]
        for actor, cmd in setup:
            await service.handle(plan_id, cmd, actor)
        for n in range(length):
            plan = await service.current(plan_id)
            actor, cmd = next_command(data, plan, n)
            await service.handle(plan_id, cmd, actor, command_id=uuid.uuid4().hex)
            await check(plan_id)

        # once won, any such plan forks, and the child keeps the same laws
        await service.handle(plan_id, pl.ClosePlan(outcome="won", reason="signed"), OWNER)
        child_id = f"{plan_id}-k"
        answer = await service.handle(
            plan_id, fk.RecordFork(child_plan_id=child_id, title="Kickoff"), OWNER
        )
        parent = await check(plan_id)
        fork = fk.ForkPlan(
            parent_plan_id=plan_id,
            parent_version=answer.version,
            parent_hash=answer.events[-1].hash,
            title="Kickoff",
            buyer_org="B",
            seller_org="S",
            side="seller",
            seeds=fk.carried(parent, "seller", OWNER),
        )
        await service.handle(child_id, fork, OWNER, expected_version=0)
        child = await check(child_id)
        assert child.parent is not None and child.parent.hash == answer.events[-1].hash
        assert set(child.risks) == {r.id for r in parent.risks.values() if r.status == "open"}
        assert set(child.milestones) >= {
            m.id for m in parent.milestones.values() if m.status != "done"
        }
        assert not any(a.status == "done" for a in child.action_items.values())
    finally:
        await pool.close()


@given(data=st.data(), length=st.integers(5, 30))
async def test_valid_sequences_are_accepted_and_keep_the_laws(
    database_url: str, data: Any, length: int
):
    await _scenario(database_url, data, length)
