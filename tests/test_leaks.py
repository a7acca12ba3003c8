"""Leak tests: a seller-internal item and its comment reach the buyer on no surface at all.

Every surface a buyer can read is fetched and its raw bytes scanned for the secret title,
the comment and the item id. The seller sees the secret where it should (state, audit,
exports), which proves the scan can fail.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support import auth, running_app, settings_for, token

SELLER = "sam@seller.example"
BUYER = "bea@buyer.example"
SECRET = f"walkaway-{uuid.uuid4().hex}"  # unique: cannot appear by accident
SECRET_ID = f"hush{uuid.uuid4().hex[:8]}"
COMMENT = f"note-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
async def leak_base(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    settings = settings_for(database_url, tmp_path_factory.mktemp("leaks"))
    async with running_app(settings) as url:
        yield url


async def post(
    http: httpx.AsyncClient, plan_id: str, type_: str, data: dict[str, Any], who: str = SELLER
) -> int:
    body = {"type": type_, "data": data, "command_id": uuid.uuid4().hex}
    r = await http.post(f"/plans/{plan_id}/commands", json=body, headers=auth(who))
    assert r.status_code == 200, r.text
    version: int = r.json()["version"]
    return version


def leaks(raw: bytes | str) -> list[str]:
    data = raw if isinstance(raw, bytes) else raw.encode()
    return [s for s in (SECRET, COMMENT, SECRET_ID) if s.encode() in data]


async def socket_for(base: str, who: str) -> ClientConnection:
    ws = await connect(base.replace("http", "ws") + "/ws")
    await ws.send(json.dumps({"op": "auth", "token": token(who)}))
    assert json.loads(await ws.recv())["op"] == "ready"
    return ws


async def frames_until(ws: ClientConnection, version: int) -> list[str]:
    """Every frame up to the one that brings the plan to `version` (event or snapshot)."""
    frames: list[str] = []
    async with asyncio.timeout(60):
        while True:
            frame = str(await ws.recv())
            frames.append(frame)
            m = json.loads(frame)
            if m["op"] == "event" and m["event"]["version"] == version:
                return frames
            if m["op"] == "snapshot" and m["version"] == version:
                return frames
            assert m["op"] not in ("error", "reject"), m


async def audit(http: httpx.AsyncClient, plan_id: str, who: str) -> httpx.Response:
    """GET /audit once the asynchronous trail has caught up (`complete`)."""
    async with asyncio.timeout(90):
        while True:
            r = await http.get(f"/plans/{plan_id}/audit", headers=auth(who))
            assert r.status_code == 200, r.text
            if r.json()["complete"]:
                return r
            await asyncio.sleep(0.1)


async def test_a_seller_internal_item_reaches_the_buyer_on_no_surface(leak_base: str):
    async with httpx.AsyncClient(base_url=leak_base, timeout=20) as http:
        r = await http.post(
            "/plans",
            json={
                "title": "Deal",
                "buyer_org": "B",
                "seller_org": "S",
                "side": "seller",
                "compelling_event": {"name": "Go live", "date": "2030-01-01"},
            },
            headers=auth(SELLER),
        )
        plan_id: str = r.json()["plan_id"]
        await post(http, plan_id, "add_member", {"email": BUYER, "side": "buyer", "role": "editor"})
        live = await socket_for(leak_base, BUYER)
        await live.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
        await post(http, plan_id, "add_stakeholder", {"id": "ae", "name": "Sam", "side": "seller"})
        await post(
            http,
            plan_id,
            "add_milestone",
            {"id": "m1", "title": "Business case", "due": "2029-06-01"},
        )
        # overdue, owned and dated: health, the critical path and the calendar would show it
        await post(
            http,
            plan_id,
            "add_action_item",
            {
                "id": SECRET_ID,
                "milestone_id": "m1",
                "title": SECRET,
                "owner": "ae",
                "due": "2020-01-01",
                "notes": SECRET,
                "visibility": "internal",
            },
        )
        await post(http, plan_id, "add_comment", {"item_id": SECRET_ID, "text": COMMENT})
        await post(
            http, plan_id, "set_action_item_status", {"id": SECRET_ID, "status": "in_progress"}
        )
        await post(
            http,
            plan_id,
            "reschedule_action_item",
            {"id": SECRET_ID, "due": "2020-02-01", "reason": "waiting"},
        )
        await post(http, plan_id, "tag_version", {"name": "sent-to-procurement"})
        last = await post(http, plan_id, "add_comment", {"item_id": "m1", "text": "shared note"})

        # the seller sees it: the scan below can fail
        seller_state = await http.get(f"/plans/{plan_id}", headers=auth(SELLER))
        assert leaks(seller_state.content) == [SECRET, COMMENT, SECRET_ID]
        seller_audit = await audit(http, plan_id, SELLER)
        assert SECRET in leaks(seller_audit.content) and SECRET_ID in leaks(seller_audit.content)
        for ext in ("csv", "ics"):
            seller_export = await http.get(f"/plans/{plan_id}/export.{ext}", headers=auth(SELLER))
            assert SECRET in leaks(seller_export.content), ext

        # the buyer: every surface, raw bytes
        await audit(http, plan_id, BUYER)  # the trail has caught up
        paths = [
            f"/plans/{plan_id}",
            f"/plans/{plan_id}?version={last}",
            f"/plans/{plan_id}?version={last - 1}",
            f"/plans/{plan_id}?version=sent-to-procurement",
            f"/plans/{plan_id}/events",
            f"/plans/{plan_id}/audit",
            f"/plans/{plan_id}/audit?item={SECRET_ID}",
            f"/plans/{plan_id}/diff?from=1",
            f"/plans/{plan_id}/diff?from=0",
            f"/plans/{plan_id}/health",
            f"/plans/{plan_id}/tags",
            f"/plans/{plan_id}/lineage",
            f"/plans/{plan_id}/verify",
            f"/plans/{plan_id}/export.md",
            f"/plans/{plan_id}/export.csv",
            f"/plans/{plan_id}/export.ics",
        ]
        for path in paths:
            r = await http.get(path, headers=auth(BUYER))
            assert r.status_code == 200, (path, r.text)
            assert leaks(r.content) == [], (path, leaks(r.content))
        health = (await http.get(f"/plans/{plan_id}/health", headers=auth(BUYER))).json()
        assert health["status"] != "stalled"  # the overdue internal item does not count

        # the hub: live events, a replay from the start, and a snapshot
        frames = await frames_until(live, last)
        replay = await socket_for(leak_base, BUYER)
        await replay.send(json.dumps({"op": "subscribe", "plan_id": plan_id, "since": 0}))
        frames += await frames_until(replay, last)
        snap = await socket_for(leak_base, BUYER)
        await snap.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
        frames += await frames_until(snap, last)
        for ws in (live, replay, snap):
            await ws.close()
        assert [f for f in frames if leaks(f)] == []
        redacted = [f for f in frames if '"Redacted"' in f]
        assert len(redacted) == 2 * 4  # live and replay: the item, its comment, status, slip


async def test_an_item_made_internal_is_withdrawn_from_the_other_side_without_its_content(
    leak_base: str,
):
    async with httpx.AsyncClient(base_url=leak_base, timeout=20) as http:
        r = await http.post(
            "/plans",
            json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
            headers=auth(SELLER),
        )
        plan_id: str = r.json()["plan_id"]
        await post(http, plan_id, "add_member", {"email": BUYER, "side": "buyer", "role": "editor"})
        await post(http, plan_id, "add_milestone", {"id": "m1", "title": "Business case"})
        await post(
            http,
            plan_id,
            "add_action_item",
            {"id": "price", "milestone_id": "m1", "title": "Price"},
        )
        live = await socket_for(leak_base, BUYER)
        await live.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
        version = await post(
            http,
            plan_id,
            "update_action_item",
            {"id": "price", "visibility": "internal", "title": SECRET},
        )
        frames = await frames_until(live, version)
        await live.close()
        last = json.loads(frames[-1])["event"]
        assert last["type"] == "Redacted" and last["withdrawn"] == ["price"]
        assert leaks("".join(frames)) == []
        buyer_view = await http.get(f"/plans/{plan_id}", headers=auth(BUYER))
        assert "price" not in buyer_view.json()["state"]["action_items"]
        seller_view = await http.get(f"/plans/{plan_id}", headers=auth(SELLER))
        assert seller_view.json()["state"]["action_items"]["price"]["title"] == SECRET
        # the other surfaces (GET /events) say the same
        events = await http.get(f"/plans/{plan_id}/events", headers=auth(BUYER))
        assert events.json()["events"][-1]["withdrawn"] == ["price"]
