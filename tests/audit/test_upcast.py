"""Old stored events are upcast when read and never rewritten; replay, audit and verify agree.

The test writes a schema-1 `ActionItemStatusChanged` row (the tracker words todo/doing, no
`previous`) straight into the store, with a correct hash chain, as an old release did.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from domain import action_items as ai
from domain import chain
from domain.decider import fold
from server.plans import PlanService, recorded
from server.store import AuditQuery, Store
from server.tools import check_proof, projection_runners, proof_of, read_all, verify_with_head
from tests.audit.strategies import OWNER, start_plan
from tests.audit.support import settled

V1_BODY = '{"type":"ActionItemStatusChanged","id":"a1","status":"doing"}'


async def append_v1_row(store: Store, plan_id: str) -> int:
    """Append the old-shape event as version N+1, chained, and move the plan row to it."""
    row = await store.load_plan(plan_id)
    assert row is not None
    version, at = row.version + 1, datetime.now(UTC)
    digest = chain.data_digest("ActionItemStatusChanged", OWNER, V1_BODY)
    head = chain.event_hash(row.head_hash, plan_id, version, at, digest)
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO events (plan_id, version, type, schema_version, data, actor,"
            " recorded_at, data_digest, hash)"
            " VALUES ($1, $2, 'ActionItemStatusChanged', 1, $3::json, $4, $5, $6, $7)",
            plan_id,
            version,
            V1_BODY,
            OWNER,
            at,
            digest,
            head,
        )
        await conn.execute(
            "UPDATE plans SET version = $2, head_hash = $3, updated_at = $4 WHERE plan_id = $1",
            plan_id,
            version,
            head,
            at,
        )
    return version


async def test_an_old_event_is_upcast_on_read_never_rewritten_and_everything_agrees(
    audit_store: Store,
):
    service = PlanService(audit_store)
    plan_id = await start_plan(service, setup=True)  # a1: 'Send the SOC 2 report'
    old = await append_v1_row(audit_store, plan_id)

    fresh = PlanService(audit_store)  # no cache: reads the stored rows
    current = await fresh.current(plan_id)
    assert current.version == old and current.action_items["a1"].status == "in_progress"
    assert await fresh.at_version(plan_id, old) == current

    later = await fresh.handle(plan_id, ai.SetActionItemStatus(id="a1", status="done"), OWNER)
    assert later.version == old + 1
    events = await read_all(audit_store, plan_id)
    assert fold((recorded(e) for e in events), plan_id=plan_id) == await fresh.current(plan_id)
    assert [(e.schema_version, e.data) for e in events if e.version == old] == [(1, V1_BODY)]
    assert events[-1].schema_version == 2

    verdict = await verify_with_head(audit_store, plan_id)
    assert verdict.ok and verdict.version == old + 1
    assert check_proof(msgspec.json.encode(proof_of(plan_id, events, None))).ok

    await settled(audit_store, plan_id)
    await projection_runners(audit_store, fresh)["audit"].catch_up()
    rows = await audit_store.read_audit(plan_id, AuditQuery(after=old - 1))
    trail = [msgspec.json.decode(row) for _, row in rows]
    assert [r["summary"] for r in trail] == [
        "Olivia (seller) set 'Send the SOC 2 report' from not started to in progress",
        "Olivia (seller) set 'Send the SOC 2 report' from in progress to done",
    ]
    assert trail[0]["changes"] == [{"field": "status", "from": "not_started", "to": "in_progress"}]
    stored = await audit_store.pool.fetchrow(
        "SELECT schema_version, data::text AS data FROM events WHERE plan_id = $1 AND version = $2",
        plan_id,
        old,
    )
    assert stored is not None and (stored["schema_version"], stored["data"]) == (1, V1_BODY)
