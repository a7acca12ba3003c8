"""GET /plans/{id}/audit: one readable row per event, filters, and the other side's secrets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.audit.support import BUYER, SELLER, STRANGER, command, get, new_plan
from tests.support import auth


async def test_audit_rows_are_one_per_event_in_order_with_their_actor(client: httpx.AsyncClient):
    plan_id = await new_plan(client)
    await command(
        client,
        plan_id,
        "reschedule_milestone",
        who=BUYER,
        id="security",
        due="2026-06-23",
        reason="waiting for the SOC 2 report",
    )
    await command(client, plan_id, "add_comment", who=BUYER, item_id="security", text="On it")
    events = (await get(client, f"/plans/{plan_id}/events"))["events"]
    trail = await get(client, f"/plans/{plan_id}/audit")
    assert trail["complete"] and trail["trail_version"] == trail["version"] == len(events)
    rows = trail["rows"]
    assert (
        [r["version"] for r in rows]
        == [e["version"] for e in events]
        == list(range(1, len(events) + 1))
    )
    assert [(r["type"], r["actor"]) for r in rows] == [(e["type"], e["actor"]) for e in events]
    assert all(r["summary"] for r in rows)
    assert rows[-1]["actor_name"] == "Ramesh Iyer" and rows[-1]["actor_side"] == "buyer"


async def test_a_reschedule_says_who_what_from_what_to_what_and_why(client: httpx.AsyncClient):
    plan_id = await new_plan(client)
    answer = await command(
        client,
        plan_id,
        "reschedule_milestone",
        who=BUYER,
        id="security",
        due="2026-06-23",
        reason="waiting for the SOC 2 report",
    )
    trail = await get(client, f"/plans/{plan_id}/audit", type="MilestoneRescheduled")
    [row] = trail["rows"]
    assert row["version"] == answer["version"]
    assert row["summary"] == (
        "Ramesh Iyer (buyer, security) moved 'Security sign-off' from 16 Jun 2026 to "
        "23 Jun 2026 (7 days later): waiting for the SOC 2 report"
    )
    assert (row["actor"], row["actor_persona"]) == (BUYER, "security")
    assert (row["item_kind"], row["item_id"], row["item_title"]) == (
        "milestone",
        "security",
        "Security sign-off",
    )
    assert row["changes"] == [{"field": "due", "from": "2026-06-16", "to": "2026-06-23"}]
    assert row["reason"] == "waiting for the SOC 2 report"


async def test_a_close_reason_and_an_owner_change_read_in_names(client: httpx.AsyncClient):
    plan_id = await new_plan(client)
    await command(
        client,
        plan_id,
        "add_stakeholder",
        id="carl",
        name="Carl CFO",
        side="buyer",
        persona="economic buyer",
    )
    await command(client, plan_id, "update_milestone", id="security", owner="carl")
    await command(client, plan_id, "close_plan", outcome="lost", reason="budget frozen until Q3")
    rows = (await get(client, f"/plans/{plan_id}/audit", type="MilestoneUpdated,PlanClosed"))[
        "rows"
    ]
    assert [r["type"] for r in rows] == ["MilestoneUpdated", "PlanClosed"]
    assert rows[0]["summary"] == (
        "Sam Seller (seller) updated milestone 'Security sign-off': owner Ramesh Iyer → Carl CFO"
    )
    assert rows[0]["changes"] == [{"field": "owner", "from": "ramesh", "to": "carl"}]
    assert (
        rows[1]["summary"] == "Sam Seller (seller) closed the plan as lost: budget frozen until Q3"
    )
    assert rows[1]["reason"] == "budget frozen until Q3"


async def test_filters_by_actor_item_type_version_tag_and_time(client: httpx.AsyncClient):
    plan_id = await new_plan(client)  # v1-5
    await command(client, plan_id, "add_milestone", id="legal", title="Legal review")  # v6
    await command(client, plan_id, "tag_version", name="sent to procurement")  # v7 names v6
    await command(client, plan_id, "add_comment", who=BUYER, item_id="legal", text="Ok")  # v8
    await command(client, plan_id, "complete_milestone", id="security")  # v9

    def versions(body: dict[str, list[dict[str, int]]]) -> list[int]:
        return [r["version"] for r in body["rows"]]

    path = f"/plans/{plan_id}/audit"
    assert versions(await get(client, path, actor=BUYER)) == [8]
    assert versions(await get(client, path, actor="ramesh iyer")) == [8]
    assert versions(await get(client, path, item="legal")) == [6, 8]
    assert versions(await get(client, path, item="security")) == [5, 9]
    assert versions(await get(client, path, type="CommentAdded,VersionTagged")) == [7, 8]
    assert versions(await get(client, path, **{"from": "6", "to": "8"})) == [6, 7, 8]
    assert versions(await get(client, path, **{"from": "sent-to-procurement"})) == [6, 7, 8, 9]
    assert versions(await get(client, path, to="sent-to-procurement", item="legal")) == [6]
    assert versions(await get(client, path, to="sent-to-procurement", actor=BUYER)) == []
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert versions(await get(client, path, **{"from": future})) == []
    assert len(versions(await get(client, path, to=future))) == 9

    first = await get(client, path, limit=4)
    assert versions(first) == [1, 2, 3, 4] and first["next"] == 4
    second = await get(client, path, limit=4, after=first["next"])
    third = await get(client, path, limit=4, after=second["next"])
    assert versions(second) == [5, 6, 7, 8] and versions(third) == [9] and third["next"] is None


async def test_bad_filters_and_strangers_are_refused(client: httpx.AsyncClient):
    plan_id = await new_plan(client)
    path = f"/plans/{plan_id}/audit"
    r = await client.get(path, params={"from": "last tuesday"}, headers=auth(SELLER))
    assert r.status_code == 400 and r.json()["error"]["field"] == "from"
    r = await client.get(path, params={"to": "2026-06-03T12:00:00"}, headers=auth(SELLER))
    assert r.status_code == 400 and "time zone" in r.json()["error"]["message"]
    r = await client.get(path, params={"from": "99"}, headers=auth(SELLER))
    assert r.status_code == 404
    r = await client.get(path, params={"limit": "0"}, headers=auth(SELLER))
    assert r.status_code == 400 and r.json()["error"]["field"] == "limit"
    r = await client.get(path, headers=auth(STRANGER))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_the_other_sides_internal_items_are_in_no_row_it_reads(client: httpx.AsyncClient):
    plan_id = await new_plan(client)
    await command(
        client,
        plan_id,
        "add_action_item",
        id="discount",
        milestone_id="security",
        title="Prepare discount approval",
        visibility="internal",
    )
    await command(client, plan_id, "add_comment", item_id="discount", text="Max 12% off")
    await command(client, plan_id, "set_action_item_status", id="discount", status="in_progress")
    shared = await command(
        client, plan_id, "add_comment", who=BUYER, item_id="security", text="Report is in"
    )
    seller_rows = (await get(client, f"/plans/{plan_id}/audit"))["rows"]
    buyer_rows = (await get(client, f"/plans/{plan_id}/audit", who=BUYER))["rows"]
    assert len(seller_rows) == shared["version"]
    hidden = {r["version"] for r in seller_rows if r["audience"] == "seller"}
    assert hidden == {6, 7, 8}
    assert [r["version"] for r in buyer_rows] == [
        v for v in range(1, shared["version"] + 1) if v not in hidden
    ]
    text = str(buyer_rows)
    assert "discount" not in text.lower() and "12%" not in text
    assert (await get(client, f"/plans/{plan_id}/audit", who=BUYER, item="discount"))["rows"] == []
