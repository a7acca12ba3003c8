"""Templates: built-ins, dates counted back from the compelling event in business days,
user templates, saving a plan as a template, and a template that cannot apply."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import DomainError, Malformed
from domain.templates import (
    BUILTIN,
    ActionItemSkeleton,
    DependencySkeleton,
    MilestoneSkeleton,
    Persona,
    Template,
    business_days_before,
    business_days_between,
    check,
    try_out,
)
from tests.support import auth

SELLER = "tess@seller.example"
OTHER = "olga@other.example"
GO_LIVE = date(2026, 3, 2)  # a Monday


def weekdays_between(day: date, anchor: date) -> int:
    """Counted the slow way: working days from `day` (included) up to `anchor` (excluded)."""
    n, d = 0, day
    while d < anchor:
        n += d.weekday() < 5
        d += timedelta(days=1)
    return n


# -- business days, pure ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (0, date(2026, 3, 2)),  # the compelling event's own day
        (1, date(2026, 2, 27)),  # Monday minus one working day is Friday
        (5, date(2026, 2, 23)),  # a working week back is the Monday before
        (6, date(2026, 2, 20)),
        (-1, date(2026, 3, 3)),  # after it: Tuesday
        (-5, date(2026, 3, 9)),
    ],
)
def test_business_days_before_skip_weekends(days: int, expected: date):
    assert business_days_before(GO_LIVE, days) == expected


def test_a_weekend_compelling_event_counts_back_to_working_days():
    saturday = date(2026, 2, 28)
    assert business_days_before(saturday, 1) == date(2026, 2, 27)
    assert business_days_before(saturday, 2) == date(2026, 2, 26)


@given(
    anchor=st.dates(date(2024, 1, 1), date(2030, 12, 31)),
    days=st.integers(-300, 300),
)
def test_counting_back_lands_on_a_working_day_and_counts_back_again(anchor: date, days: int):
    day = business_days_before(anchor, days)
    if days != 0:
        assert day.weekday() < 5
    if day <= anchor:
        assert weekdays_between(day, anchor) == days
    assert business_days_between(day, anchor) == days or day.weekday() >= 5


@given(day=st.dates(date(2024, 1, 1), date(2030, 12, 31)))
def test_a_weekend_day_counts_as_the_monday_after_it(day: date):
    n = business_days_between(day, GO_LIVE)
    monday = day + timedelta(days=(7 - day.weekday()) % 7 if day.weekday() >= 5 else 0)
    assert business_days_before(GO_LIVE, n) == monday


# -- the built-ins ---------------------------------------------------------------------------


@pytest.mark.parametrize("template", list(BUILTIN.values()), ids=list(BUILTIN))
def test_each_builtin_is_a_healthy_plan_skeleton(template: Template):
    check(template)
    try_out(template, GO_LIVE)
    assert 8 <= len(template.milestones) <= 12
    assert all(m.outcome and m.owner for m in template.milestones)
    sides = {p.side for p in template.personas}
    assert sides == {"buyer", "seller"}
    personas = {p.persona for p in template.personas if p.side == "buyer"}
    assert "champion" in personas


def test_the_three_builtins_are_named_in_buyer_language():
    assert {t.name for t in BUILTIN.values()} == {
        "Enterprise SaaS evaluation",
        "Security and legal review",
        "Customer onboarding kickoff",
    }
    assert BUILTIN["customer-onboarding-kickoff"].kind == "onboarding"


def skeleton(**changes: Any) -> Template:
    base = Template(
        id="t",
        name="Pilot",
        personas=[Persona("champion", "champion", "buyer")],
        milestones=[
            MilestoneSkeleton("a", "Agree the scope", owner="champion", business_days_before=10),
            MilestoneSkeleton("b", "Run the pilot", owner="champion", business_days_before=0),
        ],
        action_items=[ActionItemSkeleton("x", "a", "Book the room", "champion", 12)],
        dependencies=[DependencySkeleton("a", "b", critical=True)],
    )
    return msgspec.structs.replace(base, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"name": " "},
        {"personas": [Persona("p", "champion", "buyer"), Persona("p", "legal", "buyer")]},
        {"milestones": [MilestoneSkeleton("a", "Agree", owner="nobody")]},
        {"action_items": [ActionItemSkeleton("x", "nowhere", "Book", "champion")]},
        {"dependencies": [DependencySkeleton("a", "zz")]},
    ],
    ids=["no name", "a persona key twice", "an unknown owner", "no such milestone", "no such item"],
)
def test_a_template_with_a_broken_reference_is_malformed(changes: dict[str, Any]):
    with pytest.raises(Malformed):
        check(skeleton(**changes))


def test_a_template_that_would_break_a_plan_rule_fails_its_try_out():
    cyclic = skeleton(dependencies=[DependencySkeleton("a", "b"), DependencySkeleton("b", "a")])
    with pytest.raises(DomainError) as info:
        try_out(cyclic)
    assert info.value.rule == "dependency_cycle"


# -- over HTTP -------------------------------------------------------------------------------


async def new_plan(http: httpx.AsyncClient, who: str = SELLER, **body: Any) -> httpx.Response:
    return await http.post(
        "/plans",
        json={
            "title": "Contoso evaluates Northwind",
            "buyer_org": "Contoso",
            "seller_org": "Northwind",
            "side": "seller",
            **body,
        },
        headers=auth(who),
    )


async def state(http: httpx.AsyncClient, plan_id: str, who: str = SELLER) -> dict[str, Any]:
    r = await http.get(f"/plans/{plan_id}", headers=auth(who))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()["state"]
    return body


async def test_the_builtins_are_listed(http: httpx.AsyncClient):
    r = await http.get("/templates", headers=auth(SELLER))
    assert r.status_code == 200
    ids = [t["id"] for t in r.json()["templates"]]
    assert ids[:3] == list(BUILTIN)


async def test_a_plan_from_a_template_has_real_dates_counted_back_in_working_days(
    http: httpx.AsyncClient,
):
    template = BUILTIN["enterprise-saas-evaluation"]
    r = await new_plan(
        http,
        template_id=template.id,
        compelling_event={"name": "Go-live", "date": GO_LIVE.isoformat()},
        name="Tess",
    )
    assert r.status_code == 201, r.text
    plan = await state(http, r.json()["plan_id"])
    assert r.json()["version"] > 2
    milestones = plan["milestones"]
    assert [m["title"] for m in milestones.values()] == [m.title for m in template.milestones]
    for m in template.milestones:
        due = date.fromisoformat(milestones[m.key]["due"])
        assert due.weekday() < 5, (m.key, due)
        assert weekdays_between(due, GO_LIVE) == m.business_days_before
    assert milestones["go-live"]["due"] == GO_LIVE.isoformat()
    assert milestones["signature"]["deadline"] == "hard"
    # each persona became a stakeholder to be named, owning what the persona owns
    personas = {s["persona"]: s for s in plan["stakeholders"].values()}
    assert personas["champion"]["name"] == "Champion (to be named)"
    assert milestones["go-live"]["owner"] == personas["champion"]["id"]
    assert len(plan["action_items"]) == len(template.action_items)
    critical = {(d["from_id"], d["to_id"]) for d in plan["dependencies"].values() if d["critical"]}
    assert ("security-review", "signature") in critical
    assert plan["kind"] == "sales" and plan["members"][SELLER]["role"] == "owner"


async def test_an_onboarding_template_makes_an_onboarding_plan(http: httpx.AsyncClient):
    r = await new_plan(
        http,
        template_id="customer-onboarding-kickoff",
        compelling_event={"name": "Go-live", "date": "2026-05-29"},
    )
    assert r.status_code == 201, r.text
    plan = await state(http, r.json()["plan_id"])
    assert plan["kind"] == "onboarding"
    # 20 working days after a Friday go-live is four weeks later, a Friday
    assert plan["milestones"]["value-review"]["due"] == "2026-06-26"


async def test_a_template_needs_a_compelling_event_and_an_id_you_can_use(
    http: httpx.AsyncClient,
):
    r = await new_plan(http, template_id="enterprise-saas-evaluation")
    assert r.status_code == 400 and r.json()["error"]["field"] == "compelling_event"
    r = await new_plan(
        http, template_id="no-such", compelling_event={"name": "x", "date": "2026-01-01"}
    )
    assert r.status_code == 404 and r.json()["error"]["field"] == "template_id"


async def test_a_retried_create_from_a_template_builds_the_plan_once(http: httpx.AsyncClient):
    body: dict[str, Any] = {
        "template_id": "security-legal-review",
        "compelling_event": {"name": "Signature", "date": "2026-04-30"},
        "command_id": f"create-{uuid.uuid4().hex}",
    }
    first, again = await new_plan(http, **body), await new_plan(http, **body)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    plan = await state(http, first.json()["plan_id"])
    assert len(plan["milestones"]) == len(BUILTIN["security-legal-review"].milestones)


async def test_a_user_template_is_checked_saved_and_private(http: httpx.AsyncClient):
    body = {
        "name": "Two-week pilot",
        "personas": [
            {"key": "champion", "persona": "champion", "side": "buyer"},
            {"key": "se", "persona": "solutions engineer", "side": "seller"},
        ],
        "milestones": [
            {
                "key": "scope",
                "title": "Agree the pilot scope",
                "owner": "champion",
                "business_days_before": 10,
            },
            {"key": "pilot", "title": "Run the pilot", "owner": "se", "business_days_before": 0},
        ],
        "dependencies": [{"from_key": "scope", "to_key": "pilot", "critical": True}],
    }
    r = await http.post("/templates", json=body, headers=auth(SELLER))
    assert r.status_code == 201, r.text
    template_id = r.json()["template_id"]
    mine = (await http.get("/templates", headers=auth(SELLER))).json()["templates"]
    assert template_id in [t["id"] for t in mine]
    theirs = (await http.get("/templates", headers=auth(OTHER))).json()["templates"]
    assert template_id not in [t["id"] for t in theirs]

    ce = {"name": "Decision", "date": "2026-03-02"}
    r = await new_plan(http, template_id=template_id, compelling_event=ce)
    assert r.status_code == 201, r.text
    plan = await state(http, r.json()["plan_id"])
    assert plan["milestones"]["scope"]["due"] == "2026-02-16"
    r = await new_plan(http, OTHER, template_id=template_id, compelling_event=ce)
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"name": "x", "milestones": [{"key": "a", "title": "A", "owner": "ghost"}]},
            400,
            "malformed",
        ),
        ({"name": "x", "surprise": 1}, 400, "malformed"),
        (
            {
                "name": "x",
                "milestones": [{"key": "a", "title": "A"}, {"key": "b", "title": "B"}],
                "dependencies": [
                    {"from_key": "a", "to_key": "b"},
                    {"from_key": "b", "to_key": "a"},
                ],
            },
            422,
            "rule_violation",
        ),
        ({"name": "x", "milestones": [{"key": "a", "title": " "}]}, 400, "malformed"),
    ],
    ids=["unknown owner", "unknown field", "a cycle", "an empty title"],
)
async def test_a_template_that_cannot_build_a_plan_is_refused(
    http: httpx.AsyncClient, body: dict[str, Any], status: int, code: str
):
    r = await http.post("/templates", json=body, headers=auth(SELLER))
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


async def test_a_plan_saved_as_a_template_rebuilds_the_same_shape(http: httpx.AsyncClient):
    r = await new_plan(
        http,
        template_id="enterprise-saas-evaluation",
        compelling_event={"name": "Go-live", "date": GO_LIVE.isoformat()},
    )
    plan_id = r.json()["plan_id"]
    secret = {
        "type": "add_action_item",
        "command_id": uuid.uuid4().hex,
        "data": {
            "milestone_id": "business-case",
            "title": "Discount approval",
            "visibility": "internal",
        },
    }
    assert (
        await http.post(f"/plans/{plan_id}/commands", json=secret, headers=auth(SELLER))
    ).status_code == 200
    r = await http.post(
        f"/plans/{plan_id}/save-as-template",
        json={"name": "Our evaluation", "description": "as we ran it"},
        headers=auth(SELLER),
    )
    assert r.status_code == 201, r.text
    saved = r.json()["template"]
    assert "Discount approval" not in [a["title"] for a in saved["action_items"]]
    original = BUILTIN["enterprise-saas-evaluation"]
    assert [(m["key"], m["business_days_before"]) for m in saved["milestones"]] == [
        (m.key, m.business_days_before) for m in original.milestones
    ]
    later = date(2026, 9, 15)
    r = await new_plan(
        http,
        template_id=saved["id"],
        compelling_event={"name": "Go-live", "date": later.isoformat()},
    )
    assert r.status_code == 201, r.text
    rebuilt = await state(http, r.json()["plan_id"])
    for m in original.milestones:
        due = date.fromisoformat(rebuilt["milestones"][m.key]["due"])
        assert due == business_days_before(later, m.business_days_before or 0)
    assert len(rebuilt["dependencies"]) == len(original.dependencies)
    assert {s["persona"] for s in rebuilt["stakeholders"].values()} == {
        p.persona for p in original.personas
    }


async def test_only_editors_save_a_plan_as_a_template(http: httpx.AsyncClient):
    plan_id = (await new_plan(http)).json()["plan_id"]
    viewer = "vic@buyer.example"
    add = {
        "type": "add_member",
        "command_id": uuid.uuid4().hex,
        "data": {"email": viewer, "side": "buyer", "role": "viewer"},
    }
    assert (
        await http.post(f"/plans/{plan_id}/commands", json=add, headers=auth(SELLER))
    ).status_code == 200
    r = await http.post(
        f"/plans/{plan_id}/save-as-template", json={"name": "x"}, headers=auth(viewer)
    )
    assert r.status_code == 403
