"""The HTTP API over a real socket: every error code, and a refused request changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from server.tokens import issue
from tests.support import SECRET, auth

SELLER = "sam@seller.example"
BUYER = "bea@buyer.example"
STRANGER = "eve@elsewhere.example"


async def new_plan(http: httpx.AsyncClient, **extra: Any) -> str:
    body = {
        "title": "Evaluation",
        "buyer_org": "Contoso",
        "seller_org": "Northwind",
        "side": "seller",
        **extra,
    }
    r = await http.post("/plans", json=body, headers=auth(SELLER))
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    plan_id: str = r.json()["plan_id"]
    return plan_id


async def command(
    http: httpx.AsyncClient,
    plan_id: str,
    type_: str,
    data: dict[str, Any],
    *,
    who: str = SELLER,
    command_id: str | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {"type": type_, "data": data, "command_id": command_id or uuid.uuid4().hex, **extra}
    return await http.post(f"/plans/{plan_id}/commands", json=body, headers=auth(who))


async def snapshot(http: httpx.AsyncClient, plan_id: str) -> tuple[Any, Any]:
    state = (await http.get(f"/plans/{plan_id}", headers=auth(SELLER))).json()
    events = (await http.get(f"/plans/{plan_id}/events", headers=auth(SELLER))).json()
    return state, events


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()["error"]
    assert body["code"] == code, body
    assert body["message"]
    return body


async def test_create_command_and_read_back(http: httpx.AsyncClient):
    plan_id = await new_plan(http, compelling_event={"name": "Go-live", "date": "2027-03-01"})
    r = await command(
        http,
        plan_id,
        "add_milestone",
        {"id": "m1", "title": "Security sign-off", "due": "2027-01-10"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 3
    [event] = body["events"]
    assert event["type"] == "MilestoneAdded" and event["version"] == 3 and event["actor"] == SELLER
    assert event["data"]["title"] == "Security sign-off"
    state = (await http.get(f"/plans/{plan_id}", headers=auth(SELLER))).json()
    assert state["version"] == 3 and state["state"]["milestones"]["m1"]["due"] == "2027-01-10"
    assert state["state"]["compelling_event"] == {"name": "Go-live", "date": "2027-03-01"}
    events = (
        await http.get(f"/plans/{plan_id}/events?since=1&limit=1", headers=auth(SELLER))
    ).json()
    assert [e["version"] for e in events["events"]] == [2]
    assert set(events["events"][0]) >= {
        "plan_id",
        "version",
        "position",
        "type",
        "data",
        "actor",
        "command_id",
        "recorded_at",
        "hash",
    }


async def test_server_assigns_ids_and_repeated_command_id_returns_first_answer(
    http: httpx.AsyncClient,
):
    plan_id = await new_plan(http)
    first = await command(http, plan_id, "add_milestone", {"title": "Kickoff"}, command_id="once")
    again = await command(http, plan_id, "add_milestone", {"title": "Kickoff"}, command_id="once")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["events"][0]["data"]["id"]
    _, events = await snapshot(http, plan_id)
    assert len(events["events"]) == 3


async def test_time_travel_by_version_and_time(http: httpx.AsyncClient):
    plan_id = await new_plan(http)
    await command(
        http, plan_id, "add_milestone", {"id": "m1", "title": "Kickoff", "due": "2027-01-01"}
    )
    between = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await command(
        http,
        plan_id,
        "reschedule_milestone",
        {"id": "m1", "due": "2027-02-01", "reason": "CFO away"},
    )
    old = (await http.get(f"/plans/{plan_id}?version=3", headers=auth(SELLER))).json()
    assert old["version"] == 3 and old["state"]["milestones"]["m1"]["due"] == "2027-01-01"
    at = (
        await http.get(
            f"/plans/{plan_id}", params={"at": between.isoformat()}, headers=auth(SELLER)
        )
    ).json()
    assert at["version"] == 3
    now = (await http.get(f"/plans/{plan_id}", headers=auth(SELLER))).json()
    assert now["state"]["milestones"]["m1"]["due"] == "2027-02-01"
    assert now["state"]["milestones"]["m1"]["slips"][0]["reason"] == "CFO away"
    error(await http.get(f"/plans/{plan_id}?version=99", headers=auth(SELLER)), 404, "not_found")
    error(await http.get(f"/plans/{plan_id}?at=yesterday", headers=auth(SELLER)), 400, "malformed")
    error(
        await http.get(f"/plans/{plan_id}?at=2000-01-01T00:00:00Z", headers=auth(SELLER)),
        404,
        "not_found",
    )


# -- every error, and nothing changes ----------------------------------------------------------

BAD_COMMANDS: list[tuple[str, Any, int, str, str | None]] = [
    ("malformed JSON", b"{not json", 400, "malformed", None),
    (
        "unknown command type",
        {"type": "launch_rocket", "data": {}, "command_id": "x"},
        400,
        "malformed",
        "type",
    ),
    (
        "a command only the server issues",
        {"type": "join_plan", "data": {"side": "buyer", "role": "owner"}, "command_id": "x"},
        400,
        "malformed",
        "type",
    ),
    (
        "missing field",
        {"type": "add_milestone", "data": {}, "command_id": "x"},
        400,
        "malformed",
        "title",
    ),
    (
        "wrong type",
        {"type": "add_milestone", "data": {"title": "A", "due": 5}, "command_id": "x"},
        400,
        "malformed",
        "due",
    ),
    (
        "unknown field",
        {"type": "add_milestone", "data": {"title": "A", "colour": "red"}, "command_id": "x"},
        400,
        "malformed",
        "colour",
    ),
    (
        "missing command_id",
        {"type": "add_milestone", "data": {"title": "A"}},
        400,
        "malformed",
        "command_id",
    ),
    (
        "empty title",
        {"type": "add_milestone", "data": {"title": "  "}, "command_id": "x"},
        400,
        "malformed",
        "title",
    ),
    (
        "stale version",
        {"type": "add_milestone", "data": {"title": "A"}, "command_id": "x", "expected_version": 1},
        409,
        "version_conflict",
        None,
    ),
    (
        "rule",
        {"type": "add_dependency", "data": {"from_id": "m2", "to_id": "m1"}, "command_id": "x"},
        422,
        "rule_violation",
        None,
    ),
    (
        "unknown item",
        {"type": "complete_milestone", "data": {"id": "nope"}, "command_id": "x"},
        404,
        "not_found",
        None,
    ),
    (
        "owner not a stakeholder",
        {"type": "add_milestone", "data": {"title": "A", "owner": "ghost"}, "command_id": "x"},
        422,
        "rule_violation",
        None,
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "code", "field"), BAD_COMMANDS, ids=[c[0] for c in BAD_COMMANDS]
)
async def test_bad_command_gets_a_clear_error_and_changes_nothing(
    http: httpx.AsyncClient, case: str, body: Any, status: int, code: str, field: str | None
):
    plan_id = await new_plan(http)
    await command(http, plan_id, "add_milestone", {"id": "m1", "title": "One"})
    await command(http, plan_id, "add_milestone", {"id": "m2", "title": "Two"})
    await command(http, plan_id, "add_dependency", {"from_id": "m1", "to_id": "m2"})
    before = await snapshot(http, plan_id)
    content = body if isinstance(body, bytes) else None
    r = await http.post(
        f"/plans/{plan_id}/commands",
        content=content,
        json=None if content else body,
        headers=auth(SELLER),
    )
    err = error(r, status, code)
    if field is not None:
        assert err.get("field") == field, err
    if code == "version_conflict":
        assert err["current_version"] == 5
    if code == "rule_violation":
        assert err["rule"]
    assert await snapshot(http, plan_id) == before


async def test_body_over_the_limit_is_413_and_changes_nothing(http: httpx.AsyncClient):
    plan_id = await new_plan(http)
    before = await snapshot(http, plan_id)
    big = {
        "type": "add_comment",
        "data": {"item_id": "plan", "text": "x" * 300_000},
        "command_id": "big",
    }
    error(
        await http.post(f"/plans/{plan_id}/commands", json=big, headers=auth(SELLER)),
        413,
        "payload_too_large",
    )
    assert await snapshot(http, plan_id) == before


async def test_authentication_is_required_and_checked(http: httpx.AsyncClient):
    plan_id = await new_plan(http)
    error(await http.get(f"/plans/{plan_id}"), 401, "unauthorized")
    error(
        await http.get(f"/plans/{plan_id}", headers={"Authorization": "Bearer nonsense"}),
        401,
        "unauthorized",
    )
    expired = issue(SELLER, SECRET, ttl_seconds=-10)
    body = error(
        await http.get(f"/plans/{plan_id}", headers={"Authorization": f"Bearer {expired}"}),
        401,
        "unauthorized",
    )
    assert "expired" in body["message"]
    forged = issue(SELLER, "another-secret-that-is-long-enough-0123456789", 3600)
    error(
        await http.get(f"/plans/{plan_id}", headers={"Authorization": f"Bearer {forged}"}),
        401,
        "unauthorized",
    )
    tampered = issue(STRANGER, SECRET, 3600)
    head, _payload, sig = tampered.split(".")
    other_payload = issue(SELLER, SECRET, 3600).split(".")[1]
    error(
        await http.get(
            f"/plans/{plan_id}", headers={"Authorization": f"Bearer {head}.{other_payload}.{sig}"}
        ),
        401,
        "unauthorized",
    )
    error(await http.post("/plans", json={}), 401, "unauthorized")


async def test_unknown_and_foreign_plans_are_404_and_viewers_cannot_edit(http: httpx.AsyncClient):
    plan_id = await new_plan(http)
    error(await http.get("/plans/does-not-exist", headers=auth(SELLER)), 404, "not_found")
    error(await http.get(f"/plans/{plan_id}", headers=auth(STRANGER)), 404, "not_found")
    error(
        await command(http, plan_id, "add_milestone", {"title": "A"}, who=STRANGER),
        404,
        "not_found",
    )
    r = await command(
        http, plan_id, "add_member", {"email": BUYER, "side": "buyer", "role": "viewer"}
    )
    assert r.status_code == 200, r.text
    before = await snapshot(http, plan_id)
    error(
        await command(http, plan_id, "add_milestone", {"title": "A"}, who=BUYER), 403, "forbidden"
    )
    assert await snapshot(http, plan_id) == before
    assert (await http.get(f"/plans/{plan_id}", headers=auth(BUYER))).status_code == 200
    error(await http.get("/plans/bad%20id", headers=auth(SELLER)), 400, "malformed")
    error(await http.get("/no/such/route", headers=auth(SELLER)), 404, "not_found")


async def test_create_plan_validates_its_body(http: httpx.AsyncClient):
    error(await http.post("/plans", json={"title": "x"}, headers=auth(SELLER)), 400, "malformed")
    error(
        await http.post(
            "/plans",
            json={"title": "x", "buyer_org": "b", "seller_org": "s", "side": "middle"},
            headers=auth(SELLER),
        ),
        400,
        "malformed",
    )
    error(await http.post("/plans", content=b"[", headers=auth(SELLER)), 400, "malformed")


async def test_healthz(http: httpx.AsyncClient):
    r = await http.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
