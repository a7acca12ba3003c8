"""Time travel: the plan at version k is the fold of its first k events, snapshots or not."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import msgspec
from hypothesis import given, settings

from domain import comments as co
from domain import model
from domain.base import Recorded
from domain.decider import decode_event, fold
from domain.model import Plan
from projections.runner import START, ProjectionRunner
from projections.snapshots import (
    SCHEMA,
    SnapshotProjection,
    encode_state,
    fingerprint,
    is_due,
)
from server.plans import PlanService, recorded
from server.store import Store
from server.tools import check_snapshots, projection_runners, read_all
from tests.audit.strategies import OWNER, play, scripts, start_plan
from tests.audit.support import SELLER, command, get, new_plan, settled


async def _every_version(url: str, script: list[tuple[str, object]]) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert pool is not None
    try:
        store = Store(pool)
        service = PlanService(store)
        plan_id = await start_plan(service, setup=True)
        await play(service, plan_id, script)  # type: ignore[arg-type]
        await settled(store, plan_id)
        await projection_runners(store, service, snapshot_every=3)["snapshots"].catch_up()
        events = await store.read_stream(plan_id)
        snapshotted = {v for v, _, _ in await store.snapshots_of(plan_id, SCHEMA)}
        # a small plan: every 3rd version, and every version below 12
        assert snapshotted == {v for v in range(1, len(events) + 1) if is_due(v, 3, small=True)}
        assert snapshotted >= set(range(3, len(events) + 1, 3)) | set(
            range(1, min(len(events) + 1, 12))
        )
        for k in range(1, len(events) + 1):
            expected = fold((recorded(e) for e in events[:k]), plan_id=plan_id)
            assert await service.at_version(plan_id, k) == expected, k
            assert await service.at_version(plan_id, k, snapshots=False) == expected, k
    finally:
        await pool.close()


@settings(max_examples=15)
@given(script=scripts)
async def test_the_plan_at_version_k_is_the_fold_of_its_first_k_events(audit_db: str, script):
    await _every_version(audit_db, script)


async def _plan_with_snapshots(store: Store, service: PlanService) -> str:
    plan_id = await start_plan(service, setup=True)
    for i in range(17):
        await service.handle(plan_id, co.AddComment(item_id="m1", text=f"note {i}"), OWNER)
    await settled(store, plan_id)
    runners = projection_runners(store, service, snapshot_every=10, dense_snapshots=False)
    await runners["snapshots"].catch_up()
    return plan_id  # 25 events, snapshots at 10 and 20


async def test_a_snapshot_of_another_chain_or_shape_is_never_used(
    audit_store: Store, audit_service: PlanService
):
    plan_id = await _plan_with_snapshots(audit_store, audit_service)
    truth = await audit_service.at_version(plan_id, 23, snapshots=False)
    forged = encode_state(msgspec.structs.replace(truth, title="Forged"))
    await audit_store.pool.execute(
        "INSERT INTO snapshots (plan_id, version, schema, hash, state) VALUES"
        " ($1, 22, $2, 'not-the-hash-of-v22', $3::json), ($1, 22, 'old-shape', $4, $3::json)",
        plan_id,
        SCHEMA,
        forged,
        (await audit_store.read_stream(plan_id, after=21, upto=22))[0].hash,
    )
    nearest = await audit_store.nearest_snapshot(plan_id, 23, SCHEMA)
    assert nearest is not None and nearest[0] == 20
    assert await audit_service.at_version(plan_id, 23) == truth


async def test_verify_finds_a_snapshot_that_disagrees_with_the_fold_and_drops_it(
    audit_store: Store, audit_service: PlanService
):
    plan_id = await _plan_with_snapshots(audit_store, audit_service)
    truth = await audit_service.at_version(plan_id, 22, snapshots=False)
    await audit_store.pool.execute(
        "UPDATE snapshots SET state = $3::json WHERE plan_id = $1 AND version = $2",
        plan_id,
        20,
        encode_state(msgspec.structs.replace(truth, title="Forged")),
    )
    # a snapshot is a trusted cache while it is there: this is what verify is for
    assert (await audit_service.at_version(plan_id, 22)).title == "Forged"
    events = await read_all(audit_store, plan_id)
    assert await check_snapshots(audit_store, plan_id, events) == [20]
    assert await audit_service.at_version(plan_id, 22) == truth
    assert await check_snapshots(audit_store, plan_id, events) == []


async def test_a_new_state_shape_rebuilds_its_snapshots_from_zero_and_ignores_the_old(
    audit_store: Store, audit_service: PlanService
):
    plan_id = await _plan_with_snapshots(audit_store, audit_service)

    class Renamed(msgspec.Struct):
        id: str
        headline: str

    def redocumented() -> type[Plan]:
        class Plan(model.Plan, frozen=True):  # the same struct, another docstring
            """Another docstring."""

        return Plan

    new_shape = fingerprint(Renamed)
    assert new_shape != SCHEMA and fingerprint(Plan, revision=2) != SCHEMA
    assert fingerprint(redocumented()) == fingerprint(Plan) == SCHEMA  # docs are not shape
    assert await audit_store.nearest_snapshot(plan_id, 25, new_shape) is None
    table = audit_store.snapshot_table(new_shape)
    assert await table.checkpoint() == START
    projection = SnapshotProjection(
        audit_service.at_version, every=10, schema=new_shape, dense_bytes=-1
    )
    await ProjectionRunner(projection, table, audit_store).catch_up()
    assert [v for v, _, _ in await audit_store.snapshots_of(plan_id, new_shape)] == [10, 20]
    assert [v for v, _, _ in await audit_store.snapshots_of(plan_id, SCHEMA)] == [10, 20]
    await ProjectionRunner(projection, table, audit_store).rebuild()  # drops its own only
    assert [v for v, _, _ in await audit_store.snapshots_of(plan_id, SCHEMA)] == [10, 20]


async def test_the_server_writes_snapshots_and_serves_any_version_or_time(
    client: httpx.AsyncClient, app_db: str
):
    plan_id = await new_plan(client)  # 5 events
    times = []
    for i in range(100):
        answer = await command(client, plan_id, "add_comment", item_id="security", text=f"n{i}")
        times.append(answer["events"][0]["recorded_at"])
    await command(client, plan_id, "tag_version", name="signed off by CFO", version=101)
    conn = await asyncpg.connect(app_db)
    try:
        for _ in range(200):  # the server's snapshot runner follows the log
            if await conn.fetchval(
                "SELECT count(*) FROM snapshots WHERE plan_id = $1 AND version = 100", plan_id
            ):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("no snapshot at version 100")
        rows = await conn.fetch(
            "SELECT type, schema_version, data::text AS data, actor, recorded_at, version"
            " FROM events WHERE plan_id = $1 ORDER BY version",
            plan_id,
        )
    finally:
        await conn.close()
    records = [
        Recorded(
            r["version"],
            r["actor"],
            r["recorded_at"],
            decode_event(r["type"], r["schema_version"], r["data"]),
        )
        for r in rows
    ]
    at_101 = fold(records[:101], plan_id=plan_id)
    body = await get(client, f"/plans/{plan_id}", version="signed-off-by-cfo")
    assert body["version"] == 101
    assert msgspec.convert(body["state"], Plan) == at_101
    body = await get(client, f"/plans/{plan_id}", at=times[95])  # the comment that made v101
    assert body["version"] == 101
    body = await get(client, f"/plans/{plan_id}", version="3")
    assert body["version"] == 3 and body["state"]["milestones"] == {}
    assert SELLER in body["state"]["members"]
