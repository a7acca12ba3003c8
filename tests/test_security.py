"""Access and security: invites, roles, internal items, rate limits, the admin log."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support import auth, running_app, settings_for, token

SELLER = "sam@seller.example"
BUYER = "bea@buyer.example"
ADMIN = "root@ops.example"
SECRET_TEXT = "Discount floor is 18 percent"


@pytest.fixture(scope="module")
async def sec_base(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    settings = settings_for(database_url, tmp_path_factory.mktemp("sec"), admins=frozenset({ADMIN}))
    async with running_app(settings) as url:
        yield url


async def post(
    http: httpx.AsyncClient, plan_id: str, type_: str, data: dict[str, Any], who: str = SELLER
) -> httpx.Response:
    body = {"type": type_, "data": data, "command_id": uuid.uuid4().hex}
    return await http.post(f"/plans/{plan_id}/commands", json=body, headers=auth(who))


async def plan_with_buyer(http: httpx.AsyncClient, role: str = "editor") -> str:
    r = await http.post(
        "/plans",
        json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
        headers=auth(SELLER),
    )
    plan_id: str = r.json()["plan_id"]
    r = await http.post(
        f"/plans/{plan_id}/invites", json={"side": "buyer", "role": role}, headers=auth(SELLER)
    )
    assert r.status_code == 201, r.text
    accepted = await http.post(
        f"/invites/{r.json()['code']}/accept", json={"name": "Bea", "email": BUYER}
    )
    assert accepted.status_code == 200, accepted.text
    return plan_id


async def test_invite_lets_a_buyer_in_once_with_a_working_token(sec_base: str):
    async with httpx.AsyncClient(base_url=sec_base) as http:
        r = await http.post(
            "/plans",
            json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
            headers=auth(SELLER),
        )
        plan_id = r.json()["plan_id"]
        r = await http.post(
            f"/plans/{plan_id}/invites",
            json={"side": "buyer", "role": "commenter", "email": BUYER},
            headers=auth(SELLER),
        )
        assert r.status_code == 201 and r.json()["status"] == "open"
        code = r.json()["code"]
        wrong = await http.post(
            f"/invites/{code}/accept", json={"name": "Eve", "email": "eve@x.example"}
        )
        assert wrong.status_code == 422 and wrong.json()["error"]["rule"] == "invite_email_mismatch"
        ok = await http.post(f"/invites/{code}/accept", json={"name": "Bea Buyer", "email": BUYER})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert (
            body["plan_id"] == plan_id and body["side"] == "buyer" and body["role"] == "commenter"
        )
        state = (
            await http.get(
                f"/plans/{plan_id}", headers={"Authorization": f"Bearer {body['token']}"}
            )
        ).json()
        assert state["state"]["members"][BUYER] == {
            "email": BUYER,
            "side": "buyer",
            "role": "commenter",
            "name": "Bea Buyer",
            "active": True,
        }
        again = await http.post(f"/invites/{code}/accept", json={"name": "Bea", "email": BUYER})
        assert again.status_code == 422 and again.json()["error"]["rule"] == "invite_used"
        assert (
            await http.post("/invites/nonsense/accept", json={"name": "x", "email": BUYER})
        ).status_code == 404
        listed = (await http.get(f"/plans/{plan_id}/invites", headers=auth(SELLER))).json()[
            "invites"
        ]
        assert [i["status"] for i in listed] == ["accepted"] and "code" not in listed[0]


async def test_revoked_and_expired_invites_cannot_be_accepted(sec_base: str, pool: Any):
    async with httpx.AsyncClient(base_url=sec_base) as http:
        r = await http.post(
            "/plans",
            json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
            headers=auth(SELLER),
        )
        plan_id = r.json()["plan_id"]
        made = (
            await http.post(
                f"/plans/{plan_id}/invites",
                json={"side": "buyer", "role": "viewer"},
                headers=auth(SELLER),
            )
        ).json()
        r = await http.post(
            f"/plans/{plan_id}/invites/{made['invite_id']}/revoke", headers=auth(SELLER)
        )
        assert r.json()["status"] == "revoked"
        refused = await http.post(
            f"/invites/{made['code']}/accept", json={"name": "B", "email": BUYER}
        )
        assert refused.status_code == 422 and refused.json()["error"]["rule"] == "invite_revoked"
        made = (
            await http.post(
                f"/plans/{plan_id}/invites",
                json={"side": "buyer", "role": "viewer", "expires_in": 60},
                headers=auth(SELLER),
            )
        ).json()
        await pool.execute(
            "UPDATE invites SET expires_at = now() - interval '1 second' WHERE invite_id = $1",
            made["invite_id"],
        )
        refused = await http.post(
            f"/invites/{made['code']}/accept", json={"name": "B", "email": BUYER}
        )
        assert refused.status_code == 422 and refused.json()["error"]["rule"] == "invite_expired"
        state = (await http.get(f"/plans/{plan_id}", headers=auth(SELLER))).json()["state"]
        assert BUYER not in state["members"]
        # only owners invite
        await post(http, plan_id, "add_member", {"email": BUYER, "side": "buyer", "role": "editor"})
        r = await http.post(
            f"/plans/{plan_id}/invites",
            json={"side": "buyer", "role": "owner"},
            headers=auth(BUYER),
        )
        assert r.status_code == 403


async def test_racing_acceptances_of_one_code_admit_one_person(sec_base: str):
    async with httpx.AsyncClient(base_url=sec_base) as http:
        r = await http.post(
            "/plans",
            json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
            headers=auth(SELLER),
        )
        plan_id = r.json()["plan_id"]
        code = (
            await http.post(
                f"/plans/{plan_id}/invites",
                json={"side": "buyer", "role": "viewer"},
                headers=auth(SELLER),
            )
        ).json()["code"]
        answers = await asyncio.gather(
            *(
                http.post(
                    f"/invites/{code}/accept", json={"name": "P", "email": f"p{n}@buyer.example"}
                )
                for n in range(8)
            )
        )
        assert sorted(a.status_code for a in answers) == [200] + [422] * 7
        members = (await http.get(f"/plans/{plan_id}", headers=auth(SELLER))).json()["state"][
            "members"
        ]
        assert len(members) == 2


# -- the role matrix --------------------------------------------------------------------------

READ_ROUTES = [
    "/plans/{plan_id}/audit",
    "/plans/{plan_id}/diff?from=1",
    "/plans/{plan_id}/tags",
    "/plans/{plan_id}/verify",
    "/plans/{plan_id}/health",
    "/plans/{plan_id}/lineage",
    "/plans/{plan_id}/export.md",
    "/plans/{plan_id}/export.csv",
    "/plans/{plan_id}/export.ics",
]

ROLE_CASES = {
    "viewer": {"read": True, "comment": False, "edit": False, "manage": False},
    "commenter": {"read": True, "comment": True, "edit": False, "manage": False},
    "editor": {"read": True, "comment": True, "edit": True, "manage": False},
    "owner": {"read": True, "comment": True, "edit": True, "manage": True},
    None: {"read": False, "comment": False, "edit": False, "manage": False},
}


@pytest.mark.parametrize("role", list(ROLE_CASES), ids=[str(r) for r in ROLE_CASES])
@pytest.mark.parametrize("side", ["buyer", "seller"])
async def test_every_route_and_op_by_side_and_role(sec_base: str, role: str | None, side: str):
    who = f"{side}-{role}-{uuid.uuid4().hex[:6]}@x.example"
    allowed = ROLE_CASES[role]
    async with httpx.AsyncClient(base_url=sec_base) as http:
        r = await http.post(
            "/plans",
            json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
            headers=auth(SELLER),
        )
        plan_id = r.json()["plan_id"]
        await post(http, plan_id, "add_milestone", {"id": "m1", "title": "Kickoff"})
        if role is not None:
            assert (
                await post(http, plan_id, "add_member", {"email": who, "side": side, "role": role})
            ).status_code == 200
        denied = 404 if role is None else 403

        async def check(kind: str, response: httpx.Response) -> None:
            expected = (200, 201) if allowed[kind] else (denied,)
            assert response.status_code in expected, (kind, response.status_code, response.text)

        before = (await http.get(f"/plans/{plan_id}/events", headers=auth(SELLER))).json()["events"]
        await check("read", await http.get(f"/plans/{plan_id}", headers=auth(who)))
        await check("read", await http.get(f"/plans/{plan_id}/events", headers=auth(who)))
        await check(
            "comment",
            await post(http, plan_id, "add_comment", {"item_id": "m1", "text": "hi"}, who),
        )
        await check(
            "edit",
            await post(http, plan_id, "update_milestone", {"id": "m1", "title": "Kick-off"}, who),
        )
        await check("manage", await post(http, plan_id, "activate_plan", {}, who))
        await check(
            "manage",
            await http.post(
                f"/plans/{plan_id}/invites",
                json={"side": "buyer", "role": "viewer"},
                headers=auth(who),
            ),
        )
        await check("manage", await http.get(f"/plans/{plan_id}/invites", headers=auth(who)))
        for path in READ_ROUTES:
            await check("read", await http.get(path.format(plan_id=plan_id), headers=auth(who)))
        await check(
            "edit",
            await http.post(
                f"/plans/{plan_id}/save-as-template",
                json={"name": f"T {uuid.uuid4().hex[:6]}"},
                headers=auth(who),
            ),
        )
        fork = await http.post(f"/plans/{plan_id}/fork", json={}, headers=auth(who))
        # owners get past the permission check to the rule (the plan is not closed-won)
        assert fork.status_code == (422 if allowed["manage"] else denied), fork.text
        after = (await http.get(f"/plans/{plan_id}/events", headers=auth(SELLER))).json()["events"]
        expected_new = sum(1 for k in ("comment", "edit", "manage") if allowed[k])
        assert len(after) - len(before) == expected_new  # refused requests changed nothing

        # the socket: subscribe needs read, commands need their permission
        async with connect(sec_base.replace("http", "ws") + "/ws") as ws:
            await ws.send(json.dumps({"op": "auth", "token": token(who)}))
            assert json.loads(await ws.recv())["op"] == "ready"
            await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
            first = json.loads(await ws.recv())
            assert (first["op"] == "snapshot") == allowed["read"], first
            await ws.send(
                json.dumps(
                    {
                        "op": "command",
                        "plan_id": plan_id,
                        "command_id": uuid.uuid4().hex,
                        "type": "update_milestone",
                        "data": {"id": "m1", "title": f"T {uuid.uuid4().hex[:4]}"},
                    }
                )
            )
            while True:
                m = json.loads(await ws.recv())
                if m["op"] in ("ack", "reject"):
                    break
            assert (m["op"] == "ack") == allowed["edit"], m


# -- internal items never reach the other side -----------------------------------------------


async def test_internal_items_never_reach_the_other_side(sec_base: str):
    async with httpx.AsyncClient(base_url=sec_base) as http:
        plan_id = await plan_with_buyer(http)
        buyer_ws = await connect(sec_base.replace("http", "ws") + "/ws")
        await buyer_ws.send(json.dumps({"op": "auth", "token": token(BUYER)}))
        await buyer_ws.recv()
        await buyer_ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
        await post(http, plan_id, "add_milestone", {"id": "m1", "title": "Business case"})
        r = await post(
            http,
            plan_id,
            "add_action_item",
            {"id": "secret", "milestone_id": "m1", "title": SECRET_TEXT, "visibility": "internal"},
        )
        assert r.status_code == 200
        await post(
            http, plan_id, "add_comment", {"item_id": "secret", "text": f"re: {SECRET_TEXT}"}
        )
        await post(
            http, plan_id, "set_action_item_status", {"id": "secret", "status": "in_progress"}
        )
        last = (
            await post(http, plan_id, "add_comment", {"item_id": "m1", "text": "shared note"})
        ).json()["version"]
        # the seller side sees it all
        seller_state = (await http.get(f"/plans/{plan_id}", headers=auth(SELLER))).text
        assert SECRET_TEXT in seller_state
        # the buyer: not in state, not in events, not over the hub, raw bytes scanned
        for path in (
            f"/plans/{plan_id}",
            f"/plans/{plan_id}/events",
            f"/plans/{plan_id}?version={last}",
        ):
            raw = (await http.get(path, headers=auth(BUYER))).text
            assert SECRET_TEXT not in raw and '"secret"' not in raw, path
        events = (await http.get(f"/plans/{plan_id}/events", headers=auth(BUYER))).json()["events"]
        assert [e["version"] for e in events] == list(
            range(1, last + 1)
        )  # contiguous, with placeholders
        redacted = [e for e in events if e["type"] == "Redacted"]
        assert len(redacted) == 3 and all(
            set(e) >= {"version", "data_digest", "hash"} and "data" not in e for e in redacted
        )
        frames: list[str] = []
        async with asyncio.timeout(5):
            while True:
                frame = str(await buyer_ws.recv())
                frames.append(frame)
                m = json.loads(frame)
                if m["op"] == "event" and m["event"]["version"] == last:
                    break
        assert all(SECRET_TEXT not in f and '"secret"' not in f for f in frames)
        # the buyer cannot touch it either
        r = await post(
            http, plan_id, "set_action_item_status", {"id": "secret", "status": "done"}, BUYER
        )
        assert r.status_code == 403
        await buyer_ws.close()


# -- limits and the admin log ------------------------------------------------------------------


async def test_commands_over_the_rate_limit_get_429_on_http_and_socket(
    database_url: str, tmp_path: Path
):
    settings = settings_for(database_url, tmp_path, command_rate=2.0, command_burst=3)
    async with running_app(settings) as base, httpx.AsyncClient(base_url=base) as http:
        r = await http.post(
            "/plans",
            json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
            headers=auth(SELLER),
        )
        plan_id = r.json()["plan_id"]
        codes = [
            (await post(http, plan_id, "add_comment", {"item_id": "plan", "text": "x"})).status_code
            for _ in range(4)
        ]
        assert codes[:2] == [200, 200] and codes[-1] == 429
        limited = await post(http, plan_id, "add_comment", {"item_id": "plan", "text": "x"})
        assert (
            limited.json()["error"]["code"] == "rate_limited"
            and int(limited.headers["retry-after"]) >= 1
        )
        async with connect(base.replace("http", "ws") + "/ws") as ws:
            await ws.send(json.dumps({"op": "auth", "token": token(SELLER)}))
            await ws.recv()
            await ws.send(
                json.dumps(
                    {
                        "op": "command",
                        "plan_id": plan_id,
                        "command_id": "c",
                        "type": "add_comment",
                        "data": {"item_id": "plan", "text": "x"},
                    }
                )
            )
            m = json.loads(await ws.recv())
            assert m["op"] == "reject" and m["code"] == "rate_limited"
        # other users are not affected
        assert (await http.get(f"/plans/{plan_id}", headers=auth(SELLER))).status_code == 200


async def test_global_log_is_for_admins_and_pages_by_cursor(sec_base: str):
    async with httpx.AsyncClient(base_url=sec_base) as http:
        assert (await http.get("/log", headers=auth(SELLER))).status_code == 403
        r = await http.post(
            "/plans",
            json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
            headers=auth(SELLER),
        )
        plan_id = r.json()["plan_id"]
        seen: list[tuple[str, int]] = []
        cursor = ""
        for _ in range(1000):
            page = (
                await http.get("/log", params={"after": cursor, "limit": 50}, headers=auth(ADMIN))
            ).json()
            seen += [(e["plan_id"], e["version"]) for e in page["events"]]
            if not page["events"]:
                break
            cursor = page["next"]
        assert (plan_id, 1) in seen and (plan_id, 2) in seen and len(seen) == len(set(seen))
        assert (
            await http.get("/log", params={"after": "x"}, headers=auth(ADMIN))
        ).status_code == 400


async def test_presence_never_tells_the_other_side_which_internal_item_is_open(sec_base: str):
    async with httpx.AsyncClient(base_url=sec_base) as http:
        plan_id = await plan_with_buyer(http)
        await post(http, plan_id, "add_milestone", {"id": "m1", "title": "Business case"})
        await post(
            http,
            plan_id,
            "add_action_item",
            {"id": "disc", "milestone_id": "m1", "title": "Discount", "visibility": "internal"},
        )
    ws_url = sec_base.replace("http", "ws") + "/ws"
    async with connect(ws_url) as seller, connect(ws_url) as buyer:
        raw_to_buyer: list[str] = []

        async def presence_frames(ws: Any, until: Any) -> list[list[dict[str, Any]]]:
            frames: list[list[dict[str, Any]]] = []
            async with asyncio.timeout(10):
                while not frames or not until(frames[-1]):
                    raw = await ws.recv()
                    if ws is buyer:
                        raw_to_buyer.append(raw)
                    m = json.loads(raw)
                    if m["op"] == "presence":
                        frames.append(m["viewers"])
            return frames

        def both_here(viewers: list[dict[str, Any]]) -> bool:
            return {v["user"] for v in viewers} == {SELLER, BUYER}

        def seller_on_item(viewers: list[dict[str, Any]]) -> bool:
            return {"user": SELLER, "side": "seller", "item_id": "disc"} in viewers

        for ws, who in ((seller, SELLER), (buyer, BUYER)):
            await ws.send(json.dumps({"op": "auth", "token": token(who)}))
            await ws.recv()
            await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
        # both see each other first (presence broadcasts are throttled and coalesced, so
        # the change below must come after this, or it would be folded into the same frame)
        await presence_frames(seller, both_here)
        await presence_frames(buyer, both_here)
        await seller.send(json.dumps({"op": "presence", "plan_id": plan_id, "item_id": "disc"}))
        await presence_frames(seller, seller_on_item)  # the seller's own side sees the item
        # the same broadcast reaches the buyer: a new frame, without the item
        [after] = (await presence_frames(buyer, lambda _: True))[-1:]
        assert {"user": SELLER, "side": "seller", "item_id": None} in after
        assert not any("disc" in raw for raw in raw_to_buyer)
        await buyer.send(json.dumps({"op": "presence", "plan_id": plan_id, "item_id": "disc"}))
        while True:
            m = json.loads(await buyer.recv())
            if m["op"] == "error":
                assert m["code"] == "not_found"
                break


async def test_socket_limits_and_an_expired_token(database_url: str, tmp_path: Path):
    from server.tokens import issue
    from tests.support import SECRET

    settings = settings_for(
        database_url, tmp_path, ws_max_subscriptions=1, ws_max_message_bytes=2000
    )
    async with running_app(settings) as base, httpx.AsyncClient(base_url=base) as http:
        ids = []
        for _ in range(2):
            r = await http.post(
                "/plans",
                json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
                headers=auth(SELLER),
            )
            ids.append(r.json()["plan_id"])
        ws_url = base.replace("http", "ws") + "/ws"
        async with connect(ws_url) as ws:
            await ws.send(json.dumps({"op": "auth", "token": token(SELLER)}))
            await ws.recv()
            await ws.send(json.dumps({"op": "subscribe", "plan_id": ids[0]}))
            await ws.send(json.dumps({"op": "subscribe", "plan_id": ids[1]}))
            await ws.send(json.dumps({"op": "ping", "pad": "x" * 3000}))
            errors: list[str] = []
            while len(errors) < 2:
                m = json.loads(await ws.recv())
                if m["op"] == "error":
                    errors.append(m["code"])
            assert errors == ["malformed", "payload_too_large"]
        async with connect(ws_url) as ws:
            await ws.send(json.dumps({"op": "auth", "token": issue(SELLER, SECRET, -5)}))
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
            assert caught.value.rcvd is not None and caught.value.rcvd.code == 4001
