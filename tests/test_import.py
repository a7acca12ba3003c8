"""Import: a plan built from the items CSV (the export format round-trips), whole or not at all.

The parsing and deciding are pure (projections/imports.py) and tested without a database;
POST /plans/import and `mapstream import` are tested against a real server and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain import action_items as ai
from domain import milestones as ms
from domain import stakeholders as sh
from domain.base import Context
from domain.decider import decide_all, recorded_onto
from domain.model import ItemStatus, Plan
from domain.plans import CreatePlan
from projections.exports import CSV_COLUMNS, _cell, csv_table
from projections.imports import ImportInvalid, Sheet, decide_import, parse, uncell
from server.cli import main
from tests.support import auth, running_app, settings_for, token

SELLER = "sam@seller.example"
BUYER = "bea@buyer.example"
NOW = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
HEADER = ",".join(CSV_COLUMNS)
CREATE = CreatePlan(title="Imported", buyer_org="Acme", seller_org="Globex", side="seller")


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new-{next(counter)}"


def errors_of(data: bytes) -> list[tuple[int, str, str]]:
    with pytest.raises(ImportInvalid) as caught:
        parse(data, ids())
    assert caught.value.code == "import_invalid"
    return sorted((r.line, r.column, r.code) for r in caught.value.rows)


def build(data: bytes, actor: str = SELLER) -> Plan:
    sheet = parse(data, ids())
    return decide_import("p", CREATE, sheet, Context(actor=actor, now=NOW)).plan


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))


# -- pure: reading the file ------------------------------------------------------------------

GOOD = f"""{HEADER}
milestone,m1,m1,Business case signed,Ada CFO,buyer,2026-11-02,done,hard,2,shared
action_item,a1,m1,Send ROI model,Sam AE,seller,2026-10-20,in_progress,,0,shared
action_item,a2,m1,Walk-away price,Sam AE,seller,,not_started,,0,internal
milestone,m2,m2,'=Security review,,,,blocked,soft,0,shared
""".encode()


def test_commands_come_in_the_order_a_person_would_type_them():
    sheet = parse(GOOD, ids())
    kinds = [(line, type(cmd).__name__) for line, cmd in sheet.commands]
    assert kinds == [
        (2, "AddStakeholder"),
        (3, "AddStakeholder"),
        (2, "AddMilestone"),
        (5, "AddMilestone"),
        (3, "AddActionItem"),
        (4, "AddActionItem"),
        (2, "CompleteMilestone"),
        (3, "SetActionItemStatus"),
        (5, "UpdateMilestone"),
    ]
    people = [cmd for _, cmd in sheet.commands if isinstance(cmd, sh.AddStakeholder)]
    assert [(p.id, p.name, p.side) for p in people] == [
        ("ada-cfo", "Ada CFO", "buyer"),
        ("sam-ae", "Sam AE", "seller"),
    ]
    m2 = next(c for _, c in sheet.commands if isinstance(c, ms.AddMilestone) and c.id == "m2")
    assert m2.title == "=Security review" and m2.owner is None  # the export's `'` is undone
    assert (sheet.milestones, sheet.action_items, sheet.stakeholders) == (2, 2, 2)


def test_the_plan_built_exports_the_same_file_except_slips():
    plan = build(GOOD)
    assert plan.milestones["m1"].status == "done" and plan.milestones["m1"].deadline == "hard"
    assert plan.action_items["a2"].visibility == "internal"
    assert plan.action_items["a2"].internal_to == "seller"
    again = csv_table(plan).replace("\r\n", "\n").encode()
    assert again == GOOD.replace(b",done,hard,2,", b",done,hard,0,")  # slips are history


def test_a_sellers_own_sheet_needs_only_kind_and_title():
    data = (
        b"Title,Kind,Owner,Owner Side,Due,Notes\r\n"
        b"Success criteria agreed,Milestone,Ada CFO,Buyer,2026-11-02,from the kickoff call\r\n"
        b"Draft criteria,Action item,Sam AE,seller,,\r\n"
        b"\r\n"
        b"Security review,milestone,,,,\r\n"
        b"Send SOC 2 report,action item,Sam AE,seller,2026-11-10,\r\n"
    )
    sheet = parse(data, ids())
    assert sheet.ignored_columns == ["Notes"]
    plan = decide_import("p", CREATE, sheet, Context(SELLER, NOW)).plan
    milestones = [plan.milestones[m] for m in plan.milestone_order]
    assert [m.title for m in milestones] == ["Success criteria agreed", "Security review"]
    items = list(plan.action_items.values())
    # an item without a `milestone` belongs to the milestone row above it
    assert [(a.title, a.milestone_id) for a in items] == [
        ("Draft criteria", milestones[0].id),
        ("Send SOC 2 report", milestones[1].id),
    ]
    assert items[1].due == date(2026, 11, 10)
    assert plan.stakeholders[items[0].owner or ""].side == "seller"


def test_every_bad_row_is_reported_with_its_line_column_and_code():
    data = (
        f"{HEADER}\n"
        "milestone,m1,,Fine milestone,,,,,,,\n"
        "task,x1,,A task,,,,,,,\n"  # 3: unknown kind
        "milestone,m2,,,,,2026-02-30,,,,\n"  # 4: no title, impossible date
        "action_item,a1,nowhere,Item,Ann,,,,hard,,\n"  # 5: unknown milestone, no side, deadline
        "action_item,m1,m1,Same id,,,,later,,,secret\n"  # 6: duplicate id, status, visibility
        '"milestone","m3","m3","Multi\nline title","Bo","nobody",,,,,internal\n'  # 7-8
        "milestone,m4,other,Mismatch,,,,,,,,\n"  # 9: milestone column, extra empty cell is fine
        "action_item,a9,,Tail,,,,,,,,surplus\n"  # 10: a cell past the header
        "milestone,plan,,Reserved," + "x" * 201 + ",seller,,,,,\n"  # 11: reserved id, long owner
    ).encode()
    assert errors_of(data) == sorted(
        [
            (3, "kind", "invalid_value"),
            (4, "title", "required"),
            (4, "due", "invalid_date"),
            (5, "owner_side", "required"),
            (5, "deadline", "not_applicable"),
            (5, "milestone", "unknown_milestone"),
            (6, "status", "invalid_value"),
            (6, "visibility", "invalid_value"),
            (6, "id", "duplicate_id"),
            (7, "owner_side", "invalid_value"),
            (7, "visibility", "not_applicable"),
            (9, "milestone", "milestone_mismatch"),
            (10, "", "extra_cells"),
            (11, "id", "invalid_id"),
            (11, "owner", "too_long"),
        ]
    )


def test_an_item_before_any_milestone_has_no_milestone():
    data = f"{HEADER}\naction_item,a1,,Orphan,,,,,,,\nmilestone,m1,,Later,,,,,,,\n".encode()
    assert errors_of(data) == [(2, "milestone", "no_milestone")]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", [(1, "", "empty_file")]),
        (b"\n\n", [(1, "", "empty_file")]),
        (b"kind,title\nmilestone,ok\nmilestone,caf\xe9\n", [(3, "", "not_utf8")]),
        (b"title,owner\nX,Y\n", [(1, "kind", "missing_column")]),
        (b"kind,title,Title\nmilestone,a,b\n", [(1, "title", "duplicate_column")]),
        (b'kind,title\nmilestone,ok\nmilestone,"open\nquote\n', [(3, "", "bad_csv")]),
    ],
)
def test_a_file_that_cannot_be_read_says_where(data: bytes, expected: list[Any]):
    assert errors_of(data) == expected


def test_a_refusal_of_the_plan_rules_names_the_row_it_came_from():
    """Rows are checked before the decider; the decider is the last word all the same."""
    sheet = Sheet(
        commands=[
            (2, ms.AddMilestone(title="One", id="m1")),
            (3, ai.AddActionItem(milestone_id="m9", title="Lost", id="a1")),
        ],
        milestones=1,
        action_items=1,
        stakeholders=0,
    )
    with pytest.raises(ImportInvalid) as caught:
        decide_import("p", CREATE, sheet, Context(SELLER, NOW))
    assert [(r.line, r.code) for r in caught.value.rows] == [(3, "not_found")]


# -- pure: the round trip as a law -----------------------------------------------------------

_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    min_size=1,
    max_size=30,
).map(str.strip)
_title = _text.filter(bool)
_people = st.sampled_from(
    [None, ("Ada CFO", "buyer"), ("Sam AE", "seller"), ("Sam AE", "buyer"), ("=cmd|x", "seller")]
)
_STATUSES: list[ItemStatus] = ["not_started", "in_progress", "blocked", "done"]
_status = st.sampled_from(_STATUSES)
_due = st.one_of(st.none(), st.dates(date(2025, 1, 1), date(2028, 12, 31)))


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    """A plan typed command by command: people, milestones, items, statuses, a slip."""
    ctx = Context(SELLER, NOW)
    commands: list[Any] = [
        sh.AddStakeholder(id="s1", name="Ada CFO", side="buyer"),
        sh.AddStakeholder(id="s2", name="Sam AE", side="seller"),
        sh.AddStakeholder(id="s3", name="Sam AE", side="buyer"),
        sh.AddStakeholder(id="s4", name="=cmd|x", side="seller"),
    ]
    owner_id = {
        None: None,
        ("Ada CFO", "buyer"): "s1",
        ("Sam AE", "seller"): "s2",
        ("Sam AE", "buyer"): "s3",
        ("=cmd|x", "seller"): "s4",
    }
    statuses: list[Any] = []
    n_milestones = draw(st.integers(1, 4))
    for m in range(n_milestones):
        mid = draw(st.sampled_from([f"m{m}", f"'m{m}", f"-m{m}"]))
        commands.append(
            ms.AddMilestone(
                id=mid,
                title=draw(_title),
                owner=owner_id[draw(_people)],
                due=draw(_due),
                deadline=draw(st.sampled_from(["hard", "soft"])),
            )
        )
        status = draw(_status)
        if status == "done":
            statuses.append(ms.CompleteMilestone(id=mid))
        elif status != "not_started":
            statuses.append(ms.UpdateMilestone(id=mid, status=status))
        for a in range(draw(st.integers(0, 3))):
            aid = f"{mid}.a{a}"
            commands.append(
                ai.AddActionItem(
                    id=aid,
                    milestone_id=mid,
                    title=draw(_title),
                    owner=owner_id[draw(_people)],
                    due=draw(_due),
                    visibility=draw(st.sampled_from(["shared", "internal"])),
                )
            )
            statuses.append(ai.SetActionItemStatus(id=aid, status=draw(_status)))
    created = recorded_onto(Plan(id="orig"), decide_all(Plan(id="orig"), [CREATE], ctx), ctx)
    return recorded_onto(created, decide_all(created, [*commands, *statuses], ctx), ctx)


@given(plans())
def test_export_import_export_is_the_same_file(plan: Plan):
    exported = csv_table(plan)
    imported = build(exported.encode())
    assert csv_table(imported) == exported


@pytest.mark.parametrize(
    ("cell", "text"),
    [
        ("'Tis the season", "'Tis the season"),  # hand-written, not the export's guard
        ("'=SUM(A1)", "=SUM(A1)"),
        ("'+1", "+1"),
        ("'-1", "-1"),
        ("'@x", "@x"),
        ("'\tx", "\tx"),
        ("'\rx", "\rx"),
        ("''x", "'x"),
        ("'", "'"),
        ("=SUM(A1)", "=SUM(A1)"),
        ("plain", "plain"),
    ],
)
def test_uncell_drops_only_the_apostrophe_the_export_adds(cell: str, text: str):
    assert uncell(cell) == text


@given(_text)
def test_uncell_undoes_the_export_cell(text: str):
    assert uncell(_cell(text)) == text


def test_a_hand_written_leading_apostrophe_is_imported_as_is():
    data = "kind,title\r\nmilestone,'Tis the season\r\nmilestone,'=Security review\r\n"
    plan = build(data.encode())
    assert sorted(m.title for m in plan.milestones.values()) == [
        "'Tis the season",
        "=Security review",
    ]


# -- the API ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def base(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    settings = settings_for(database_url, tmp_path_factory.mktemp("import"), max_body_bytes=65536)
    async with running_app(settings) as url:
        yield url


@pytest.fixture
async def http(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield client


PLAN_FIELDS = {"title": "Acme evaluates Globex", "buyer_org": "Acme", "seller_org": "Globex"}


async def import_csv(
    http: httpx.AsyncClient, data: bytes, who: str = SELLER, **params: str
) -> httpx.Response:
    return await http.post(
        "/plans/import",
        params={**PLAN_FIELDS, **params},
        content=data,
        headers={**auth(who), "content-type": "text/csv"},
    )


async def command(
    http: httpx.AsyncClient, plan_id: str, type_: str, data: dict[str, Any], who: str = SELLER
) -> httpx.Response:
    body = {"type": type_, "data": data, "command_id": uuid.uuid4().hex}
    return await http.post(f"/plans/{plan_id}/commands", json=body, headers=auth(who))


async def typed_plan(http: httpx.AsyncClient) -> str:
    """A plan typed by hand over HTTP: a slip, a done milestone, a seller-internal item."""
    r = await http.post("/plans", json={**PLAN_FIELDS, "side": "seller"}, headers=auth(SELLER))
    plan_id: str = r.json()["plan_id"]
    for type_, data in [
        ("add_stakeholder", {"id": "cfo", "name": "Ada CFO", "side": "buyer"}),
        ("add_stakeholder", {"id": "ae", "name": "Sam AE", "side": "seller"}),
        (
            "add_milestone",
            {"id": "m1", "title": "Business case", "owner": "cfo", "due": "2026-11-02"},
        ),
        ("add_milestone", {"id": "m2", "title": "-Security review", "deadline": "hard"}),
        ("add_action_item", {"id": "a1", "milestone_id": "m1", "title": "ROI", "owner": "ae"}),
        (
            "add_action_item",
            {"id": "hush", "milestone_id": "m2", "title": "Floor 41k", "visibility": "internal"},
        ),
        ("reschedule_milestone", {"id": "m1", "due": "2026-11-09", "reason": "CFO away"}),
        ("complete_milestone", {"id": "m1"}),
        ("set_action_item_status", {"id": "a1", "status": "blocked"}),
    ]:
        r = await command(http, plan_id, type_, data)
        assert r.status_code == 200, r.text
    return plan_id


async def export(http: httpx.AsyncClient, plan_id: str, who: str = SELLER) -> str:
    r = await http.get(f"/plans/{plan_id}/export.csv", headers=auth(who))
    assert r.status_code == 200, r.text
    return r.content.decode("utf-8-sig")


async def test_an_exported_plan_imports_into_a_plan_that_exports_the_same(
    http: httpx.AsyncClient,
):
    original = await typed_plan(http)
    first = await export(http, original)
    r = await import_csv(http, b"\xef\xbb\xbf" + first.encode())
    assert r.status_code == 201, r.text
    answer = r.json()
    imported = answer["plan_id"]
    assert imported != original
    assert (answer["milestones"], answer["action_items"], answer["stakeholders"]) == (2, 2, 2)
    second = await export(http, imported)
    # the one difference: slips are history, and an imported plan has none yet
    expected = [{**row, "slips": "0"} for row in rows_of(first)]
    assert rows_of(second) == expected
    assert any(row["slips"] == "1" for row in rows_of(first))
    # and a file with no slips round-trips byte for byte
    r = await import_csv(http, second.encode())
    assert r.status_code == 201, r.text
    assert await export(http, r.json()["plan_id"]) == second


async def test_an_imported_plan_is_events_typed_by_the_importer(http: httpx.AsyncClient):
    r = await import_csv(http, GOOD, plan_id=f"imp-{uuid.uuid4().hex[:8]}")
    assert r.status_code == 201, r.text
    plan_id, version = r.json()["plan_id"], r.json()["version"]
    events = (await http.get(f"/plans/{plan_id}/events", headers=auth(SELLER))).json()["events"]
    assert [e["version"] for e in events] == list(range(1, version + 1))
    assert {e["actor"] for e in events} == {SELLER}
    assert [e["type"] for e in events][:4] == [
        "PlanCreated",
        "MemberAdded",
        "StakeholderAdded",
        "StakeholderAdded",
    ]
    verdict = (await http.get(f"/plans/{plan_id}/verify", headers=auth(SELLER))).json()
    assert verdict["ok"] is True and verdict["version"] == version
    state = (await http.get(f"/plans/{plan_id}", headers=auth(SELLER))).json()["state"]
    assert state["members"][SELLER]["role"] == "owner"
    assert state["members"][SELLER]["side"] == "seller"
    # the plan takes commands at once, like any other
    r = await command(http, plan_id, "complete_milestone", {"id": "m2"})
    assert r.status_code == 200 and r.json()["version"] == version + 1
    # and the asynchronous projections follow it: the audit trail has a row per event
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        trail = (await http.get(f"/plans/{plan_id}/audit", headers=auth(SELLER))).json()
        if len(trail["rows"]) == version + 1:
            break
        assert asyncio.get_running_loop().time() < deadline, trail
        await asyncio.sleep(0.05)


async def test_internal_rows_stay_internal_to_the_importers_side(http: httpx.AsyncClient):
    r = await import_csv(http, GOOD)
    plan_id = r.json()["plan_id"]
    r = await command(
        http, plan_id, "add_member", {"email": BUYER, "side": "buyer", "role": "editor"}
    )
    assert r.status_code == 200, r.text
    seller_ids = [row["id"] for row in rows_of(await export(http, plan_id))]
    buyer_ids = [row["id"] for row in rows_of(await export(http, plan_id, BUYER))]
    assert "a2" in seller_ids and "a2" not in buyer_ids
    assert seller_ids == [*buyer_ids[:2], "a2", *buyer_ids[2:]]
    events = (await http.get(f"/plans/{plan_id}/events", headers=auth(BUYER))).json()["events"]
    assert "Walk-away" not in str(events)
    assert sum(e["type"] == "Redacted" for e in events) == 1  # its ActionItemAdded


async def count_events(pool: asyncpg.Pool, plan_id: str | None = None) -> int:
    if plan_id is None:
        return int(await pool.fetchval("SELECT count(*) FROM events"))
    return int(await pool.fetchval("SELECT count(*) FROM events WHERE plan_id = $1", plan_id))


async def test_bad_rows_are_reported_and_nothing_is_imported(
    http: httpx.AsyncClient, pool: asyncpg.Pool
):
    plan_id = f"bad-{uuid.uuid4().hex[:8]}"
    data = GOOD + b"action_item,a3,m9,Lost item,,,,,,,\nmilestone,m5,,,,,tomorrow,,,,\n"
    before = await count_events(pool)
    r = await import_csv(http, data, plan_id=plan_id)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "import_invalid" and "nothing was imported" in error["message"]
    assert [(row["line"], row["column"], row["code"]) for row in error["rows"]] == [
        (6, "milestone", "unknown_milestone"),
        (7, "due", "invalid_date"),
        (7, "title", "required"),
    ]
    assert all(row["message"] for row in error["rows"]) and error["errors_total"] == 3
    assert await count_events(pool) == before
    assert await count_events(pool, plan_id) == 0
    r = await http.get(f"/plans/{plan_id}", headers=auth(SELLER))
    assert r.status_code == 404
    assert await pool.fetchval("SELECT count(*) FROM plans WHERE plan_id = $1", plan_id) == 0


async def test_an_existing_plan_is_never_imported_over(http: httpx.AsyncClient, pool: asyncpg.Pool):
    plan_id = await typed_plan(http)
    before = await count_events(pool, plan_id)
    r = await import_csv(http, GOOD, plan_id=plan_id)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["rule"] == "plan_exists"
    assert await count_events(pool, plan_id) == before


async def test_a_retried_import_creates_the_plan_once(http: httpx.AsyncClient, pool: asyncpg.Pool):
    key = uuid.uuid4().hex
    first = await import_csv(http, GOOD, command_id=key)
    again = await import_csv(http, GOOD, command_id=key)
    assert first.status_code == again.status_code == 201, again.text
    assert first.json() == again.json()
    plan_id = first.json()["plan_id"]
    assert await count_events(pool, plan_id) == first.json()["version"]


async def test_a_plan_id_probed_before_the_import_takes_commands_after_it(
    http: httpx.AsyncClient,
):
    plan_id = f"probe-{uuid.uuid4().hex[:8]}"
    r = await command(http, plan_id, "complete_milestone", {"id": "m1"})
    assert r.status_code == 404  # the service now remembers "no such plan"
    r = await import_csv(http, GOOD, plan_id=plan_id)
    assert r.status_code == 201, r.text
    r = await command(http, plan_id, "complete_milestone", {"id": "m2"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [
        ({"title": ""}, {}, "title"),
        ({"side": "both"}, {}, "side"),
        ({"colour": "red"}, {}, "colour"),
        ({"compelling_event": "Go-live"}, {}, "compelling_event_date"),
        (
            {"compelling_event": "Go-live", "compelling_event_date": "soon"},
            {},
            "compelling_event_date",
        ),
        ({"plan_id": "no spaces"}, {}, "plan_id"),
        ({}, {"content-type": "multipart/form-data; boundary=x"}, "content-type"),
    ],
)
async def test_bad_plan_fields_are_malformed(
    http: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str], field: str | None
):
    r = await http.post(
        "/plans/import",
        params={**PLAN_FIELDS, **params},
        content=GOOD,
        headers={**auth(SELLER), "content-type": "text/csv", **headers},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "malformed"
    if field is not None:
        assert r.json()["error"]["field"] == field


async def test_import_needs_a_token_and_a_body_within_the_limit(http: httpx.AsyncClient):
    r = await http.post("/plans/import", params=PLAN_FIELDS, content=GOOD)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    big = GOOD + b"action_item,,m1,Pad this file out,,,,,,,\n" * 2000
    assert len(big) > 65536
    r = await import_csv(http, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_openapi_describes_the_import(http: httpx.AsyncClient):
    doc = (await http.get("/openapi.json")).json()
    op = doc["paths"]["/plans/import"]["post"]
    assert "text/csv" in op["requestBody"]["content"]
    assert {p["name"] for p in op["parameters"] if p["required"]} == set(PLAN_FIELDS)
    assert {"201", "400", "401", "413", "422"} <= set(op["responses"])
    row = doc["components"]["schemas"]["RowError"]
    assert set(row["required"]) == {"line", "column", "code", "message"}


# -- the CLI ---------------------------------------------------------------------------------


async def test_cli_imports_a_file_and_prints_bad_rows_by_line(
    base: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_bytes(GOOD)
    bad.write_bytes(GOOD + b"milestone,m7,,Fine,Ann,,2026-02-30,,,,\n")
    argv = ["--title", "From the CLI", "--buyer-org", "Acme", "--seller-org", "Globex"]
    argv += ["--url", base, "--token", token(SELLER)]
    code = await asyncio.to_thread(main, ["import", str(good), *argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "imported plan" in out.out and "2 milestones, 2 action items" in out.out
    code = await asyncio.to_thread(main, ["import", str(bad), *argv])
    out = capsys.readouterr()
    assert code == 1
    assert out.err.splitlines()[:2] == [
        "line 6: owner_side: say whether 'Ann' is on the buyer or the seller side",
        "line 6: due: `due` is '2026-02-30': write it as YYYY-MM-DD",
    ]
    assert "import_invalid" in out.err


async def test_cli_says_when_the_server_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "plan.csv"
    path.write_bytes(GOOD)
    argv = ["import", str(path), "--title", "T", "--buyer-org", "B", "--seller-org", "S"]
    argv += ["--url", "http://127.0.0.1:9", "--token", token(SELLER), "--timeout", "5"]
    code = await asyncio.to_thread(main, argv)
    assert code == 1 and "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


async def test_someone_elses_retry_of_an_import_is_told_the_plan_exists(
    http: httpx.AsyncClient,
):
    key = uuid.uuid4().hex
    plan_id = f"mine-{uuid.uuid4().hex[:8]}"
    first = await import_csv(http, GOOD, command_id=key, plan_id=plan_id)
    assert first.status_code == 201, first.text
    # a stranger who guesses the plan id and the command id learns nothing beyond "taken"
    other = await import_csv(
        http, GOOD, who="eve@elsewhere.example", command_id=key, plan_id=plan_id
    )
    assert other.status_code == 422, other.text
    assert other.json()["error"]["rule"] == "plan_exists"
