"""Exports: the one-pager (Markdown), the items table (CSV), the calendar (iCalendar)."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import icalendar
import pytest

from tests.support import auth, running_app, settings_for

SELLER = "sam@seller.example"
BUYER = "bea@buyer.example"
STRANGER = "eve@elsewhere.example"
SECRET = "Walk-away price is 41k"


@pytest.fixture(scope="module")
async def exp_base(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    settings = settings_for(database_url, tmp_path_factory.mktemp("exports"))
    async with running_app(settings) as url:
        yield url


async def post(
    http: httpx.AsyncClient, plan_id: str, type_: str, data: dict[str, Any], who: str = SELLER
) -> httpx.Response:
    body = {"type": type_, "data": data, "command_id": uuid.uuid4().hex}
    r = await http.post(f"/plans/{plan_id}/commands", json=body, headers=auth(who))
    assert r.status_code == 200, r.text
    return r


async def sample_plan(http: httpx.AsyncClient) -> str:
    """A plan with a buyer, owners on both sides, dated and undated items, one seller secret."""
    r = await http.post(
        "/plans",
        json={
            "title": "Acme | Globex rollout",
            "buyer_org": "Acme",
            "seller_org": "Globex",
            "side": "seller",
            "value_statement": "Cut month-end close from 9 days to 4",
            "compelling_event": {"name": "Fiscal year start", "date": "2027-01-01"},
        },
        headers=auth(SELLER),
    )
    plan_id: str = r.json()["plan_id"]
    await post(http, plan_id, "add_member", {"email": BUYER, "side": "buyer", "role": "editor"})
    await post(http, plan_id, "add_stakeholder", {"id": "cfo", "name": "Ada CFO", "side": "buyer"})
    await post(http, plan_id, "add_stakeholder", {"id": "ae", "name": "Sam AE", "side": "seller"})
    await post(
        http, plan_id, "add_objective", {"title": "Faster close", "metric": "days", "target": "4"}
    )
    await post(
        http,
        plan_id,
        "add_milestone",
        {"id": "m1", "title": "Business case signed", "owner": "cfo", "due": "2026-11-02"},
    )
    await post(
        http,
        plan_id,
        "add_milestone",
        {"id": "m2", "title": "Security review", "owner": "ae", "due": "2026-11-20"},
    )
    await post(http, plan_id, "add_milestone", {"id": "m3", "title": "=Go live, no date"})
    await post(
        http,
        plan_id,
        "add_action_item",
        {
            "id": "a1",
            "milestone_id": "m1",
            "title": "Send ROI model",
            "owner": "ae",
            "due": "2026-10-20",
        },
    )
    await post(
        http,
        plan_id,
        "add_action_item",
        {"id": "a2", "milestone_id": "m2", "title": "Fill questionnaire", "owner": "cfo"},
    )
    await post(
        http,
        plan_id,
        "add_action_item",
        {
            "id": "hush",
            "milestone_id": "m1",
            "title": SECRET,
            "due": "2026-10-25",
            "visibility": "internal",
        },
    )
    await post(http, plan_id, "add_risk", {"title": "Budget freeze", "impact": "high"})
    await post(
        http,
        plan_id,
        "set_cadence",
        {"kind": "weekly", "channel": "Teams", "next_review": "2026-10-14"},
    )
    return plan_id


async def test_markdown_one_pager_has_milestones_in_order_with_owners(exp_base: str):
    async with httpx.AsyncClient(base_url=exp_base) as http:
        plan_id = await sample_plan(http)
        r = await http.get(f"/plans/{plan_id}/export.md", headers=auth(BUYER))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/markdown")
        md = r.text
        for text in (
            "Acme",
            "Globex",
            "Cut month-end close from 9 days to 4",
            "Fiscal year start",
            "Faster close",
            "Budget freeze",
            "2026-10-14",
        ):
            assert text in md, text
        rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
        assert (
            "Business case signed" in rows[1] and "Ada CFO" in rows[1] and "2026-11-02" in rows[1]
        )
        assert "Security review" in rows[2] and "Sam AE" in rows[2]
        assert "Go live" in rows[3]
        assert "Acme \\| Globex" in md  # user text cannot break the table
        assert SECRET not in md


async def test_csv_has_one_row_per_item_and_parses(exp_base: str):
    async with httpx.AsyncClient(base_url=exp_base) as http:
        plan_id = await sample_plan(http)
        r = await http.get(f"/plans/{plan_id}/export.csv", headers=auth(BUYER))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert r.content.startswith(b"\xef\xbb\xbf")  # BOM: Excel reads it as UTF-8
        rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
        assert [(row["kind"], row["id"]) for row in rows] == [
            ("milestone", "m1"),
            ("action_item", "a1"),
            ("milestone", "m2"),
            ("action_item", "a2"),
            ("milestone", "m3"),
        ]
        a1 = rows[1]
        assert a1["milestone"] == "m1" and a1["owner"] == "Sam AE" and a1["owner_side"] == "seller"
        assert a1["due"] == "2026-10-20" and a1["status"] == "not_started"
        assert a1["visibility"] == "shared" and a1["slips"] == "0"
        assert rows[0]["deadline"] == "soft" and rows[0]["owner"] == "Ada CFO"
        assert rows[4]["title"] == "'=Go live, no date"  # no formula injection
        # the seller sees its own internal item, marked as such
        seller = await http.get(f"/plans/{plan_id}/export.csv", headers=auth(SELLER))
        mine = list(csv.DictReader(io.StringIO(seller.content.decode("utf-8-sig"))))
        assert len(mine) == 6
        assert next(row for row in mine if row["id"] == "hush")["visibility"] == "internal"


async def test_ics_has_one_all_day_event_per_dated_item(exp_base: str):
    async with httpx.AsyncClient(base_url=exp_base) as http:
        plan_id = await sample_plan(http)
        r = await http.get(f"/plans/{plan_id}/export.ics", headers=auth(BUYER))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/calendar")
        cal = icalendar.Calendar.from_ical(r.content)
        events = list(cal.walk("VEVENT"))
        # m1, m2, a1 and the next review; m3 and a2 have no date, `hush` is the seller's
        assert len(events) == 4
        starts = sorted(e.decoded("dtstart").isoformat() for e in events)
        assert starts == ["2026-10-14", "2026-10-20", "2026-11-02", "2026-11-20"]
        assert all(e["dtstart"].params.get("VALUE") == "DATE" for e in events)
        uids = [str(e["uid"]) for e in events]
        assert len(set(uids)) == 4
        assert any("Business case signed" in str(e["summary"]) for e in events)
        assert b"\r\n" in r.content and b"BEGIN:VCALENDAR" in r.content
        seller = await http.get(f"/plans/{plan_id}/export.ics", headers=auth(SELLER))
        assert len(list(icalendar.Calendar.from_ical(seller.content).walk("VEVENT"))) == 5


async def test_exports_are_for_members_only(exp_base: str):
    async with httpx.AsyncClient(base_url=exp_base) as http:
        plan_id = await sample_plan(http)
        for ext in ("md", "csv", "ics"):
            r = await http.get(f"/plans/{plan_id}/export.{ext}", headers=auth(STRANGER))
            assert r.status_code == 404, (ext, r.text)
            assert r.json()["error"]["code"] == "not_found"
            r = await http.get(f"/plans/{plan_id}/export.{ext}")
            assert r.status_code == 401
