"""Forking a closed-won plan: the lineage event, what is carried and what is not, the parent
hash checked both ways, and the plans that cannot be forked."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from domain.forks import RecordFork
from domain.model import ParentLink
from server.model_routes import _check_parent
from server.plans import PlanService
from server.store import Store
from tests.support import auth

SELLER = "fay@seller.example"
BUYER = "bo@buyer.example"
BUYER_OWNER = "bea@buyer.example"
VIEWER = "val@buyer.example"


async def send(
    http: httpx.AsyncClient, plan_id: str, type_: str, who: str = SELLER, **data: Any
) -> dict[str, Any]:
    body = {"type": type_, "command_id": uuid.uuid4().hex, "data": data}
    r = await http.post(f"/plans/{plan_id}/commands", json=body, headers=auth(who))
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def get(http: httpx.AsyncClient, path: str, who: str = SELLER) -> dict[str, Any]:
    r = await http.get(path, headers=auth(who))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def won_plan(http: httpx.AsyncClient, *, close: str | None = "won") -> str:
    """A deal with everything in it, then closed (won unless told otherwise)."""
    r = await http.post(
        "/plans",
        json={
            "title": "Contoso evaluates Northwind",
            "buyer_org": "Contoso",
            "seller_org": "Northwind",
            "side": "seller",
            "name": "Fay",
            "value_statement": "Assist Contoso with their evaluation of Northwind",
            "compelling_event": {"name": "Go-live", "date": "2026-06-30"},
        },
        headers=auth(SELLER),
    )
    assert r.status_code == 201, r.text
    p: str = r.json()["plan_id"]
    await send(http, p, "add_member", email=BUYER, side="buyer", role="editor", name="Bo")
    await send(http, p, "add_member", email=BUYER_OWNER, side="buyer", role="owner", name="Bea")
    await send(http, p, "add_member", email=VIEWER, side="buyer", role="viewer")
    await send(
        http,
        p,
        "add_stakeholder",
        id="bo",
        name="Bo",
        side="buyer",
        persona="champion",
        email=BUYER,
    )
    await send(
        http,
        p,
        "add_stakeholder",
        id="cfo",
        name="Cy",
        side="buyer",
        persona="economic buyer",
        influence="decision_maker",
    )
    await send(
        http,
        p,
        "add_stakeholder",
        id="fay",
        name="Fay",
        side="seller",
        persona="account executive",
        email=SELLER,
    )
    await send(http, p, "add_stakeholder", id="gone", name="Gus", side="buyer")
    await send(
        http,
        p,
        "add_objective",
        id="o1",
        title="Close the books in 3 days",
        metric="days to close",
        baseline="8",
        target="3",
        by="2026-09-30",
    )
    await send(http, p, "add_milestone", id="done-m", title="Agree success criteria", owner="bo")
    await send(
        http,
        p,
        "add_milestone",
        id="poc",
        title="Prove value on our data",
        owner="fay",
        outcome="criteria met",
        due="2026-03-01",
    )
    await send(
        http,
        p,
        "add_milestone",
        id="rollout",
        title="Roll out to finance",
        owner="bo",
        approver="gone",
        due="2026-06-01",
    )
    await send(http, p, "update_milestone", id="rollout", status="in_progress")
    await send(
        http, p, "add_action_item", id="done-a", milestone_id="poc", title="Load data", owner="bo"
    )
    await send(http, p, "set_action_item_status", id="done-a", status="done")
    await send(
        http,
        p,
        "add_action_item",
        id="train",
        milestone_id="rollout",
        title="Train the team",
        owner="fay",
        due="2026-05-15",
    )
    await send(http, p, "set_action_item_status", id="train", status="blocked")
    await send(
        http,
        p,
        "add_action_item",
        id="leftover",
        milestone_id="done-m",
        title="Send the minutes",
        owner="fay",
    )
    await send(
        http,
        p,
        "add_action_item",
        id="seller-secret",
        milestone_id="rollout",
        title="Margin review",
        visibility="internal",
    )
    await send(
        http,
        p,
        "add_action_item",
        id="buyer-secret",
        milestone_id="rollout",
        title="Budget check",
        visibility="internal",
        who=BUYER,
    )
    await send(http, p, "add_dependency", id="d1", from_id="poc", to_id="rollout", critical=True)
    await send(http, p, "add_dependency", id="d2", from_id="done-a", to_id="train")
    await send(
        http,
        p,
        "add_risk",
        id="r-open",
        title="Finance team busy at quarter end",
        owner="bo",
        likelihood="high",
    )
    await send(http, p, "add_risk", id="r-closed", title="No SSO", owner="fay")
    await send(http, p, "update_risk", id="r-closed", status="closed")
    await send(http, p, "set_cadence", kind="weekly", reporter="fay", next_review="2026-03-05")
    await send(http, p, "post_status_update", status="on_track", progress="PoC started")
    await send(http, p, "add_comment", item_id="poc", text="Data loaded")
    await send(http, p, "endorse_plan", who=BUYER, version=10)
    await send(http, p, "complete_milestone", id="done-m")
    await send(http, p, "complete_milestone", id="poc")
    await send(http, p, "remove_stakeholder", id="gone")
    await send(http, p, "activate_plan")
    if close is not None:
        await send(http, p, "close_plan", outcome=close, reason="signed")
    return p


async def fork(
    http: httpx.AsyncClient, parent: str, who: str = SELLER, **body: Any
) -> httpx.Response:
    return await http.post(f"/plans/{parent}/fork", json=body, headers=auth(who))


async def test_a_fork_starts_with_a_link_to_the_parent_event_that_records_it(
    http: httpx.AsyncClient,
):
    parent_id = await won_plan(http)
    r = await fork(http, parent_id)
    assert r.status_code == 201, r.text
    child_id, link = r.json()["plan_id"], r.json()["parent"]

    child_events = (await get(http, f"/plans/{child_id}/events"))["events"]
    first = child_events[0]
    assert (first["version"], first["type"]) == (1, "PlanForked")
    assert {k: first["data"][k] for k in ("parent_plan_id", "parent_version", "parent_hash")} == {
        "parent_plan_id": parent_id,
        "parent_version": link["version"],
        "parent_hash": link["hash"],
    }
    parent_events = (await get(http, f"/plans/{parent_id}/events"))["events"]
    recorded = parent_events[link["version"] - 1]
    assert (recorded["type"], recorded["hash"]) == ("ChildPlanForked", link["hash"])
    assert recorded["data"]["child_plan_id"] == child_id

    child = (await get(http, f"/plans/{child_id}"))["state"]
    assert child["parent"] == {
        "plan_id": parent_id,
        "version": link["version"],
        "hash": link["hash"],
    }
    parent = (await get(http, f"/plans/{parent_id}"))["state"]
    assert [c["plan_id"] for c in parent["children"]] == [child_id]
    assert parent["status"] == "closed_won"


async def test_a_fork_carries_people_objectives_open_commitments_and_open_risks(
    http: httpx.AsyncClient,
):
    parent_id = await won_plan(http)
    r = await fork(http, parent_id)
    child = (await get(http, f"/plans/{r.json()['plan_id']}"))["state"]

    assert child["kind"] == "onboarding" and child["status"] == "draft"
    assert child["title"] == "Onboarding: Contoso evaluates Northwind"
    assert child["compelling_event"] == {"name": "Go-live", "date": "2026-06-30"}
    assert child["value_statement"] == "Assist Contoso with their evaluation of Northwind"
    members = {e: (m["side"], m["role"]) for e, m in child["members"].items()}
    assert members == {
        SELLER: ("seller", "owner"),
        BUYER: ("buyer", "editor"),
        BUYER_OWNER: ("buyer", "owner"),
        VIEWER: ("buyer", "viewer"),
    }
    assert set(child["stakeholders"]) == {"bo", "cfo", "fay"}  # not Gus, who was removed
    assert child["objectives"]["o1"]["target"] == "3"

    # open commitments, with their state; a done milestone only as the home of open items
    assert child["milestone_order"] == ["done-m", "rollout"]
    assert child["milestones"]["rollout"]["status"] == "in_progress"
    assert child["milestones"]["rollout"]["approver"] is None  # Gus is no longer a stakeholder
    assert child["milestones"]["done-m"]["status"] == "not_started"
    items = child["action_items"]
    assert set(items) == {"train", "leftover", "seller-secret"}
    assert items["train"]["status"] == "blocked"
    assert (items["seller-secret"]["visibility"], items["seller-secret"]["internal_to"]) == (
        "internal",
        "seller",
    )
    assert list(child["dependencies"]) == []  # d1 and d2 each lose a done end
    assert set(child["risks"]) == {"r-open"}
    assert child["risks"]["r-open"]["likelihood"] == "high"

    # not carried: completed work, discussion, updates, endorsements, tags, cadence, slips
    assert child["comments"] == {} and child["status_updates"] == []
    assert child["endorsements"] == [] and child["tags"] == {}
    assert child["cadence"] is None and child["children"] == []


async def test_the_other_sides_internal_items_stay_behind(http: httpx.AsyncClient):
    parent_id = await won_plan(http)
    r = await fork(http, parent_id, BUYER_OWNER)
    assert r.status_code == 201, r.text
    child_id = r.json()["plan_id"]
    buyer_view = (await get(http, f"/plans/{child_id}", BUYER_OWNER))["state"]
    assert "seller-secret" not in buyer_view["action_items"]
    assert buyer_view["action_items"]["buyer-secret"]["internal_to"] == "buyer"
    seller_view = (await get(http, f"/plans/{child_id}", SELLER))["state"]
    assert "seller-secret" not in seller_view["action_items"]
    assert "buyer-secret" not in seller_view["action_items"]
    assert buyer_view["members"][BUYER_OWNER]["role"] == "owner"


async def test_lineage_reads_both_ways_with_the_parent_hash_checked(
    http: httpx.AsyncClient, store: Store
):
    parent_id = await won_plan(http)
    child_id = (await fork(http, parent_id)).json()["plan_id"]
    lineage = await get(http, f"/plans/{child_id}/lineage")
    assert lineage["parent_hash_ok"] is True
    assert lineage["parent"]["plan_id"] == parent_id
    assert lineage["parent"]["hash_ok"] and lineage["parent"]["records_this_fork"]
    assert lineage["children"] == []

    parents = await get(http, f"/plans/{parent_id}/lineage")
    assert parents["parent"] is None and parents["parent_hash_ok"] is None
    [child] = parents["children"]
    assert (child["plan_id"], child["link_ok"], child["forked_by"]) == (child_id, True, SELLER)

    good = lineage["parent"]
    forged = await _check_parent(store, child_id, ParentLink(parent_id, good["version"], "f" * 64))
    assert (forged.hash_ok, forged.records_this_fork) == (False, True)
    elsewhere = await _check_parent(
        store, child_id, ParentLink(parent_id, good["version"] - 1, good["hash"])
    )
    assert (elsewhere.hash_ok, elsewhere.records_this_fork) == (False, False)


@pytest.mark.parametrize("close", [None, "lost"])
async def test_only_a_closed_won_plan_can_be_forked_and_a_refusal_changes_nothing(
    http: httpx.AsyncClient, close: str | None
):
    parent_id = await won_plan(http, close=close)
    before = await get(http, f"/plans/{parent_id}")
    r = await fork(http, parent_id, command_id="fork-1")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["code"], error["rule"]) == ("rule_violation", "fork_needs_closed_won")
    assert (await get(http, f"/plans/{parent_id}"))["version"] == before["version"]


@pytest.mark.parametrize("who", [BUYER, VIEWER])
async def test_only_owners_fork(http: httpx.AsyncClient, who: str):
    parent_id = await won_plan(http)
    r = await fork(http, parent_id, who)
    assert r.status_code == 403, r.text
    child_id = (await fork(http, parent_id)).json()["plan_id"]
    r = await fork(http, parent_id, who, plan_id=child_id)  # not even to "finish" a fork
    assert r.status_code == 403, r.text


async def test_a_fork_of_a_plan_you_cannot_see_is_not_found(http: httpx.AsyncClient):
    parent_id = await won_plan(http)
    r = await fork(http, parent_id, "eve@elsewhere.example")
    assert r.status_code == 404


async def test_a_retried_fork_makes_one_child(http: httpx.AsyncClient):
    parent_id = await won_plan(http)
    first = await fork(http, parent_id, command_id="kickoff-1", title="Contoso onboarding")
    again = await fork(http, parent_id, command_id="kickoff-1", title="Contoso onboarding")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    parent = (await get(http, f"/plans/{parent_id}"))["state"]
    assert [c["title"] for c in parent["children"]] == ["Contoso onboarding"]


async def test_a_fork_into_an_existing_plan_is_refused_before_anything_is_written(
    http: httpx.AsyncClient,
):
    parent_id = await won_plan(http)
    other = await won_plan(http)
    before = await get(http, f"/plans/{parent_id}")
    r = await fork(http, parent_id, plan_id=other)
    assert r.status_code == 422 and r.json()["error"]["rule"] == "plan_exists"
    assert (await get(http, f"/plans/{parent_id}"))["version"] == before["version"]


async def test_a_fork_with_a_template_adds_the_kickoff_plan_to_what_it_carries(
    http: httpx.AsyncClient,
):
    parent_id = await won_plan(http)
    r = await fork(
        http,
        parent_id,
        template_id="customer-onboarding-kickoff",
        compelling_event={"name": "Finance live", "date": "2026-09-01"},
        kind="onboarding",
    )
    assert r.status_code == 201, r.text
    child = (await get(http, f"/plans/{r.json()['plan_id']}"))["state"]
    assert "rollout" in child["milestones"] and "kickoff-meeting" in child["milestones"]
    assert child["milestones"]["go-live"]["due"] == "2026-09-01"
    # the template's champion is the champion the fork carried, not a new placeholder
    assert child["milestones"]["go-live"]["owner"] == "bo"
    assert sum(s["persona"] == "champion" for s in child["stakeholders"].values()) == 1
    health = await get(http, f"/plans/{r.json()['plan_id']}/health")
    assert health["status"] in ("on_track", "at_risk", "stalled")


async def test_a_client_cannot_send_the_fork_commands_itself(http: httpx.AsyncClient):
    parent_id = await won_plan(http)
    body = {
        "type": "record_fork",
        "command_id": "x",
        "data": {"child_plan_id": "fake", "title": "Fake"},
    }
    r = await http.post(f"/plans/{parent_id}/commands", json=body, headers=auth(SELLER))
    assert r.status_code == 400 and r.json()["error"]["field"] == "type"
    body = {
        "type": "fork_plan",
        "command_id": "y",
        "data": {
            "parent_plan_id": parent_id,
            "parent_version": 1,
            "parent_hash": "0" * 64,
            "title": "Forged",
            "buyer_org": "b",
            "seller_org": "s",
            "side": "seller",
        },
    }
    r = await http.post("/plans/forged-child/commands", json=body, headers=auth(SELLER))
    assert r.status_code == 400 and r.json()["error"]["field"] == "type"


async def test_a_fork_cut_short_after_the_parent_recorded_it_is_finished_by_asking_again(
    http: httpx.AsyncClient, service: PlanService
):
    parent_id = await won_plan(http)
    child_id = f"half-{uuid.uuid4().hex[:8]}"
    answer = await service.handle(
        parent_id, RecordFork(child_plan_id=child_id, title="Onboarding"), SELLER
    )
    r = await fork(http, parent_id, plan_id=child_id)
    assert r.status_code == 201, r.text
    assert r.json()["parent"]["version"] == answer.version
    lineage = await get(http, f"/plans/{child_id}/lineage")
    assert lineage["parent_hash_ok"] is True
    parent = (await get(http, f"/plans/{parent_id}"))["state"]
    assert [c["plan_id"] for c in parent["children"]] == [child_id]
