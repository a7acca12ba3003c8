"""Faults: a PostgreSQL restart and a killed server instance lose no acknowledged command."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from domain.base import Recorded
from domain.decider import decode_event, fold, schema_version_of
from domain.model import Plan
from domain.visibility import view_for
from server.client import PlanFeed
from server.plans import PlanService
from server.store import Store
from tests.support import ServerProcess, auth, token

SELLER = "sam@seller.example"
BUYER = "bea@buyer.example"

pytestmark = pytest.mark.slow


async def new_plan(http: httpx.AsyncClient) -> str:
    r = await http.post(
        "/plans",
        json={"title": "Deal", "buyer_org": "B", "seller_org": "S", "side": "seller"},
        headers=auth(SELLER),
    )
    assert r.status_code == 201, r.text
    plan_id: str = r.json()["plan_id"]
    r = await http.post(
        f"/plans/{plan_id}/commands",
        json={
            "type": "add_member",
            "data": {"email": BUYER, "side": "buyer", "role": "viewer"},
            "command_id": "m",
        },
        headers=auth(SELLER),
    )
    assert r.status_code == 200
    return plan_id


def comment(n: Any) -> dict[str, Any]:
    return {
        "type": "add_comment",
        "data": {"item_id": "plan", "text": f"note {n}"},
        "command_id": f"cmd-{n}",
    }


async def test_postgres_restart_gives_503_then_recovers_without_doubling(tmp_path: Path):
    """The server stays up while its database is gone, then reconnects pool and followers."""
    from server.database import embedded_server

    pg = await asyncio.to_thread(embedded_server, str(tmp_path / "own"))
    url = str(pg.get_uri())
    server = await ServerProcess(url, tmp_path).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            plan_id = await new_plan(http)
            feed = PlanFeed(server.ws_url, token(BUYER), [plan_id], since={plan_id: 0})
            versions: list[int] = []

            async def follow() -> None:
                async for m in feed:
                    if m["op"] == "event":
                        versions.append(m["event"]["version"])

            follower = asyncio.create_task(follow())
            first = await http.post(
                f"/plans/{plan_id}/commands", json=comment(1), headers=auth(SELLER)
            )
            assert first.status_code == 200
            await asyncio.to_thread(pg.stop)
            down = await http.post(
                f"/plans/{plan_id}/commands", json=comment(2), headers=auth(SELLER)
            )
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "unavailable" and down.headers["retry-after"]
            assert (await http.get("/readyz")).status_code == 503
            assert (await http.get("/healthz")).status_code == 200  # alive all the same
            await asyncio.to_thread(pg.start)
            # the client retries the same command_id until it is acknowledged, then once more
            answer = None
            for _ in range(100):
                r = await http.post(
                    f"/plans/{plan_id}/commands", json=comment(2), headers=auth(SELLER)
                )
                if r.status_code == 200:
                    answer = r.json()
                    break
                assert r.status_code == 503, r.text
                await asyncio.sleep(0.2)
            assert answer is not None, "the server did not recover after PostgreSQL came back"
            again = await http.post(
                f"/plans/{plan_id}/commands", json=comment(2), headers=auth(SELLER)
            )
            assert again.json() == answer
            events = (await http.get(f"/plans/{plan_id}/events", headers=auth(SELLER))).json()[
                "events"
            ]
            assert [e["command_id"] for e in events].count("cmd-2") == 1
            assert [e["version"] for e in events] == list(range(1, len(events) + 1))
            # the live feed resumes too and ends with every version once, in order
            async with asyncio.timeout(20):
                while not versions or versions[-1] < events[-1]["version"]:
                    await asyncio.sleep(0.05)
            assert versions == list(range(1, events[-1]["version"] + 1))
            await feed.close()
            follower.cancel()
    finally:
        await server.stop()
        await asyncio.to_thread(pg.stop)


async def test_killed_instance_loses_no_acknowledged_command(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
):
    """Two instances, writers and 50 subscribers; kill -9 one mid-stream; everyone converges."""
    a, b = ServerProcess(database_url, tmp_path), ServerProcess(database_url, tmp_path)
    await asyncio.gather(a.start(), b.start())
    try:
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
            plan_id = await new_plan(http)
        acked: dict[str, int] = {}
        stop_writing = asyncio.Event()

        async def writer(k: int) -> None:
            urls = [a.url, b.url]
            n = 0
            async with httpx.AsyncClient(timeout=5) as http:
                while not stop_writing.is_set():
                    command = comment(f"{k}-{n}")
                    for attempt in range(50):  # retry the same command_id on another instance
                        url = urls[(k + attempt) % 2]
                        try:
                            r = await http.post(
                                f"{url}/plans/{plan_id}/commands",
                                json=command,
                                headers=auth(SELLER),
                            )
                        except httpx.TransportError:
                            continue
                        if r.status_code == 200:
                            acked[command["command_id"]] = r.json()["version"]
                            break
                    n += 1
                    await asyncio.sleep(0.01)

        feeds = [
            PlanFeed(
                f"{(a, b)[n % 2].ws_url},{(b, a)[n % 2].ws_url}",
                token(BUYER),
                [plan_id],
                since={plan_id: 0},
            )
            for n in range(50)
        ]
        seen: list[list[int]] = [[] for _ in feeds]
        states = [Plan(id=plan_id) for _ in feeds]  # each client's own fold of what it got

        async def follow(n: int) -> None:
            async for m in feeds[n]:
                if m["op"] == "event":
                    e = m["event"]
                    seen[n].append(e["version"])
                    if e["version"] == states[n].version + 1:
                        event = decode_event(
                            e["type"], schema_version_of(e["type"]), json.dumps(e["data"]).encode()
                        )
                        at = datetime.fromisoformat(e["recorded_at"])
                        states[n] = fold([Recorded(e["version"], e["actor"], at, event)], states[n])

        followers = [asyncio.create_task(follow(n)) for n in range(len(feeds))]
        writers = [asyncio.create_task(writer(k)) for k in range(4)]
        await asyncio.sleep(2.0)
        a.kill()  # mid-stream, no goodbye
        await asyncio.sleep(2.0)
        stop_writing.set()
        await asyncio.gather(*writers)
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
            events = (await http.get(f"/plans/{plan_id}/events", headers=auth(SELLER))).json()[
                "events"
            ]
        head = events[-1]["version"]
        assert [e["version"] for e in events] == list(range(1, head + 1))
        by_command: dict[str, list[int]] = {}
        for e in events:
            by_command.setdefault(e["command_id"], []).append(e["version"])
        for command_id, version in acked.items():
            assert by_command.get(command_id) == [version], command_id  # exactly once, as acked
        assert len(acked) > 20
        async with asyncio.timeout(30):
            while any(not s or s[-1] < head for s in seen):
                await asyncio.sleep(0.1)
        for s in seen:
            assert s == list(range(1, head + 1))
        # every client's state is byte for byte a fresh fold of the stored events (the buyer's
        # view, as the buyer's GET answers it)
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
            served = (await http.get(f"/plans/{plan_id}", headers=auth(BUYER))).json()
        fresh = await PlanService(Store(pool)).current(plan_id)
        fresh_bytes = msgspec.json.encode(view_for(fresh, "buyer"))
        assert msgspec.json.decode(fresh_bytes) == served["state"]
        assert all(msgspec.json.encode(view_for(st, "buyer")) == fresh_bytes for st in states)
        assert any(f.reconnects > 0 for f in feeds)
        for f in feeds:
            await f.close()
        for t in followers:
            t.cancel()
    finally:
        await asyncio.gather(a.stop(), b.stop())
