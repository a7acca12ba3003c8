"""GET /plans/{id}/diff and /tags: what changed between two versions, named or numbered."""

from __future__ import annotations

from typing import Any

import httpx

from tests.audit.support import BUYER, SELLER, command, get, new_plan
from tests.support import auth


def by_id(changes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in changes}


async def test_diff_lists_items_added_and_changed_with_the_events_that_did_it(
    client: httpx.AsyncClient,
):
    plan_id = await new_plan(client)  # v5: milestone 'security' due 16 Jun
    await command(client, plan_id, "tag_version", name="baseline")  # v6 names v5
    await command(client, plan_id, "add_milestone", id="legal", title="Legal review")  # v7
    await command(
        client, plan_id, "reschedule_milestone", id="security", due="2026-06-23", reason="SOC 2"
    )  # v8
    await command(client, plan_id, "update_milestone", id="security", title="Security review")
    await command(client, plan_id, "add_dependency", id="d1", from_id="security", to_id="legal")
    await command(client, plan_id, "remove_dependency", id="d1")  # v11
    await command(client, plan_id, "add_stakeholder", id="carl", name="Carl CFO", side="buyer")
    await command(client, plan_id, "update_plan", title="Contoso signs Northwind")  # v13

    body = await get(client, f"/plans/{plan_id}/diff", **{"from": "baseline", "to": "13"})
    assert (body["from"], body["to"]) == (5, 13)
    changes = by_id(body["changes"])
    assert set(changes) == {"plan", "security", "legal", "carl"}  # d1 came and went
    assert changes["security"] == {
        "kind": "milestone",
        "id": "security",
        "title": "Security review",
        "change": "changed",
        "fields": [
            {"field": "title", "from": "Security sign-off", "to": "Security review"},
            {"field": "due", "from": "2026-06-16", "to": "2026-06-23"},
        ],
        "versions": [8, 9],
    }
    assert (changes["legal"]["change"], changes["legal"]["versions"]) == ("added", [7])
    assert (changes["carl"]["kind"], changes["carl"]["change"]) == ("stakeholder", "added")
    plan_fields = {f["field"]: (f["from"], f["to"]) for f in changes["plan"]["fields"]}
    assert plan_fields == {
        "title": ("Contoso evaluates Northwind", "Contoso signs Northwind"),
        "milestone_order": (["security"], ["security", "legal"]),
        "tags": ({}, {"baseline": 5}),
    }
    assert changes["plan"]["versions"] == [6, 13]

    narrow = await get(client, f"/plans/{plan_id}/diff", **{"from": "7", "to": "8"})
    assert [(c["id"], c["versions"]) for c in narrow["changes"]] == [("security", [8])]
    whole = await get(client, f"/plans/{plan_id}/diff", **{"from": "0"})
    assert whole["to"] == 13 and {c["change"] for c in whole["changes"]} == {"added", "changed"}
    same = await get(client, f"/plans/{plan_id}/diff", **{"from": "13", "to": "13"})
    assert same["changes"] == []


async def test_the_other_side_sees_no_internal_item_in_a_diff(client: httpx.AsyncClient):
    plan_id = await new_plan(client)
    await command(
        client,
        plan_id,
        "add_action_item",
        id="discount",
        milestone_id="security",
        title="Prepare discount approval",
        visibility="internal",
    )  # v6
    await command(client, plan_id, "add_comment", item_id="discount", text="Max 12%")  # v7
    await command(
        client,
        plan_id,
        "add_action_item",
        id="soc2",
        milestone_id="security",
        title="Send the SOC 2 report",
    )  # v8
    seller = by_id((await get(client, f"/plans/{plan_id}/diff", **{"from": "5"}))["changes"])
    buyer = by_id(
        (await get(client, f"/plans/{plan_id}/diff", who=BUYER, **{"from": "5"}))["changes"]
    )
    assert {"discount", "soc2"} <= set(seller)
    assert set(buyer) == {"soc2"}
    assert "12%" not in str(buyer) and "discount" not in str(buyer).lower()


async def test_bad_diff_bounds_are_refused(client: httpx.AsyncClient):
    plan_id = await new_plan(client)
    path = f"/plans/{plan_id}/diff"
    for params, status, field in [
        ({}, 400, "from"),
        ({"from": "4", "to": "2"}, 400, "from"),
        ({"from": "no-such-tag"}, 404, "from"),
        ({"from": "1", "to": "99"}, 404, "to"),
    ]:
        r = await client.get(path, params=params, headers=auth(SELLER))
        assert r.status_code == status, (params, r.text)
        assert r.json()["error"]["field"] == field


async def test_tags_are_listed_with_who_tagged_them_and_work_as_versions(
    client: httpx.AsyncClient,
):
    plan_id = await new_plan(client)
    await command(client, plan_id, "tag_version", name="Sent to procurement", version=4)  # v6
    await command(client, plan_id, "tag_version", who=BUYER, name="signed off by CFO")  # v7
    tags = (await get(client, f"/plans/{plan_id}/tags", who=BUYER))["tags"]
    assert [(t["name"], t["version"], t["tagged_by"], t["tagged_in"]) for t in tags] == [
        ("sent-to-procurement", 4, SELLER, 6),
        ("signed-off-by-cfo", 6, BUYER, 7),
    ]
    state = (await get(client, f"/plans/{plan_id}"))["state"]
    assert state["tags"] == {"sent-to-procurement": 4, "signed-off-by-cfo": 6}
    old = await get(client, f"/plans/{plan_id}", version="sent-to-procurement")
    assert old["version"] == 4 and old["state"]["milestones"] == {}
    body = await get(
        client,
        f"/plans/{plan_id}/diff",
        **{"from": "sent-to-procurement", "to": "signed-off-by-cfo"},
    )
    assert [(c["id"], c["change"]) for c in body["changes"]] == [
        ("plan", "changed"),
        ("security", "added"),
    ]
