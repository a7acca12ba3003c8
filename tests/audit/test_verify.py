"""Verification: an untouched plan verifies; a row changed behind the database's back does not.

Tampering needs a superuser: the `events_immutable` trigger refuses UPDATE and DELETE, so the
test disables it inside its own transaction (no other session ever sees it disabled).
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import httpx

from tests.audit.support import BUYER, command, get, new_plan
from tests.support import cli_env, mapstream


async def tamper(database_url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE events DISABLE TRIGGER events_immutable")
            await conn.execute(sql, *args)
            await conn.execute("ALTER TABLE events ENABLE TRIGGER events_immutable")
    finally:
        await conn.close()


async def test_an_untouched_plan_verifies(client: httpx.AsyncClient, app_db: str, tmp_path: Path):
    plan_id = await new_plan(client)
    events = (await get(client, f"/plans/{plan_id}/events"))["events"]
    body = await get(client, f"/plans/{plan_id}/verify", who=BUYER)
    assert body == {
        "plan_id": plan_id,
        "ok": True,
        "version": len(events),
        "head_hash": events[-1]["hash"],
    }
    done = await mapstream(cli_env(app_db, tmp_path), "verify", plan_id)
    assert done.returncode == 0, done.stderr
    assert f"{plan_id}: ok, {len(events)} events, head {events[-1]['hash']}" in done.stdout


async def test_a_tampered_row_is_found_by_the_api_the_cli_and_the_proof_file(
    client: httpx.AsyncClient, app_db: str, tmp_path: Path
):
    plan_id = await new_plan(client)
    await command(client, plan_id, "add_comment", item_id="security", text="Fine")  # v6
    env = cli_env(app_db, tmp_path)
    proof = tmp_path / "proof.json"
    done = await mapstream(env, "export-proof", plan_id, "-o", str(proof))
    assert done.returncode == 0, done.stderr

    await tamper(
        app_db,
        "UPDATE events SET data = replace(data::text, '2026-06-16', '2026-07-16')::json"
        " WHERE plan_id = $1 AND version = 5",
        plan_id,
    )
    body = await get(client, f"/plans/{plan_id}/verify")
    assert body["ok"] is False and body["broken_at"] == 5 and body["intact_to"] == 4
    assert body["reason"] == "body altered"
    done = await mapstream(env, "verify", plan_id)
    assert done.returncode == 1 and f"{plan_id}: BROKEN at version 5" in done.stdout

    # the proof exported before the tampering still verifies offline, and its head is the
    # one the live chain no longer reproduces
    offline = cli_env("postgresql://nobody@127.0.0.1:1/nothing", tmp_path / "offline")
    done = await mapstream(offline, "verify-file", str(proof))
    assert done.returncode == 0, done.stdout + done.stderr
    head = json.loads(proof.read_text())["head_hash"]
    assert f"ok, 6 events, head {head}" in done.stdout
    tampered = tmp_path / "tampered.json"
    done = await mapstream(env, "export-proof", plan_id, "-o", str(tampered))
    assert done.returncode == 0
    done = await mapstream(offline, "verify-file", str(tampered))
    assert done.returncode == 1 and "BROKEN at version 5 (body altered)" in done.stdout


async def test_events_cut_off_the_end_are_found(client: httpx.AsyncClient, app_db: str):
    plan_id = await new_plan(client)
    await tamper(app_db, "DELETE FROM events WHERE plan_id = $1 AND version = 5", plan_id)
    body = await get(client, f"/plans/{plan_id}/verify")
    assert body["ok"] is False and body["broken_at"] == 5 and body["intact_to"] == 4
    assert "recorded version 5" in body["reason"]


async def test_a_proof_file_checks_offline_and_refuses_edits(
    client: httpx.AsyncClient, app_db: str, tmp_path: Path
):
    plan_id = await new_plan(client)
    await command(
        client,
        plan_id,
        "add_action_item",
        id="discount",
        milestone_id="security",
        title="Prepare discount approval",
        visibility="internal",
    )  # v6, seller only
    env = cli_env(app_db, tmp_path)
    done = await mapstream(env, "export-proof", plan_id, "--side", "buyer")
    assert done.returncode == 0, done.stderr
    proof = json.loads(done.stdout)
    assert proof["format"] == "mapstream-proof/1" and proof["version"] == 6
    redacted = proof["events"][5]
    assert redacted["type"] == "Redacted" and redacted["data"] is None
    assert "discount" not in done.stdout

    offline = cli_env(None, tmp_path / "offline")
    path = tmp_path / "buyer-proof.json"
    path.write_text(json.dumps(proof, indent=2))  # reformatting the file changes nothing
    done = await mapstream(offline, "verify-file", str(path), "--head", proof["head_hash"])
    assert done.returncode == 0, done.stdout + done.stderr

    edited = dict(proof, events=[dict(e) for e in proof["events"]])
    edited["events"][2]["actor"] = "mallory@elsewhere.example"
    path.write_text(json.dumps(edited))
    done = await mapstream(offline, "verify-file", str(path))
    assert done.returncode == 1 and "BROKEN at version 3" in done.stdout

    path.write_text(json.dumps(proof))
    done = await mapstream(offline, "verify-file", str(path), "--head", "0" * 64)
    assert done.returncode == 1 and "not the expected" in done.stdout
    path.write_text("{not json")
    done = await mapstream(offline, "verify-file", str(path))
    assert done.returncode == 2 and "not a Mapstream proof file" in done.stderr
