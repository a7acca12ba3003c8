"""Webhooks: an outbox read from the global log, delivered to a real local HTTP receiver that
fails on purpose; signed, retried with backoff, parked, replayed, in version order per plan.

The server runs on a database of its own: the delivery worker leads per database (advisory
lock), and this test needs its short backoff settings to be the leader's."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpcore
import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain import action_items as ai
from domain import members as mem
from domain import milestones as ms
from domain import plans as pl
from domain.model import CompellingEvent, Milestone, Plan
from projections.runner import ProjectionRunner
from server.database import apply_schema
from server.plans import PlanService
from server.store import Store
from server.webhooks import (
    MAX_ADDRESSES,
    DeliveryWorker,
    OutboxProjection,
    OutboxTable,
    PublicOnly,
    WebhookStore,
    backoff,
    changes_between,
    is_public,
    receiver_transport,
    signature_header,
    verify_signature,
)
from tests.support import (
    asgi_server,
    auth,
    cli_env,
    fresh_database,
    mapstream,
    running_app,
    settings_for,
)

SELLER = "sam@northwind.example"
BUYER = "bianca@contoso.example"
STRANGER = "eve@elsewhere.example"
MAX_ATTEMPTS = 4


# -- pure parts ------------------------------------------------------------------------------


def test_a_signature_verifies_and_a_tampered_body_wrong_secret_or_old_time_does_not():
    body = b'{"id":"p:1","type":"PlanCreated"}'
    now = 1_790_000_000
    header = signature_header("whsec_right", body, now)
    assert header.startswith(f"t={now},v1=")
    assert verify_signature("whsec_right", header, body, now=now + 10)
    assert not verify_signature("whsec_right", header, body.replace(b"p:1", b"p:2"), now=now)
    assert not verify_signature("whsec_wrong", header, body, now=now)
    assert not verify_signature("whsec_right", header, body, tolerance=300, now=now + 301)
    assert not verify_signature("whsec_right", f"t={now + 1},{header.split(',')[1]}", body, now=now)
    assert not verify_signature("whsec_right", "garbage", body, now=now)
    # while rotating, a header may carry one v1 per secret: any one that matches will do
    other = signature_header("whsec_old", body, now).split(",")[1]
    assert verify_signature("whsec_old", f"{header},{other}", body, now=now)


def test_backoff_doubles_per_failure_with_jitter_up_to_the_cap():
    rng = random.Random(7)
    for attempts in range(1, 12):
        full = min(60.0, 2.0 * 2 ** (attempts - 1))
        delays = [backoff(attempts, 2.0, 60.0, rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays), (attempts, delays)
        assert len({round(d, 6) for d in delays}) > 1  # jittered, not a fixed schedule


def test_changes_carry_the_previous_value_of_the_close_date_and_of_a_milestone_due_date():
    before = Plan(
        id="p",
        version=3,
        title="Eval",
        compelling_event=CompellingEvent("Go-live", date(2027, 9, 30)),
        milestones={"legal": Milestone(id="legal", title="Legal", due=date(2027, 8, 1))},
    )
    after = msgspec.structs.replace(
        before,
        version=4,
        compelling_event=CompellingEvent("Go-live", date(2027, 10, 15)),
        milestones={"legal": Milestone(id="legal", title="Legal", due=date(2027, 8, 15))},
        updated_at=datetime(2027, 1, 1, tzinfo=UTC),
    )
    got = {
        (c.item_kind, c.item_id, c.field): (c.before, c.after)
        for c in changes_between(before, after)
    }
    assert got == {
        ("plan", "plan", "compelling_event.date"): ("2027-09-30", "2027-10-15"),
        ("milestone", "legal", "due"): ("2027-08-01", "2027-08-15"),
    }


# -- a receiver that fails on purpose --------------------------------------------------------


class Received(msgspec.Struct):
    route: str
    id: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """`/flaky`: answers 500 to the first two attempts of each Webhook-Id, then 200.
    `/down`: 500 while `down`, then 200."""

    def __init__(self) -> None:
        self.got: list[Received] = []
        self.down = True
        self._seen: Counter[tuple[str, str]] = Counter()

    async def hook(self, request: Request) -> Response:
        route = request.path_params["route"]
        webhook_id = request.headers.get("webhook-id", "")
        self._seen[(route, webhook_id)] += 1
        if route == "flaky":
            status = 500 if self._seen[(route, webhook_id)] <= 2 else 200
        else:
            status = 500 if self.down else 200
        body = await request.body()
        self.got.append(Received(route, webhook_id, dict(request.headers), body, status))
        return Response(b"nope" if status >= 300 else b"ok", status_code=status)

    def on(self, route: str) -> list[Received]:
        return [r for r in self.got if r.route == route]


@asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[str]:
    app = Starlette(routes=[Route("/{route}", receiver.hook, methods=["POST"])])
    async with asgi_server(app, access_log=False, lifespan="off") as server:
        yield f"http://127.0.0.1:{server.config.port}"


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)
    assert await check(), what


async def new_plan(
    http: httpx.AsyncClient, seller_org: str, who: str = SELLER, **fields: Any
) -> str:
    """A plan `who` creates on the seller side, naming `seller_org`: its id."""
    body = {"title": "Deal", "buyer_org": "B", "seller_org": seller_org, "side": "seller"}
    r = await http.post("/plans", json={**body, **fields}, headers=auth(who))
    assert r.status_code == 201, r.text
    return str(r.json()["plan_id"])


async def command(
    http: httpx.AsyncClient, plan_id: str, kind: str, who: str = SELLER, **data: Any
) -> int:
    """A command `who` sends over HTTP, accepted: the plan's new version."""
    r = await http.post(
        f"/plans/{plan_id}/commands",
        json={"type": kind, "command_id": uuid.uuid4().hex, "data": data},
        headers=auth(who),
    )
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


