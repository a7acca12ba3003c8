"""Plans for the auditor tests: a buyer and a seller team, and a CLI runner."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from server.store import Store
from tests.support import auth

SELLER = "sam.seller@northwind.example"
BUYER = "ramesh.iyer@contoso.example"
STRANGER = "eve@elsewhere.example"


async def command(
    client: httpx.AsyncClient, plan_id: str, type_: str, who: str = SELLER, **data: Any
) -> dict[str, Any]:
    body = {"type": type_, "data": data, "command_id": uuid.uuid4().hex}
    r = await client.post(f"/plans/{plan_id}/commands", json=body, headers=auth(who))
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def new_plan(client: httpx.AsyncClient) -> str:
    """A plan with Sam (seller owner) and Ramesh (buyer editor, stakeholder 'security')."""
    r = await client.post(
        "/plans",
        json={
            "title": "Contoso evaluates Northwind",
            "buyer_org": "Contoso",
            "seller_org": "Northwind",
            "side": "seller",
            "name": "Sam Seller",
        },
        headers=auth(SELLER),
    )
    assert r.status_code == 201, r.text
    plan_id: str = r.json()["plan_id"]
    await command(client, plan_id, "add_member", email=BUYER, side="buyer", role="editor")
    await command(
        client,
        plan_id,
        "add_stakeholder",
        id="ramesh",
        name="Ramesh Iyer",
        side="buyer",
        persona="security",
        email=BUYER,
    )
    await command(
        client,
        plan_id,
        "add_milestone",
        id="security",
        title="Security sign-off",
        owner="ramesh",
        due="2026-06-16",
    )
    return plan_id


async def get(client: httpx.AsyncClient, path: str, who: str = SELLER, **params: Any) -> Any:
    r = await client.get(path, params=params, headers=auth(who))
    assert r.status_code == 200, r.text
    return r.json()


async def settled(store: Store, plan_id: str, timeout: float = 10.0) -> None:
    """Wait until the global log shows every event of `plan_id` to its readers.

    A transaction still open anywhere in the cluster (another test database, a benchmark)
    holds the log's horizon back for a moment; a runner's `catch_up` stops at the horizon."""
    events = await store.read_stream(plan_id)
    if not events:
        return
    last = events[-1].cursor
    for _ in range(int(timeout / 0.01)):
        if await store.log_head() >= last:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"the log did not show {plan_id} v{events[-1].version} in {timeout} s")
