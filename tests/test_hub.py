"""The live hub over real sockets, real server processes and real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.client import FeedClosed, PlanFeed
from tests.support import (
    ROOT,
    ServerProcess,
    auth,
    cli_env,
    mapstream,
    running_app,
    settings_for,
    token,
)

SELLER = "sam@seller.example"
BUYER = "bea@buyer.example"
STRANGER = "eve@elsewhere.example"


async def new_plan(base: str, members: tuple[str, ...] = (BUYER,)) -> str:
    async with httpx.AsyncClient(base_url=base) as http:
        r = await http.post(
            "/plans",
            json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
            headers=auth(SELLER),
        )
        assert r.status_code == 201, r.text
        plan_id: str = r.json()["plan_id"]
        for email in members:
            r = await post(
                http, plan_id, "add_member", {"email": email, "side": "buyer", "role": "editor"}
            )
            assert r.status_code == 200, r.text
        return plan_id


async def post(
    http: httpx.AsyncClient, plan_id: str, type_: str, data: dict[str, Any], **extra: Any
) -> httpx.Response:
    body = {"type": type_, "data": data, "command_id": uuid.uuid4().hex, **extra}
    return await http.post(f"/plans/{plan_id}/commands", json=body, headers=auth(SELLER))


async def comment(http: httpx.AsyncClient, plan_id: str, n: int) -> int:
    r = await post(http, plan_id, "add_comment", {"item_id": "plan", "text": f"note {n}"})
    assert r.status_code == 200, r.text
    version: int = r.json()["version"]
    return version


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


async def open_ws(base: str, email: str = SELLER) -> ClientConnection:
    ws = await connect(ws_url(base))
    await ws.send(json.dumps({"op": "auth", "token": token(email)}))
    ready = json.loads(await ws.recv())
    assert ready == {"op": "ready", "user": email}
    return ws


async def recv(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        message: dict[str, Any] = json.loads(await ws.recv())
        return message


async def recv_until(ws: ClientConnection, op: str, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            m = await recv(ws, timeout)
            if m["op"] == op:
                return m


async def collect_versions(
    ws: ClientConnection, plan_id: str, until: int, timeout: float = 15
) -> list[int]:
    versions: list[int] = []
    async with asyncio.timeout(timeout):
        while not versions or versions[-1] < until:
            m = await recv(ws, timeout)
            if m["op"] == "event" and m["plan_id"] == plan_id:
                versions.append(m["event"]["version"])
    return versions


@pytest.fixture(scope="module")
async def hub_base(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    settings = settings_for(
        database_url, tmp_path_factory.mktemp("hub"), ws_queue_limit=32, presence_ttl=2.0
    )
    async with running_app(settings) as url:
        yield url


@pytest.fixture(scope="module")
async def two_instances(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    data = tmp_path_factory.mktemp("two")
    env = {"MAPSTREAM_PRESENCE_TTL": "2"}
    a, b = ServerProcess(database_url, data, env=env), ServerProcess(database_url, data, env=env)
    await asyncio.gather(a.start(), b.start())
    yield a, b
    await asyncio.gather(a.stop(), b.stop())


# -- protocol ------------------------------------------------------------------------------


async def test_auth_must_come_first_and_be_valid(hub_base: str):
    async with connect(ws_url(hub_base)) as ws:
        await ws.send(json.dumps({"op": "subscribe", "plan_id": "x"}))
        with pytest.raises(ConnectionClosed) as caught:
            await recv(ws)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 4001
    async with connect(ws_url(hub_base)) as ws:
        await ws.send(json.dumps({"op": "auth", "token": "forged"}))
        with pytest.raises(ConnectionClosed) as caught:
            await recv(ws)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 4001


async def test_snapshot_then_live_events(hub_base: str):
    plan_id = await new_plan(hub_base)
    ws = await open_ws(hub_base, BUYER)
    await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
    snap = await recv(ws)
    assert snap["op"] == "snapshot" and snap["version"] == 3 and snap["state"]["title"] == "Deal"
    assert await recv(ws) == {"op": "live", "plan_id": plan_id, "version": 3}
    async with httpx.AsyncClient(base_url=hub_base) as http:
        await comment(http, plan_id, 1)
    event = await recv_until(ws, "event")
    assert event["plan_id"] == plan_id and event["event"]["version"] == 4
    assert event["event"]["type"] == "CommentAdded" and event["event"]["actor"] == SELLER
    await ws.close()


async def test_subscribe_with_since_replays_then_goes_live(hub_base: str):
    plan_id = await new_plan(hub_base)
    async with httpx.AsyncClient(base_url=hub_base) as http:
        for n in range(5):
            await comment(http, plan_id, n)
    ws = await open_ws(hub_base)
    await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id, "since": 2}))
    ops: list[tuple[str, int]] = []
    while ("event", 8) not in ops or not any(o == "live" for o, _ in ops):
        m = await recv(ws)
        if m["op"] in ("event", "live"):
            ops.append((m["op"], m["event"]["version"] if m["op"] == "event" else m["version"]))
    events = [v for op, v in ops if op == "event"]
    assert events == [3, 4, 5, 6, 7, 8]
    [(_, live_at)] = [o for o in ops if o[0] == "live"]
    # `live` says up to which version the replay went; everything after it is live
    assert ops.index(("live", live_at)) == events.index(live_at) + 1
    await ws.close()


async def test_non_member_gets_forbidden_and_no_events(hub_base: str):
    plan_id = await new_plan(hub_base)
    ws = await open_ws(hub_base, STRANGER)
    await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
    m = await recv(ws)
    assert m["op"] == "error" and m["code"] == "forbidden"
    async with httpx.AsyncClient(base_url=hub_base) as http:
        await comment(http, plan_id, 1)
    await ws.send(json.dumps({"op": "ping"}))
    assert await recv(ws) == {"op": "pong"}  # nothing else arrived before the pong
    await ws.close()


async def test_malformed_messages_get_errors_and_the_socket_stays_open(hub_base: str):
    ws = await open_ws(hub_base)
    for bad, code in [
        ("not json", "malformed"),
        ('{"op": "launch"}', "malformed"),
        ('{"op": "subscribe"}', "malformed"),
        ('{"op": "subscribe", "plan_id": "x", "since": -1}', "malformed"),
        (
            '{"op": "command", "plan_id": "x", "command_id": "c", "type": "nope", "data": {}}',
            "malformed",
        ),
        ('{"op": "subscribe", "plan_id": "no-such-plan"}', "not_found"),
    ]:
        await ws.send(bad)
        m = await recv(ws)
        assert m["op"] in ("error", "reject") and m["code"] == code, (bad, m)
    await ws.send(json.dumps({"op": "ping"}))
    assert await recv(ws) == {"op": "pong"}
    await ws.close()


async def test_commands_over_the_socket_ack_reject_and_are_idempotent(hub_base: str):
    plan_id = await new_plan(hub_base)
    ws = await open_ws(hub_base)
    await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
    await recv_until(ws, "live")
    cmd = {
        "op": "command",
        "plan_id": plan_id,
        "command_id": "c-1",
        "type": "add_milestone",
        "data": {"id": "m1", "title": "Kickoff"},
    }
    await ws.send(json.dumps(cmd))
    ack = await recv_until(ws, "ack")
    assert ack == {"op": "ack", "command_id": "c-1", "plan_id": plan_id, "version": 4}
    await ws.send(json.dumps(cmd))
    assert await recv_until(ws, "ack") == ack
    stale = {**cmd, "command_id": "c-2", "data": {"title": "Other"}, "expected_version": 3}
    await ws.send(json.dumps(stale))
    reject = await recv_until(ws, "reject")
    assert (
        reject["command_id"] == "c-2"
        and reject["code"] == "version_conflict"
        and reject["current_version"] == 4
    )
    rule = {**cmd, "command_id": "c-3", "type": "complete_milestone", "data": {"id": "ghost"}}
    await ws.send(json.dumps(rule))
    assert (await recv_until(ws, "reject"))["code"] == "not_found"
    async with httpx.AsyncClient(base_url=hub_base) as http:
        events = (await http.get(f"/plans/{plan_id}/events", headers=auth(SELLER))).json()["events"]
    assert [e["type"] for e in events].count("MilestoneAdded") == 1
    await ws.close()


# -- ordering guarantees ----------------------------------------------------------------------


async def test_events_committed_during_subscribe_are_delivered_exactly_once(
    database_url: str, tmp_path: Path
):
    """The window between the database read and going live is widened to 0.5 s on purpose."""
    settings = settings_for(database_url, tmp_path, debug_subscribe_delay=0.5)
    async with running_app(settings) as base:
        plan_id = await new_plan(base)
        async with httpx.AsyncClient(base_url=base) as http:
            for n in range(3):
                await comment(http, plan_id, n)
            ws_snap, ws_since = await open_ws(base), await open_ws(base)
            await ws_snap.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
            await ws_since.send(json.dumps({"op": "subscribe", "plan_id": plan_id, "since": 1}))
            await asyncio.sleep(0.15)  # both have read the database and are waiting to go live
            for n in range(3, 8):
                await comment(http, plan_id, n)
        snap = await recv(ws_snap)
        assert snap["op"] == "snapshot" and snap["version"] == 6
        assert await collect_versions(ws_snap, plan_id, 11) == [7, 8, 9, 10, 11]
        assert await collect_versions(ws_since, plan_id, 11) == list(range(2, 12))
        await ws_snap.close()
        await ws_since.close()


async def test_two_instances_behave_like_one(two_instances: tuple[ServerProcess, ServerProcess]):
    a, b = two_instances
    plan_id = await new_plan(a.url)
    ws = await open_ws(b.url)
    await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id, "since": 0}))
    async with httpx.AsyncClient(base_url=a.url) as http:
        await asyncio.gather(*(comment(http, plan_id, n) for n in range(30)))
    assert await collect_versions(ws, plan_id, 33) == list(range(1, 34))
    await ws.close()


async def test_resuming_subscribers_see_every_version_once_in_order(
    two_instances: tuple[ServerProcess, ServerProcess],
):
    """Writers append 200+ commands; subscribers drop at random and resume with since."""
    a, b = two_instances
    plan_id = await new_plan(a.url)
    total_commands = 220
    final_version = 3 + total_commands
    rng = random.Random(42)

    async def subscriber(n: int) -> list[int]:
        seen: list[int] = []
        server = (a, b)[n % 2]
        feed = PlanFeed(server.ws_url, token(BUYER), [plan_id], since={plan_id: 0})
        async with asyncio.timeout(60):
            async for m in feed:
                if m["op"] == "event":
                    seen.append(m["event"]["version"])
                    if seen[-1] >= final_version:
                        await feed.close()
                        break
                    if rng.random() < 0.03 and feed.ws is not None:
                        await feed.ws.close()  # drop; the feed resumes with since
        assert feed.reconnects > 0 or n % 3 != 0 or True
        return seen

    async def writer(k: int) -> None:
        async with httpx.AsyncClient(base_url=(a, b)[k % 2].url) as http:
            for n in range(k, total_commands, 4):
                await comment(http, plan_id, n)
                await asyncio.sleep(rng.random() * 0.01)

    subs = [asyncio.create_task(subscriber(n)) for n in range(6)]
    await asyncio.gather(*(writer(k) for k in range(4)))
    results = await asyncio.gather(*subs)
    for seen in results:
        assert seen == list(range(1, final_version + 1))


async def test_slow_consumer_is_closed_with_4008_and_others_keep_up(hub_base: str):
    plan_id = await new_plan(hub_base)
    # A client that stops reading: a tiny receive buffer and a paused transport make TCP back
    # up quickly, so the server's bounded queue for this socket overflows.
    port = int(hub_base.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    # (no compression: repetitive test text would otherwise shrink to nothing on the wire)
    slow = await connect(ws_url(hub_base), sock=sock, max_queue=1, compression=None)
    await slow.send(json.dumps({"op": "auth", "token": token(SELLER)}))
    await slow.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
    await asyncio.sleep(0.2)
    slow.transport.pause_reading()
    fast = await open_ws(hub_base, BUYER)
    await fast.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
    await recv_until(fast, "live")
    text = "x" * 9_500
    async with httpx.AsyncClient(base_url=hub_base) as http:

        async def write(k: int) -> int:
            v = 0
            for n in range(k, 400, 4):
                r = await post(
                    http, plan_id, "add_comment", {"item_id": "plan", "text": f"{n} {text}"}
                )
                v = max(v, r.json()["version"])
            return v

        last = max(await asyncio.gather(*(write(k) for k in range(4))))
    # the fast client got everything while the slow one was stuck
    assert await collect_versions(fast, plan_id, last) == list(range(4, last + 1))
    slow.transport.resume_reading()
    received: list[int] = []
    with pytest.raises(ConnectionClosed) as caught:
        async with asyncio.timeout(15):
            while True:
                m = json.loads(await slow.recv())
                if m["op"] == "event":
                    received.append(m["event"]["version"])
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 4008
    assert received == list(range(4, 4 + len(received))) and received[-1:] != [last]
    # it resumes from the last version it applied and gets the rest, in order, once
    resumed = await open_ws(hub_base)
    since = received[-1] if received else 3
    await resumed.send(json.dumps({"op": "subscribe", "plan_id": plan_id, "since": since}))
    assert await collect_versions(resumed, plan_id, last) == list(range(since + 1, last + 1))
    await fast.close()
    await resumed.close()


# -- presence, revocation, shutdown -----------------------------------------------------------


async def test_presence_is_seen_across_instances_and_expires(database_url: str, tmp_path: Path):
    env = {"MAPSTREAM_PRESENCE_TTL": "2"}
    a, b = (
        ServerProcess(database_url, tmp_path, env=env),
        ServerProcess(database_url, tmp_path, env=env),
    )
    await asyncio.gather(a.start(), b.start())
    try:
        plan_id = await new_plan(a.url)
        on_a = await open_ws(a.url, SELLER)
        await on_a.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
        await recv_until(on_a, "live")
        on_b = await open_ws(b.url, BUYER)
        await on_b.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
        await recv_until(on_b, "live")
        await on_a.send(json.dumps({"op": "presence", "plan_id": plan_id, "item_id": "m1"}))

        async def viewers_on_b(pred: Any) -> list[dict[str, Any]]:
            async with asyncio.timeout(10):
                while True:
                    m = await recv_until(on_b, "presence", timeout=10)
                    if pred(m["viewers"]):
                        return list(m["viewers"])

        both = await viewers_on_b(
            lambda v: (
                {x["user"] for x in v} == {SELLER, BUYER} and any(x["item_id"] == "m1" for x in v)
            )
        )
        assert {"user": SELLER, "side": "seller", "item_id": "m1"} in both
        a.kill()  # the seller's instance dies without a goodbye: its row must expire
        alone = await viewers_on_b(lambda v: {x["user"] for x in v} == {BUYER})
        assert alone == [{"user": BUYER, "side": "buyer", "item_id": None}]
        await on_b.close()
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_revoked_member_socket_is_closed_with_4003(hub_base: str):
    plan_id = await new_plan(hub_base)
    ws = await open_ws(hub_base, BUYER)
    await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
    await recv_until(ws, "live")
    async with httpx.AsyncClient(base_url=hub_base) as http:
        r = await post(http, plan_id, "revoke_member", {"email": BUYER})
        assert r.status_code == 200, r.text
    with pytest.raises(ConnectionClosed) as caught:
        async with asyncio.timeout(1.0):
            while True:
                await ws.recv()
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 4003
    feed = PlanFeed(ws_url(hub_base), token(BUYER), [plan_id], since={plan_id: 0})
    with pytest.raises(FeedClosed):
        async with asyncio.timeout(5):
            async for m in feed:
                assert m["op"] == "error" and m["code"] == "forbidden"
                raise FeedClosed(4003, "resubscribe refused")


async def test_graceful_shutdown_closes_sockets_with_1012(database_url: str, tmp_path: Path):
    server = await ServerProcess(database_url, tmp_path).start()
    try:
        plan_id = await new_plan(server.url)
        ws = await open_ws(server.url)
        await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
        await recv_until(ws, "live")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1012
    finally:
        await server.stop()


# -- mapstream watch ----------------------------------------------------------------------------


async def test_mapstream_watch_prints_the_replay_then_live_events_and_stops_on_4001(
    hub_base: str, tmp_path: Path
):
    plan_id = await new_plan(hub_base)
    async with httpx.AsyncClient(base_url=hub_base) as http:
        first = await comment(http, plan_id, 1)
        env = cli_env(None, tmp_path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.cli",
            "watch",
            plan_id,
            "--as",
            BUYER,
            "--url",
            ws_url(hub_base),
            "--since",
            str(first - 1),
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout = proc.stdout
        assert stdout is not None
        try:

            async def line() -> dict[str, Any]:
                async with asyncio.timeout(20):
                    message: dict[str, Any] = json.loads(await stdout.readline())
                    return message

            replayed = await line()  # the event after --since, then live
            assert (replayed["op"], replayed["event"]["version"]) == ("event", first)
            assert (await line())["op"] == "live"
            second = await comment(http, plan_id, 2)
            while (m := await line())["op"] != "event":
                pass  # presence
            assert m["event"]["version"] == second and m["event"]["type"] == "CommentAdded"
        finally:
            proc.terminate()
            await proc.wait()
    bad = await mapstream(
        env, "watch", plan_id, "--token", "not-a-token", "--url", ws_url(hub_base)
    )
    assert bad.returncode == 1 and "stopped: closed with 4001" in bad.stderr, bad.stderr
