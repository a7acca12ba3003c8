"""`mapstream audit` and `mapstream rebuild` against a database a server is serving."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import httpx

from tests.audit.support import BUYER, command, get, new_plan
from tests.support import auth, cli_env, mapstream


async def test_mapstream_audit_prints_one_line_per_event_as_a_side_sees_it(
    client: httpx.AsyncClient, app_db: str, tmp_path: Path
):
    plan_id = await new_plan(client)
    await command(
        client,
        plan_id,
        "reschedule_milestone",
        who=BUYER,
        id="security",
        due="2026-06-23",
        reason="waiting for the SOC 2 report",
    )  # v6
    await command(
        client,
        plan_id,
        "add_action_item",
        id="discount",
        milestone_id="security",
        title="Prepare discount approval",
        visibility="internal",
    )  # v7
    env = cli_env(app_db, tmp_path)
    done = await mapstream(env, "audit", plan_id)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [f"v{v}" for v in range(1, 8)]
    assert lines[5].endswith(
        "Ramesh Iyer (buyer, security) moved 'Security sign-off' from 16 Jun 2026 to "
        "23 Jun 2026 (7 days later): waiting for the SOC 2 report"
    )
    done = await mapstream(env, "audit", plan_id, "--side", "buyer", "--json", "--from", "5")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["version"] for r in rows] == [5, 6]
    done = await mapstream(env, "audit", plan_id, "--from", "yesterday")
    assert done.returncode == 2 and "`from` must be a version" in done.stderr


async def test_rebuild_resets_the_trail_and_the_serving_server_rebuilds_it(
    client: httpx.AsyncClient, app_db: str, tmp_path: Path
):
    plan_id = await new_plan(client)
    before = await get(client, f"/plans/{plan_id}/audit")
    assert before["complete"]
    rebuilding = asyncio.create_task(mapstream(cli_env(app_db, tmp_path), "rebuild", "audit"))
    served = 0
    while not rebuilding.done():  # the server keeps answering meanwhile
        r = await client.get(f"/plans/{plan_id}", headers=auth(BUYER))
        assert r.status_code == 200
        served += 1
        await asyncio.sleep(0.02)
    done = await rebuilding
    assert done.returncode == 0, done.stderr
    assert "a running server applies it" in done.stderr
    assert "events/s" in done.stderr and "(100%)" in done.stderr
    assert served > 0
    after = await get(client, f"/plans/{plan_id}/audit")
    assert after["complete"] and after["rows"] == before["rows"]


async def test_rebuild_without_a_server_does_the_work_itself(
    audit_db: str, audit_pool: asyncpg.Pool, tmp_path: Path
):
    env = cli_env(audit_db, tmp_path)
    for projection in ("audit", "snapshots", "analytics"):
        done = await mapstream(env, "rebuild", projection)
        assert done.returncode == 0, done.stderr
        assert f"{projection}: rebuilding from position 0" in done.stderr
        assert "(100%)" in done.stderr and "done" in done.stderr
    events = await audit_pool.fetchval("SELECT count(*) FROM events")
    assert await audit_pool.fetchval("SELECT count(*) FROM audit_trail") == events
    plans = await audit_pool.fetchval("SELECT count(DISTINCT plan_id) FROM events")
    assert await audit_pool.fetchval("SELECT count(*) FROM analytics_plans") == plans
    done = await mapstream(env, "rebuild", "health")
    assert done.returncode == 2 and "invalid choice" in done.stderr
