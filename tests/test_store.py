"""The event store on real PostgreSQL: append, idempotency, concurrency, immutability, chain."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date

import asyncpg
import msgspec
import pytest

from domain import comments as co
from domain import milestones as ms
from domain import plans as pl
from domain.chain import GENESIS
from domain.errors import DomainError, VersionConflict
from domain.model import Plan
from projections.plan_state import rebuild
from server.plans import PlanService, recorded
from server.store import Store
from server.tools import verify_plan

OWNER = "owner@seller.example"


def new_plan_id() -> str:
    return f"p{uuid.uuid4().hex[:12]}"


async def create(service: PlanService, plan_id: str | None = None) -> str:
    plan_id = plan_id or new_plan_id()
    await service.handle(
        plan_id,
        pl.CreatePlan(title="Deal", buyer_org="Buyer", seller_org="Seller", side="seller"),
        OWNER,
    )
    return plan_id


async def stored_state(store: Store, plan_id: str) -> Plan:
    """The inline projection as readers get it, after checking its stored part is a true fold."""
    row = await store.load_plan(plan_id)
    assert row is not None
    cached = msgspec.json.decode(row.state, type=Plan)
    prefix = await store.read_stream(plan_id, upto=row.state_version)
    assert cached == rebuild(plan_id, (recorded(e) for e in prefix))
    return await PlanService(store).current(plan_id)


async def folded_state(store: Store, plan_id: str) -> Plan:
    return rebuild(plan_id, (recorded(e) for e in await store.read_stream(plan_id)))


async def test_created_plan_has_owner_and_contiguous_versions(service: PlanService, store: Store):
    plan_id = await create(service)
    events = await store.read_stream(plan_id)
    assert [e.version for e in events] == [1, 2]
    assert [e.type for e in events] == ["PlanCreated", "MemberAdded"]
    state = await stored_state(store, plan_id)
    assert state.member(OWNER) is not None and state.member(OWNER).role == "owner"  # type: ignore[union-attr]
    assert state == await folded_state(store, plan_id)


async def test_stale_expected_version_is_rejected_and_changes_nothing(
    service: PlanService, store: Store
):
    plan_id = await create(service)
    with pytest.raises(VersionConflict) as caught:
        await service.handle(
            plan_id, ms.AddMilestone(id="m1", title="Kickoff"), OWNER, expected_version=1
        )
    assert caught.value.current_version == 2
    assert len(await store.read_stream(plan_id)) == 2
    answer = await service.handle(
        plan_id, ms.AddMilestone(id="m1", title="Kickoff"), OWNER, expected_version=2
    )
    assert answer.version == 3


async def test_refused_command_appends_nothing(service: PlanService, store: Store):
    plan_id = await create(service)
    await service.handle(plan_id, ms.AddMilestone(id="m1", title="Kickoff"), OWNER)
    await service.handle(plan_id, ms.CompleteMilestone(id="m1"), OWNER)
    before = await stored_state(store, plan_id)
    with pytest.raises(DomainError) as caught:
        await service.handle(
            plan_id, ms.RescheduleMilestone(id="m1", due=date(2030, 1, 1), reason="late"), OWNER
        )
    assert caught.value.rule == "done_is_final"
    assert await stored_state(store, plan_id) == before


async def test_repeated_command_id_returns_first_answer_and_appends_once(store: Store):
    writer_a, writer_b = PlanService(store), PlanService(store)
    plan_id = await create(writer_a)
    cmd = co.AddComment(id="c1", item_id="plan", text="first")
    answers = await asyncio.gather(
        *(
            (writer_a if n % 2 else writer_b).handle(plan_id, cmd, OWNER, command_id="same-id")
            for n in range(12)
        ),
        return_exceptions=True,
    )
    assert all(not isinstance(a, BaseException) for a in answers), answers
    versions = {a.version for a in answers}  # type: ignore[union-attr]
    assert versions == {3}
    events = await store.read_stream(plan_id)
    assert [e.type for e in events].count("CommentAdded") == 1
    # a retry long after still gets the first answer, with the same event
    again = await PlanService(store).handle(plan_id, cmd, OWNER, command_id="same-id")
    assert again.version == 3 and [e.hash for e in again.events] == [events[2].hash]


@pytest.mark.parametrize("instances", [1, 3])
async def test_concurrent_writers_on_one_plan_lose_nothing(store: Store, instances: int):
    """25 writers, spread over several service instances (as over several servers)."""
    services = [PlanService(store) for _ in range(instances)]
    plan_id = await create(services[0])
    writers, per_writer = 25, 8

    async def writer(n: int) -> list[int]:
        out = []
        for k in range(per_writer):
            svc = services[(n + k) % instances]
            a = await svc.handle(
                plan_id,
                co.AddComment(id=f"c-{n}-{k}", item_id="plan", text=f"{n}/{k}"),
                OWNER,
                command_id=f"cmd-{n}-{k}",
            )
            out.append(a.version)
        return out

    results = await asyncio.gather(*(writer(n) for n in range(writers)))
    events = await store.read_stream(plan_id)
    assert [e.version for e in events] == list(range(1, 2 + writers * per_writer + 1))
    comment_ids = [msgspec.json.decode(e.data)["id"] for e in events if e.type == "CommentAdded"]
    assert sorted(comment_ids) == sorted(
        f"c-{n}-{k}" for n in range(writers) for k in range(per_writer)
    )
    acknowledged = sorted(v for r in results for v in r)
    assert acknowledged == list(range(3, 3 + writers * per_writer))
    assert await stored_state(store, plan_id) == await folded_state(store, plan_id)
    assert (await verify_plan(store, plan_id)).ok


async def test_concurrent_writers_on_many_plans(store: Store):
    services = [PlanService(store), PlanService(store)]
    plan_ids = [await create(services[0]) for _ in range(20)]

    async def writer(n: int) -> None:
        for k in range(10):
            await services[k % 2].handle(
                plan_ids[n],
                ms.AddMilestone(id=f"m{k}", title=f"Step {k}"),
                OWNER,
                command_id=f"{n}-{k}",
            )

    await asyncio.gather(*(writer(n) for n in range(20)))
    for plan_id in plan_ids:
        events = await store.read_stream(plan_id)
        assert [e.version for e in events] == list(range(1, 13))
        assert await stored_state(store, plan_id) == await folded_state(store, plan_id)


async def test_concurrent_idempotent_retries_append_once(store: Store):
    services = [PlanService(store) for _ in range(3)]
    plan_id = await create(services[0])
    tasks = [
        services[n % 3].handle(
            plan_id,
            co.AddComment(id=f"c{k}", item_id="plan", text="hi"),
            OWNER,
            command_id=f"retry-{k}",
        )
        for k in range(10)
        for n in range(5)
    ]
    answers = await asyncio.gather(*tasks)
    by_id: dict[str, set[int]] = {}
    for k in range(10):
        for n in range(5):
            by_id.setdefault(f"retry-{k}", set()).add(answers[k * 5 + n].version)
    assert all(len(v) == 1 for v in by_id.values()), by_id
    events = await store.read_stream(plan_id)
    assert len(events) == 12


async def test_events_cannot_be_updated_deleted_or_truncated(
    service: PlanService, pool: asyncpg.Pool
):
    plan_id = await create(service)
    for sql in (
        "UPDATE events SET actor = 'mallory' WHERE plan_id = $1",
        "DELETE FROM events WHERE plan_id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="immutable"):
            await pool.execute(sql, plan_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="immutable"):
        await pool.execute("TRUNCATE events")
    assert await pool.fetchval("SELECT count(*) FROM events WHERE plan_id = $1", plan_id) == 2


async def test_hash_chain_recomputes_and_links_each_event(service: PlanService, store: Store):
    plan_id = await create(service)
    await service.handle(plan_id, ms.AddMilestone(id="m1", title="Kickoff"), OWNER)
    verdict = await verify_plan(store, plan_id)
    events = await store.read_stream(plan_id)
    assert verdict.ok and verdict.version == 3 and verdict.head_hash == events[-1].hash
    row = await store.load_plan(plan_id)
    assert row is not None and row.head_hash == events[-1].hash
    assert events[0].hash != GENESIS and len({e.hash for e in events}) == 3


async def test_many_plans_share_group_statements_and_each_keeps_its_own_chain(store: Store):
    """Cross-plan group commit: one writer per plan, many plans at once."""
    service = PlanService(store)
    plan_ids = [await create(service) for _ in range(24)]

    async def writer(n: int) -> list[int]:
        return [
            (
                await service.handle(
                    plan_ids[n],
                    co.AddComment(id=f"g{k}", item_id="plan", text=f"{n}/{k}"),
                    OWNER,
                    command_id=f"g-{n}-{k}",
                )
            ).version
            for k in range(6)
        ]

    answers = await asyncio.gather(*(writer(n) for n in range(24)))
    assert service._group.grouped > 0  # the group path really ran
    assert all(a == list(range(3, 9)) for a in answers)
    for plan_id in plan_ids:
        events = await store.read_stream(plan_id)
        assert [e.version for e in events] == list(range(1, 9))
        assert [e.command_id for e in events[2:]] == [
            f"g-{plan_ids.index(plan_id)}-{k}" for k in range(6)
        ]
        assert (await verify_plan(store, plan_id)).ok
        assert await stored_state(store, plan_id) == await folded_state(store, plan_id)


async def test_a_group_statement_moves_fresh_plans_and_reports_the_stale_one(store: Store):
    from server.store import Appended, AppendRequest, NewEvent, Stale

    service = PlanService(store)
    plan_ids = [await create(service) for _ in range(3)]
    rows = [await store.load_plan(p) for p in plan_ids]
    assert all(r is not None for r in rows)

    def request(plan_id: str, base: int, head: str) -> AppendRequest:
        event = NewEvent(3, "Probe", 1, "{}", OWNER, None, None, None, "d", f"h-{plan_id}")
        return AppendRequest(plan_id, base, head, None, rows[0].updated_at, [], [event])  # type: ignore[union-attr]

    stale_base = 1  # the plan is at version 2: this request is stale
    results = await store.append_many(
        [
            request(plan_ids[0], 2, "x"),
            request(plan_ids[1], stale_base, "y"),
            request(plan_ids[2], 2, "z"),
        ]
    )
    assert isinstance(results[0], Appended) and isinstance(results[2], Appended)
    assert results[1] == Stale(2)
    assert [e.version for e in await store.read_stream(plan_ids[1])] == [1, 2]
    for n in (0, 2):
        events = await store.read_stream(plan_ids[n])
        assert [e.version for e in events] == [1, 2, 3]
        assert events[-1].position == results[n].positions[0]  # type: ignore[union-attr]
        assert (await store.load_plan(plan_ids[n])).version == 3  # type: ignore[union-attr]


async def test_a_repeated_command_id_in_a_group_falls_back_and_answers_each_plan(store: Store):
    service = PlanService(store)
    plan_ids = [await create(service) for _ in range(12)]
    first = [
        await service.handle(
            p, co.AddComment(id="r1", item_id="plan", text="x"), OWNER, command_id="rep"
        )
        for p in plan_ids
    ]
    # again, concurrently, with a payload that decides fine (only the store knows the id):
    # the group statements hit the recorded command ids
    again = await asyncio.gather(
        *(
            service.handle(
                p, co.AddComment(id="r1b", item_id="plan", text="x"), OWNER, command_id="rep"
            )
            for p in plan_ids
        ),
        *(
            service.handle(
                p, co.AddComment(id="r2", item_id="plan", text="y"), OWNER, command_id="new"
            )
            for p in plan_ids
        ),
    )
    assert [a.version for a in again[:12]] == [a.version for a in first] == [3] * 12
    assert [a.version for a in again[12:]] == [4] * 12
    assert service._group.fallbacks > 0  # a group statement was refused and split
    for p in plan_ids:
        assert [e.command_id for e in await store.read_stream(p)][2:] == ["rep", "new"]


async def test_a_batch_postgresql_refuses_fails_alone_in_a_group_statement(store: Store):
    service = PlanService(store)
    plan_ids = [await create(service) for _ in range(12)]
    answers = await asyncio.gather(
        *(
            service.handle(
                p,
                co.AddComment(id="c1", item_id="plan", text="hi"),
                OWNER,
                command_id=f"poison-{n}",
                # a NUL cannot be stored in text: PostgreSQL refuses the whole statement
                correlation_id="bad\x00id" if n == 5 else None,
            )
            for n, p in enumerate(plan_ids)
        ),
        return_exceptions=True,
    )
    assert isinstance(answers[5], BaseException)
    assert [a.version for n, a in enumerate(answers) if n != 5] == [3] * 11  # type: ignore[union-attr]
    assert service._group.fallbacks > 0  # the refused group statement was split
    assert [e.version for e in await store.read_stream(plan_ids[5])] == [1, 2]