# -- end to end ------------------------------------------------------------------------------


async def test_a_receiver_that_fails_twice_gets_each_event_once_in_order_signed(tmp_path: Path):
    org = f"Northwind {uuid.uuid4().hex[:6]}"
    receiver = Receiver()
    async with fresh_database(schema=False) as db, serving(receiver) as hooks_url:
        settings = settings_for(
            db,
            tmp_path,
            webhook_backoff=0.05,
            webhook_backoff_max=0.2,
            webhook_max_attempts=MAX_ATTEMPTS,
            webhook_poll=0.05,
            webhook_timeout=5.0,
            # this test's sellers manage their org's webhooks, and the receiver is local
            webhook_admins_only=False,
            webhook_allow_private=True,
        )
        async with (
            running_app(settings) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            a, b = [
                await new_plan(
                    http,
                    org,
                    title=f"Plan {name}",
                    buyer_org="Contoso",
                    compelling_event={"name": "Go-live", "date": "2027-09-30"},
                )
                for name in ("a", "b")
            ]
            await command(http, b, "add_member", email=BUYER, side="buyer", role="editor")

            async def seller_may_manage() -> bool:
                r = await http.get("/webhooks", params={"seller_org": org}, headers=auth(SELLER))
                return r.status_code == 200

            # who manages an organisation's webhooks is read from the analytics projection
            await until(seller_may_manage, "the seller never got access to the org's webhooks")

            # -- who may subscribe, and bad input (each refused, nothing created)
            sub_in = {"seller_org": org, "url": f"{hooks_url}/flaky", "events": ["*"]}
            r = await http.post("/webhooks", json=sub_in, headers=auth(STRANGER))
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            r = await http.post("/webhooks", json=sub_in, headers=auth(BUYER))
            assert r.status_code == 403
            for bad, field in [
                ({**sub_in, "url": "ftp://example.com/x"}, "url"),
                ({**sub_in, "url": "http://"}, "url"),
                ({**sub_in, "url": "http://a..b/x"}, "url"),  # no IDNA encoding: not a 500
                ({**sub_in, "events": ["NoSuchEvent"]}, "events"),
                ({**sub_in, "events": []}, "events"),
                ({**sub_in, "colour": "red"}, "colour"),
                ({**sub_in, "seller_org": ""}, "seller_org"),
            ]:
                r = await http.post("/webhooks", json=bad, headers=auth(SELLER))
                assert r.status_code == 400, (bad, r.text)
                assert r.json()["error"] == {
                    **r.json()["error"],
                    "code": "malformed",
                    "field": field,
                }
            r = await http.get("/webhooks", params={"seller_org": org}, headers=auth(SELLER))
            assert r.json()["webhooks"] == []
            r = await http.get("/webhooks", headers=auth(SELLER))
            assert r.status_code == 400 and r.json()["error"]["field"] == "seller_org"

            # -- two subscriptions: everything to /flaky, the close date only to /down
            r = await http.post("/webhooks", json=sub_in, headers=auth(SELLER))
            assert r.status_code == 201, r.text
            flaky = r.json()
            assert flaky["secret"].startswith("whsec_") and flaky["events"] == ["*"]
            r = await http.post(
                "/webhooks",
                json={**sub_in, "url": f"{hooks_url}/down", "events": ["CompellingEventSet"]},
                headers=auth(SELLER),
            )
            assert r.status_code == 201, r.text
            down = r.json()
            listed = (
                await http.get("/webhooks", params={"seller_org": org}, headers=auth(SELLER))
            ).json()["webhooks"]
            assert {w["subscription_id"] for w in listed} == {
                flaky["subscription_id"],
                down["subscription_id"],
            }
            assert all("secret" not in w for w in listed)

            # -- events after the subscriptions, on two plans
            first = {
                p: (await http.get(f"/plans/{p}", headers=auth(SELLER))).json()["version"]
                for p in (a, b)
            }
            await command(
                http, a, "add_milestone", id="legal", title="Legal review", due="2027-08-01"
            )
            await command(http, b, "add_milestone", id="kickoff", title="Kickoff")
            close_date_v = await command(
                http, a, "set_compelling_event", name="Go-live", date="2027-10-15"
            )
            await command(
                http,
                b,
                "add_action_item",
                id="discount",
                milestone_id="kickoff",
                title="Seller-only discount ladder",
                visibility="internal",
            )
            budget_v = await command(
                http,
                b,
                "add_action_item",
                who=BUYER,
                id="budget",
                milestone_id="kickoff",
                title="Buyer-only budget ceiling",
                visibility="internal",
            )
            slip_v = await command(
                http, a, "reschedule_milestone", id="legal", due="2027-08-15", reason="Counsel away"
            )
            await command(http, b, "set_action_item_status", id="discount", status="in_progress")
            last = {
                p: (await http.get(f"/plans/{p}", headers=auth(SELLER))).json()["version"]
                for p in (a, b)
            }
            expected = {f"{p}:{v}" for p in (a, b) for v in range(first[p] + 1, last[p] + 1)} - {
                f"{b}:{budget_v}"
            }
            assert len(expected) == 6

            async def all_accepted() -> bool:
                return {r.id for r in receiver.on("flaky") if r.status == 200} >= expected

            await until(all_accepted, "not every event reached the flaky receiver")

            # each event accepted exactly once, after two refusals, and nothing else sent
            got = receiver.on("flaky")
            accepted = Counter(r.id for r in got if r.status == 200)
            assert set(accepted) == expected and set(accepted.values()) == {1}
            assert Counter(r.id for r in got) == {i: 3 for i in expected}
            assert [r.headers["mapstream-attempt"] for r in got if r.id == f"{a}:{slip_v}"] == [
                "1",
                "2",
                "3",
            ]
            # in version order per plan: v+1 never went out before v was accepted
            for p in (a, b):
                sent = [r.json()["version"] for r in got if r.json()["plan_id"] == p]
                assert sent == sorted(sent), (p, sent)
            # signed: every request verifies; a changed body or another secret does not
            for req in got:
                assert (
                    req.json()["id"] == req.id
                    and req.json()["subscription_id"] == flaky["subscription_id"]
                )
                sig = req.headers["mapstream-signature"]
                assert sig.startswith(f"t={req.headers['webhook-timestamp']},v1=")
                assert verify_signature(flaky["secret"], sig, req.body)
                assert not verify_signature(
                    flaky["secret"], sig, req.body.replace(b"Plan", b"Plam")
                )
                assert not verify_signature(down["secret"], sig, req.body)
            # the same event is the same bytes on every attempt
            bodies = {r.id: r.body for r in got if r.status == 200}
            assert all(r.body == bodies[r.id] for r in got)

            # payloads carry the previous value: a CRM syncs the close date without history
            by_id = {i: json.loads(body) for i, body in bodies.items()}
            close = by_id[f"{a}:{close_date_v}"]
            assert close["type"] == "CompellingEventSet"
            assert close["plan"]["compelling_event"] == {"name": "Go-live", "date": "2027-10-15"}
            assert {
                "item_kind": "plan",
                "item_id": "plan",
                "field": "compelling_event.date",
                "before": "2027-09-30",
                "after": "2027-10-15",
            } in close["changes"]
            slip = by_id[f"{a}:{slip_v}"]
            assert slip["data"]["reason"] == "Counsel away"
            assert {
                "item_kind": "milestone",
                "item_id": "legal",
                "field": "due",
                "before": "2027-08-01",
                "after": "2027-08-15",
            } in slip["changes"]
            # the seller's own internal item goes to the seller's systems; the buyer's never
            assert any(
                m["data"].get("title") == "Seller-only discount ladder" for m in by_id.values()
            )
            assert {m["audience"] for m in by_id.values()} == {None, "seller"}
            for req in receiver.got:
                assert b"Buyer-only" not in req.body and b'"budget"' not in req.body

            # -- /down refuses everything: the close-date delivery is parked after N attempts
            down_id = down["subscription_id"]

            async def parked() -> list[dict[str, Any]]:
                r = await http.get(
                    f"/webhooks/{down_id}/deliveries",
                    params={"status": "parked"},
                    headers=auth(SELLER),
                )
                assert r.status_code == 200, r.text
                return list(r.json()["deliveries"])

            async def is_parked() -> bool:
                return len(await parked()) == 1

            await until(is_parked, "the failing delivery was never parked")
            (row,) = await parked()
            assert row["id"] == f"{a}:{close_date_v}" and row["attempts"] == MAX_ATTEMPTS
            assert row["last_status"] == 500 and row["last_error"] == "HTTP 500"
            assert [r.status for r in receiver.on("down")] == [500] * MAX_ATTEMPTS

            # -- re-driven from the command line once the receiver is back
            receiver.down = False
            done = await mapstream(cli_env(db, tmp_path), "webhooks", "replay", down_id)
            assert done.returncode == 0, done.stderr
            assert f"{down_id}: 1 delivery queued again" in done.stdout

            async def redelivered() -> bool:
                return [r.status for r in receiver.on("down")][-1:] == [200]

            await until(redelivered, "the replayed delivery never arrived")
            last_down = receiver.on("down")[-1]
            assert last_down.id == f"{a}:{close_date_v}"
            assert verify_signature(
                down["secret"], last_down.headers["mapstream-signature"], last_down.body
            )
            assert json.loads(last_down.body)["changes"] == close["changes"]

            done = await mapstream(cli_env(db, tmp_path), "webhooks", "list", "--org", org)
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert any(
                line.startswith(flaky["subscription_id"]) and "delivered 6, parked 0" in line
                for line in lines
            ), lines
            assert any(
                line.startswith(down_id) and "delivered 1, parked 0" in line for line in lines
            ), lines
            done = await mapstream(cli_env(db, tmp_path), "webhooks", "deliveries", down_id)
            assert (
                done.returncode == 0
                and f"{a}:{close_date_v}  CompellingEventSet  delivered at" in done.stdout
            )
            done = await mapstream(cli_env(db, tmp_path), "webhooks", "replay", down_id)
            assert "nothing to replay" in done.stdout

            # -- one delivered event sent again over HTTP: same idempotency id, same bytes
            before = len(receiver.on("flaky"))
            r = await http.post(
                f"/webhooks/{flaky['subscription_id']}/replay",
                json={"plan_id": a, "version": close_date_v},
                headers=auth(SELLER),
            )
            assert r.status_code == 200 and r.json()["replayed"] == 1, r.text

            async def resent() -> bool:
                return len(receiver.on("flaky")) > before

            await until(resent, "the replayed event was not sent again")
            again = receiver.on("flaky")[before]
            assert again.id == f"{a}:{close_date_v}" and again.body == bodies[again.id]

            # -- others cannot see or touch the subscriptions; bad input changes nothing
            for method, path in [
                ("GET", f"/webhooks/{down_id}/deliveries"),
                ("POST", f"/webhooks/{down_id}/replay"),
                ("DELETE", f"/webhooks/{down_id}"),
            ]:
                r = await http.request(method, path, headers=auth(STRANGER))
                assert r.status_code == 404, (method, path, r.text)
            r = await http.get("/webhooks", params={"seller_org": org}, headers=auth(STRANGER))
            assert r.status_code == 403
            r = await http.get(f"/webhooks/{down_id}/deliveries?status=lost", headers=auth(SELLER))
            assert r.status_code == 400 and r.json()["error"]["field"] == "status"
            r = await http.post(
                f"/webhooks/{down_id}/replay", json={"version": 3}, headers=auth(SELLER)
            )
            assert r.status_code == 400 and r.json()["error"]["field"] == "version"
            r = await http.get("/webhooks/wh_0000000000000000/deliveries", headers=auth(SELLER))
            assert r.status_code == 404

            # -- deleting stops the subscription
            r = await http.delete(f"/webhooks/{down_id}", headers=auth(SELLER))
            assert r.status_code == 200 and r.json() == {
                "subscription_id": down_id,
                "deleted": True,
            }
            r = await http.delete(f"/webhooks/{down_id}", headers=auth(SELLER))
            assert r.status_code == 404
            listed = (
                await http.get("/webhooks", params={"seller_org": org}, headers=auth(SELLER))
            ).json()["webhooks"]
            assert [w["subscription_id"] for w in listed] == [flaky["subscription_id"]]
            assert listed[0]["delivered"] == 6 and listed[0]["parked"] == 0

            doc = (await http.get("/openapi.json")).json()
            for path in ("/webhooks", "/webhooks/{subscription_id}/replay"):
                assert path in doc["paths"]
            assert "WebhookPayload" in doc["components"]["schemas"]


# -- the outbox projection on its own --------------------------------------------------------


async def test_the_outbox_writes_one_row_per_subscription_and_event_even_across_a_crash():
    async with fresh_database(schema=False) as db:
        pool = await asyncpg.create_pool(db, min_size=1, max_size=4)
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                await apply_schema(conn)
            store = Store(pool)
            service = PlanService(store)
            hooks = WebhookStore(pool)
            org, other = "Northwind", "Fabrikam"
            await service.handle(
                "p", pl.CreatePlan(title="P", buyer_org="B", seller_org=org, side="seller"), SELLER
            )
            await service.handle(
                "q",
                pl.CreatePlan(title="Q", buyer_org="B", seller_org=other, side="seller"),
                SELLER,
            )
            await service.handle(
                "p", mem.AddMember(email=BUYER, side="buyer", role="editor"), SELLER
            )
            everything = await hooks.create(org, "http://127.0.0.1:9/a", ["*"], "", SELLER)
            milestones = await hooks.create(
                org, "http://127.0.0.1:9/m", ["MilestoneAdded"], "", SELLER
            )
            deleted = await hooks.create(org, "http://127.0.0.1:9/d", ["*"], "", SELLER)
            assert await hooks.delete(deleted.subscription_id)
            added = await service.handle("p", ms.AddMilestone(id="m1", title="Kickoff"), SELLER)
            renamed = await service.handle("p", pl.UpdatePlan(title="P2"), SELLER)
            internal = await service.handle(
                "p",
                ai.AddActionItem(
                    id="secret", milestone_id="m1", title="Buyer only", visibility="internal"
                ),
                BUYER,
            )
            await service.handle("q", ms.AddMilestone(id="m1", title="Kickoff"), SELLER)
            last = (await store.read_stream("q"))[-1].cursor

            async def visible() -> bool:
                return await store.log_head() >= last

            await until(visible, "the appends never became visible to log readers")

            runner: ProjectionRunner[Any] = ProjectionRunner(
                OutboxProjection(service.at_version, hooks.targets),
                OutboxTable(pool, lambda: None, name="webhooks-test"),
                store,
            )

            async def crash() -> None:
                raise RuntimeError("crash before commit")

            async def rows() -> list[tuple[str, str, int]]:
                found = await pool.fetch(
                    "SELECT subscription_id, plan_id, version FROM webhook_deliveries"
                    " ORDER BY subscription_id, plan_id, version"
                )
                return [(r[0], r[1], r[2]) for r in found]

            runner.before_commit = crash
            with pytest.raises(RuntimeError):
                await runner.step()
            assert await rows() == []  # the rows went with the rolled-back checkpoint move

            runner.before_commit = None
            await runner.catch_up()
            assert internal.version == renamed.version + 1  # the buyer's: never sent
            want = sorted(
                [
                    (everything.subscription_id, "p", added.version),
                    (everything.subscription_id, "p", renamed.version),
                    (milestones.subscription_id, "p", added.version),
                ]
            )
            assert await rows() == want
            await runner.rebuild()  # the whole log again: the same rows, once
            assert await rows() == want
            assert await hooks.backlog() == len(want)  # all pending: mapstream_webhook_backlog
            # retention: a delivery accepted long ago is forgotten, owed ones never are
            gone = (everything.subscription_id, "p", added.version)
            sub, plan, version = gone
            await pool.execute(
                "UPDATE webhook_deliveries SET status = 'delivered',"
                " delivered_at = now() - interval '40 days'"
                " WHERE subscription_id = $1 AND plan_id = $2 AND version = $3",
                sub,
                plan,
                version,
            )
            assert await hooks.prune(0) == 0  # 0 keeps everything
            assert await hooks.prune(30) == 1
            want.remove(gone)
            assert await rows() == want
            assert await hooks.prune(30) == 0
            body = json.loads(
                await pool.fetchval(
                    "SELECT body::text FROM webhook_deliveries"
                    " WHERE subscription_id = $1 AND version = $2",
                    everything.subscription_id,
                    renamed.version,
                )
            )
            assert body["changes"] == [
                {
                    "item_kind": "plan",
                    "item_id": "plan",
                    "field": "title",
                    "before": "P",
                    "after": "P2",
                }
            ]

            # two instances' workers: one leads and sends; a refused connection is a failed
            # attempt, and the deliveries are parked after the last one
            settings = settings_for(
                db,
                Path("/tmp"),
                webhook_backoff=0.01,
                webhook_max_attempts=2,
                webhook_poll=0.02,
                webhook_allow_private=True,
            )
            workers = [DeliveryWorker(hooks, settings, standby_interval=0.05) for _ in range(2)]
            tasks = [asyncio.create_task(w.run()) for w in workers]
            try:

                async def all_parked() -> bool:
                    n = await pool.fetchval(
                        "SELECT count(*) FROM webhook_deliveries WHERE status = 'parked'"
                    )
                    return int(n) == len(want)

                await until(all_parked, "the refused deliveries were never parked")
                assert sorted(w.sent for w in workers) == [0, 2 * len(want)]
                assert [w.leading for w in workers].count(True) == 1
                errors = await pool.fetch("SELECT attempts, last_error FROM webhook_deliveries")
                assert all(r["attempts"] == 2 and "ConnectError" in r["last_error"] for r in errors)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            # re-driven: pending again with a fresh count (a second replay finds none parked)
            assert await hooks.replay(milestones.subscription_id) == 1
            assert await hooks.replay(milestones.subscription_id) == 0
            row = await pool.fetchrow(
                "SELECT status, attempts FROM webhook_deliveries WHERE subscription_id = $1",
                milestones.subscription_id,
            )
            assert row is not None and (row["status"], row["attempts"]) == ("pending", 0)
        finally:
            await pool.close()


async def test_by_default_only_admins_subscribe_and_only_to_public_addresses(
    database_url: str, tmp_path: Path
):
    settings = settings_for(database_url, tmp_path, admins=frozenset({"root@ops.example"}))
    assert settings.webhook_admins_only and not settings.webhook_allow_private
    async with (
        running_app(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        org = f"Fabrikam {uuid.uuid4().hex[:6]}"
        await new_plan(http, org)
        sub_in = {"seller_org": org, "url": "https://hooks.example.com/in", "events": ["*"]}
        # a seller of one plan would otherwise receive every plan of the organisation
        r = await http.post("/webhooks", json=sub_in, headers=auth(SELLER))
        assert r.status_code == 403, r.text
        for private in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/x"):
            r = await http.post(
                "/webhooks", json={**sub_in, "url": private}, headers=auth("root@ops.example")
            )
            assert r.status_code == 400 and r.json()["error"]["field"] == "url", r.text
        r = await http.get(
            "/webhooks", params={"seller_org": org}, headers=auth("root@ops.example")
        )
        assert r.status_code == 200 and r.json()["webhooks"] == []


# -- addresses: checked where the connection is made ------------------------------------------


async def test_the_delivery_transport_connects_only_to_public_addresses():
    """`receiver_transport` refuses, before a byte is sent, any host that resolves into the
    server's own network, by address or by name; with private addresses allowed it connects."""
    receiver = Receiver()
    async with serving(receiver) as base:
        port = int(base.rsplit(":", 1)[1])
        async with httpx.AsyncClient(transport=receiver_transport(False), trust_env=False) as c:
            for url in (f"{base}/flaky", f"http://localhost:{port}/flaky"):
                with pytest.raises(httpx.ConnectError, match="own network"):
                    await c.post(url, content=b"{}")
            with pytest.raises(httpx.ConnectError, match="does not resolve"):
                await c.post("http://no-such-host.invalid/x", content=b"{}")
        assert receiver.got == []  # nothing reached the receiver
        async with httpx.AsyncClient(transport=receiver_transport(True), trust_env=False) as c:
            r = await c.post(f"{base}/down", content=b"{}")
        assert r.status_code == 500 and len(receiver.got) == 1  # it did reach it


async def test_a_name_that_passed_the_subscription_check_is_refused_when_it_points_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """DNS rebinding: the name looked public when the subscription was made (simulated: the
    subscription-time check is told so) and resolves to 127.0.0.1 when the delivery connects.
    The attempt fails at connect time and the local receiver never hears of it."""
    import server.webhooks as webhooks_module

    async def looked_public(url: str) -> None:
        return None

    monkeypatch.setattr(webhooks_module, "private_address", looked_public)
    org = f"Litware {uuid.uuid4().hex[:6]}"
    receiver = Receiver()
    async with fresh_database(schema=False) as db, serving(receiver) as hooks_url:
        port = int(hooks_url.rsplit(":", 1)[1])
        settings = settings_for(
            db,
            tmp_path,
            admins=frozenset({"root@ops.example"}),
            webhook_poll=0.05,
            webhook_backoff=0.05,
            webhook_backoff_max=0.2,
        )
        assert not settings.webhook_allow_private
        async with (
            running_app(settings) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            plan_id = await new_plan(http, org)
            r = await http.post(
                "/webhooks",
                json={"seller_org": org, "url": f"http://localhost:{port}/down", "events": ["*"]},
                headers=auth("root@ops.example"),
            )
            assert r.status_code == 201, r.text  # the (simulated) check said public
            sub_id = r.json()["subscription_id"]
            await command(http, plan_id, "add_comment", item_id="plan", text="hello")

            async def refused() -> bool:
                r = await http.get(
                    f"/webhooks/{sub_id}/deliveries", headers=auth("root@ops.example")
                )
                return any(
                    d["attempts"] >= 2 and "own network" in (d["last_error"] or "")
                    for d in r.json()["deliveries"]
                )

            await until(refused, "the delivery was not refused at connect time")
            assert receiver.got == []


# -- secret rotation ---------------------------------------------------------------------------


async def test_a_rotated_secret_signs_with_the_old_one_until_its_grace_ends(tmp_path: Path):
    org = f"Adatum {uuid.uuid4().hex[:6]}"
    admin = "root@ops.example"
    receiver = Receiver()
    receiver.down = False  # /down answers 200
    async with fresh_database(schema=False) as db, serving(receiver) as hooks_url:
        settings = settings_for(
            db,
            tmp_path,
            admins=frozenset({admin}),
            webhook_poll=0.05,
            webhook_allow_private=True,  # the receiver is local
        )
        async with (
            running_app(settings) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            plan_id = await new_plan(http, org)
            r = await http.post(
                "/webhooks",
                json={"seller_org": org, "url": f"{hooks_url}/down", "events": ["CommentAdded"]},
                headers=auth(admin),
            )
            assert r.status_code == 201, r.text
            sub_id, first = r.json()["subscription_id"], r.json()["secret"]

            async def delivered(text: str) -> Received:
                await command(http, plan_id, "add_comment", item_id="plan", text=text)

                async def arrived() -> bool:
                    return any(text in g.body.decode() for g in receiver.got)

                await until(arrived, f"{text!r} was not delivered")
                return next(g for g in receiver.got if text in g.body.decode())

            def signed_by(got: Received, secret: str) -> bool:
                return verify_signature(secret, got.headers["mapstream-signature"], got.body)

            one = await delivered("before any rotation")
            assert signed_by(one, first) and one.headers["mapstream-signature"].count("v1=") == 1

            # bad input changes nothing; only those who manage the webhook may rotate it
            for bad, field in [
                ({"keep_previous_for": -1}, "keep_previous_for"),
                ({"keep_previous_for": 8 * 86_400}, "keep_previous_for"),
                ({"keep_previous_for": "a day"}, "keep_previous_for"),
                ({"colour": "red"}, "colour"),
            ]:
                r = await http.post(f"/webhooks/{sub_id}/secret", json=bad, headers=auth(admin))
                assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text
            r = await http.post(f"/webhooks/{sub_id}/secret", headers=auth(SELLER))
            assert r.status_code == 404, r.text  # admins only (the default): not theirs to see
            r = await http.post("/webhooks/wh_0000000000000000/secret", headers=auth(admin))
            assert r.status_code == 404, r.text
            assert signed_by(await delivered("nothing rotated yet"), first)

            # rotate: for a day, both secrets sign every delivery
            r = await http.post(f"/webhooks/{sub_id}/secret", headers=auth(admin))
            assert r.status_code == 200, r.text
            second = r.json()["secret"]
            until_at = datetime.fromisoformat(r.json()["previous_valid_until"])
            assert second.startswith("whsec_") and second != first
            assert 86_000 < (until_at - datetime.now(UTC)).total_seconds() <= 86_400
            both = await delivered("during the grace period")
            assert signed_by(both, second) and signed_by(both, first)
            assert both.headers["mapstream-signature"].count("v1=") == 2

            # rotate with no grace: only the newest secret signs
            r = await http.post(
                f"/webhooks/{sub_id}/secret", json={"keep_previous_for": 0}, headers=auth(admin)
            )
            assert r.status_code == 200 and r.json()["previous_valid_until"] is None, r.text
            third = r.json()["secret"]
            last = await delivered("after the grace period")
            assert signed_by(last, third)
            assert not signed_by(last, second) and not signed_by(last, first)

            # the CLI rotates too (for operators), printing the new secret once
            env = cli_env(db, tmp_path)
            done = await mapstream(
                env, "webhooks", "rotate-secret", sub_id, "--keep-previous", "60"
            )
            assert done.returncode == 0, done.stderr
            fourth = done.stdout.strip()
            assert fourth.startswith("whsec_") and "signs too until" in done.stderr
            cli = await delivered("rotated from the command line")
            assert signed_by(cli, fourth) and signed_by(cli, third)
            missing = await mapstream(env, "webhooks", "rotate-secret", "wh_0000000000000000")
            assert missing.returncode == 1 and "no such webhook" in missing.stderr


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("64:ff9b::808:808", True),  # 8.8.8.8 through NAT64
        ("2002:5db8:d822::1", True),  # 6to4 of 93.184.216.34
        ("127.0.0.1", False),
        ("10.0.0.5", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("64:ff9b::a00:5", False),  # NAT64 of 10.0.0.5: `ipaddress` alone calls it global
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("::127.0.0.1", False),  # IPv4-compatible
    ],
)
def test_is_public_looks_inside_ipv6_addresses_that_carry_ipv4(address: str, public: bool):
    assert is_public(address) is public


async def test_a_host_with_many_silent_addresses_costs_one_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
):
    """The lookup and every address share one deadline; at most MAX_ADDRESSES are tried, and
    each failure is named in the error."""
    addresses = [f"93.184.216.{n}" for n in range(16)]

    async def resolve(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolve)
    tried: list[str] = []

    class Silent:
        async def connect_tcp(self, host: str, port: int, **_: Any) -> Any:
            tried.append(host)
            await asyncio.sleep(3600)

    class Refusing:
        async def connect_tcp(self, host: str, port: int, **_: Any) -> Any:
            tried.append(host)
            raise httpcore.ConnectError("connection refused")

    backend = PublicOnly()
    backend._inner = Silent()  # type: ignore[assignment]
    started = time.monotonic()
    with pytest.raises(httpcore.ConnectTimeout, match=r"many\.example"):
        await backend.connect_tcp("many.example", 443, timeout=0.3)
    assert time.monotonic() - started < 2.0 and tried == addresses[:1]

    tried.clear()
    backend._inner = Refusing()  # type: ignore[assignment]
    with pytest.raises(httpcore.ConnectError) as refused:
        await backend.connect_tcp("many.example", 443, timeout=5)
    assert tried == addresses[:MAX_ADDRESSES]
    assert str(refused.value).count("connection refused") == MAX_ADDRESSES


async def test_the_prune_forgets_a_previous_secret_once_its_grace_is_over():
    async with fresh_database() as db:
        pool = await asyncpg.create_pool(db, min_size=1, max_size=2)
        assert pool is not None
        try:
            hooks = WebhookStore(pool)
            sub = await hooks.create("Adatum", "https://hooks.example.com/in", ["*"], "", "a@b.c")
            short = await hooks.rotate_secret(sub.subscription_id, 1)
            long = await hooks.create("Adatum", "https://hooks.example.com/2", ["*"], "", "a@b.c")
            await hooks.rotate_secret(long.subscription_id, 3600)
            assert short is not None and short.previous_valid_until is not None
            await asyncio.sleep(1.2)
            await hooks.prune(0)  # also when delivered rows are kept forever
            rows = await pool.fetch(
                "SELECT subscription_id, previous_secret IS NULL AS gone"
                " FROM webhook_subscriptions ORDER BY created_at"
            )
            assert [(r["subscription_id"], r["gone"]) for r in rows] == [
                (sub.subscription_id, True),
                (long.subscription_id, False),
            ]
        finally:
            await pool.close()
