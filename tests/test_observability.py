"""Observability: /metrics in Prometheus text, /healthz and /readyz, request ids in JSON logs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from websockets.asyncio.client import connect

from server import logs, observability
from server.database import apply_schema
from server.settings import Settings
from server.store import Store
from tests import support
from tests.support import (
    ServerProcess,
    admin_url,
    auth,
    create_database,
    drop_database,
    settings_for,
    token,
    with_database,
)

SELLER = "olly@seller.example"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """Like tests.support.running_app, but hands out the app too (to reach app.state)."""
    async with (
        support.serving(settings) as (app, base),
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        yield app, http


@asynccontextmanager
async def fresh_database() -> AsyncIterator[tuple[str, str, str]]:
    """A database of its own (admin url, name, url), dropped at the end."""
    admin = await asyncio.to_thread(admin_url)
    name = await create_database(admin)
    url = with_database(admin, name)
    conn = await asyncpg.connect(url)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
    try:
        yield admin, name, url
    finally:
        await drop_database(admin, name)


async def scrape(http: httpx.AsyncClient) -> Samples:
    r = await http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def eventually(
    probe: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], seconds: float = 20
) -> Any:
    """Poll `probe` until `check` holds; fail with the last answer after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        got = await probe()
        if check(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {seconds} s; last: {got!r}")
        await asyncio.sleep(0.1)


async def new_plan(http: httpx.AsyncClient, **headers: str) -> httpx.Response:
    body = {"title": "Rollout", "buyer_org": "Contoso", "seller_org": "Northwind", "side": "seller"}
    r = await http.post("/plans", json=body, headers={**auth(SELLER), **headers})
    assert r.status_code == 201, r.text
    return r


async def command(
    http: httpx.AsyncClient, plan_id: str, type_: str, data: dict[str, Any], **extra: Any
) -> httpx.Response:
    body = {"type": type_, "data": data, "command_id": uuid.uuid4().hex, **extra}
    return await http.post(f"/plans/{plan_id}/commands", json=body, headers=auth(SELLER))


# -- /metrics ------------------------------------------------------------------------------


async def test_metrics_parse_and_count_appends_conflicts_commands_and_fanout(
    database_url: str, tmp_path: Path
):
    async with serving(settings_for(database_url, tmp_path)) as (_app, http):
        before = await scrape(http)
        names = {name for name, _ in before}
        for metric in (
            "mapstream_appends_total",
            "mapstream_conflicts_total",
            "mapstream_command_seconds_count",
            "mapstream_sockets",
            "mapstream_fanout_lag_seconds_count",
            "mapstream_webhook_backlog",
            "process_resident_memory_bytes",
        ):
            assert metric in names, metric
        for projection in ("audit", "snapshots", "analytics"):
            assert value(before, "mapstream_projection_lag_events", projection=projection) >= 0
        plan_id = (await new_plan(http)).json()["plan_id"]
        ok = await command(http, plan_id, "add_milestone", {"title": "Security review"})
        assert ok.status_code == 200, ok.text
        stale = await command(
            http, plan_id, "add_milestone", {"title": "Legal review"}, expected_version=1
        )
        assert stale.status_code == 409, stale.text
        refused = await command(
            http, plan_id, "update_milestone", {"id": "no-such-milestone", "title": "x"}
        )
        assert refused.status_code in (404, 422), refused.text
        events = (await http.get(f"/plans/{plan_id}/events", headers=auth(SELLER))).json()["events"]
        after = await scrape(http)

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert moved("mapstream_appends_total") == len(events)
        assert moved("mapstream_conflicts_total") == 1
        assert moved("mapstream_command_seconds_count", outcome="ok") == 2  # create + add
        assert moved("mapstream_command_seconds_count", outcome="conflict") == 1
        assert moved("mapstream_command_seconds_count", outcome="rejected") == 1
        assert moved("mapstream_command_seconds_count", outcome="error") == 0
        # the follower hands every new event to the hub; each hand-over is observed
        await eventually(
            lambda: scrape(http),
            lambda s: (
                value(s, "mapstream_fanout_lag_seconds_count")
                - value(before, "mapstream_fanout_lag_seconds_count")
                >= len(events)
            ),
        )


async def test_sockets_gauge_follows_open_sockets(database_url: str, tmp_path: Path):
    async with serving(settings_for(database_url, tmp_path)) as (_app, http):

        async def sockets() -> float:
            return value(await scrape(http), "mapstream_sockets")

        assert await sockets() == 0
        url = str(http.base_url).replace("http://", "ws://").rstrip("/") + "/ws"
        async with connect(url, additional_headers={"X-Request-Id": "socket-1"}) as ws:
            assert ws.response is not None
            assert ws.response.headers["x-request-id"] == "socket-1"
            await ws.send(json.dumps({"op": "auth", "token": token(SELLER)}))
            assert json.loads(await ws.recv())["op"] == "ready"
            async with connect(url) as second:
                await second.send(json.dumps({"op": "auth", "token": token(SELLER)}))
                assert json.loads(await second.recv())["op"] == "ready"
                await eventually(sockets, lambda n: n == 2)
            await eventually(sockets, lambda n: n == 1)
        await eventually(sockets, lambda n: n == 0)


async def test_asyncio_tasks_gauge_rises_with_open_sockets_and_falls_back_when_closed(
    database_url: str, tmp_path: Path
):
    async with serving(settings_for(database_url, tmp_path)) as (_app, http):

        async def tasks() -> float:
            return value(await scrape(http), "mapstream_asyncio_tasks")

        before = await tasks()
        assert before >= 1  # at least the scrape itself and the app's background tasks
        url = str(http.base_url).replace("http://", "ws://").rstrip("/") + "/ws"
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                ws = await stack.enter_async_context(connect(url))
                await ws.send(json.dumps({"op": "auth", "token": token(SELLER)}))
                assert json.loads(await ws.recv())["op"] == "ready"
            # an authenticated socket runs its handler, a sender, a reader and a token watch
            await eventually(tasks, lambda n: n >= before + 3 * 4)
        await eventually(tasks, lambda n: n <= before)


async def test_webhook_backlog_comes_from_the_registered_source(database_url: str, tmp_path: Path):
    async with serving(settings_for(database_url, tmp_path)) as (app, http):
        observability.set_webhook_backlog_source(None, app)  # whatever webhooks.start set
        assert value(await scrape(http), "mapstream_webhook_backlog") == 0
        try:
            observability.set_webhook_backlog_source(lambda: 3)  # process-wide default
            assert value(await scrape(http), "mapstream_webhook_backlog") == 3

            async def pending() -> int:
                return 7

            observability.set_webhook_backlog_source(pending, app)  # this app's own wins
            assert value(await scrape(http), "mapstream_webhook_backlog") == 7

            def broken() -> int:
                raise RuntimeError("webhook table unreachable")

            observability.set_webhook_backlog_source(broken, app)
            # a failing source leaves the last value; the scrape still answers
            assert value(await scrape(http), "mapstream_webhook_backlog") == 7
        finally:
            observability.set_webhook_backlog_source(None)
            observability.set_webhook_backlog_source(None, app)
        assert value(await scrape(http), "mapstream_webhook_backlog") == 0


# -- /healthz and /readyz ------------------------------------------------------------------


async def test_readyz_is_503_while_a_projection_lags_and_200_once_it_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MAPSTREAM_READY_MAX_LAG", "0.2")
    async with fresh_database() as (_admin, _name, url):
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        assert pool is not None
        try:
            # Hold the audit projection's lease, so this app's audit runner stands by.
            lease_cm = Store(pool).audit_table().lease()
            lease = await lease_cm.__aenter__()
            released = False
            try:
                assert lease.held
                async with serving(settings_for(url, tmp_path)) as (_app, http):
                    ready = await http.get("/readyz")
                    assert ready.status_code == 200, ready.text  # nothing to apply yet
                    assert ready.json()["database"] == "ok"
                    plan_id = (await new_plan(http)).json()["plan_id"]
                    r = await http.get(f"/plans/{plan_id}/events", headers=auth(SELLER))
                    appended = len(r.json()["events"])

                    async def readyz() -> httpx.Response:
                        return await http.get("/readyz")

                    lagging = await eventually(readyz, lambda r: r.status_code == 503)
                    body = lagging.json()
                    assert body["status"] == "not_ready" and body["database"] == "ok"
                    assert body["projections"]["audit"]["status"] == "behind"
                    assert body["projections"]["audit"]["lag_seconds"] > 0.2
                    samples = await scrape(http)
                    lag = value(samples, "mapstream_projection_lag_events", projection="audit")
                    assert lag == appended
                    age = value(samples, "mapstream_projection_lag_seconds", projection="audit")
                    assert age > 0.2
                    await lease_cm.__aexit__(None, None, None)
                    released = True
                    # the app's runner takes the lease, applies the events: ready again
                    caught_up = await eventually(readyz, lambda r: r.status_code == 200, 30)
                    assert caught_up.json()["projections"]["audit"]["status"] == "ok"
                    samples = await scrape(http)
                    assert (
                        value(samples, "mapstream_projection_lag_events", projection="audit") == 0
                    )
            finally:
                if not released:
                    await lease_cm.__aexit__(None, None, None)
        finally:
            await pool.close()


async def test_readyz_is_503_while_the_database_refuses_connections_and_healthz_stays_200(
    tmp_path: Path,
):
    async with fresh_database() as (admin, name, url):
        # a server process of its own: the outage below must not touch the other tests' apps
        server = await ServerProcess(url, tmp_path).start()
        conn = await asyncpg.connect(admin)
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                assert (await http.get("/readyz")).status_code == 200
                try:
                    # unreachable: no new connection is accepted and the open ones are cut
                    await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                        name,
                    )
                    r = await http.get("/readyz")
                    assert r.status_code == 503, r.text
                    assert r.json()["status"] == "not_ready"
                    assert r.json()["database"].startswith("unreachable")
                    alive = await http.get("/healthz")
                    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
                    # the scrape still answers; the lag it cannot measure is left as it was
                    assert "mapstream_sockets" in {n for n, _ in await scrape(http)}
                finally:
                    await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')

                async def readyz() -> httpx.Response:
                    return await http.get("/readyz")

                await eventually(readyz, lambda r: r.status_code == 200, 30)
        finally:
            await conn.close()
            # killed: a graceful shutdown after dropped connections can hang (known bug: a
            # projection lease's exit raises InterfaceError, which swallows the cancel)
            server.kill()
            await server.stop()


def test_ready_bound_must_be_a_number(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MAPSTREAM_READY_MAX_LAG", "soon")
    with pytest.raises(ValueError, match="MAPSTREAM_READY_MAX_LAG"):
        observability.ready_max_lag_from_env()
    monkeypatch.setenv("MAPSTREAM_READY_MAX_LAG", "-1")
    with pytest.raises(ValueError, match="MAPSTREAM_READY_MAX_LAG"):
        observability.ready_max_lag_from_env()
    monkeypatch.setenv("MAPSTREAM_READY_MAX_LAG", "5")
    assert observability.ready_max_lag_from_env() == 5.0
    monkeypatch.delenv("MAPSTREAM_READY_MAX_LAG")
    assert observability.ready_max_lag_from_env() == observability.DEFAULT_READY_MAX_LAG


def test_openapi_describes_metrics_and_health():
    from server.openapi import build

    doc = build()
    assert doc["paths"]["/metrics"]["get"]["security"] == []
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(doc["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert "Readiness" in doc["components"]["schemas"]
    assert "Liveness" in doc["paths"]["/healthz"]["get"]["summary"]


# -- request ids and logs ------------------------------------------------------------------


@pytest.fixture
def json_log() -> Any:
    """Everything the server's loggers write while the test runs, as JSON lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JSONFormatter())
    logger = logging.getLogger("server")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in out.getvalue().splitlines()]

    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_request_id_is_echoed_and_in_the_json_log_lines_of_the_request(
    database_url: str, tmp_path: Path, json_log: Any
):
    async with serving(settings_for(database_url, tmp_path)) as (_app, http):
        created = await new_plan(
            http, **{"X-Request-Id": "req-abc.123", "X-Correlation-Id": "deal-42"}
        )
        assert created.headers["x-request-id"] == "req-abc.123"
        plan_id = created.json()["plan_id"]
        r = await command(
            http, plan_id, "add_milestone", {"title": "Kickoff"}, correlation_id="corr-body-1"
        )
        assert r.status_code == 200
        generated = r.headers["x-request-id"]
        assert len(generated) == 32 and generated != "req-abc.123"
        junk = await http.get("/healthz", headers={"X-Request-Id": "has spaces in it"})
        assert junk.headers["x-request-id"] != "has spaces in it"  # replaced, not echoed
        lines = json_log()
        [access] = [
            line
            for line in lines
            if line["logger"] == "server.access" and line.get("request_id") == "req-abc.123"
        ]
        assert access["path"] == "/plans" and access["status"] == 201
        assert access["correlation_id"] == "deal-42" and access["level"] == "info"
        assert {"time", "message", "duration_ms"} <= set(access)
        [handled] = [
            line
            for line in lines
            if line["logger"] == "server.observability" and line.get("request_id") == generated
        ]
        assert handled["correlation_id"] == "corr-body-1" and handled["plan_id"] == plan_id
        assert handled["outcome"] == "ok" and handled["actor"] == SELLER
        # the path is logged with its parameters named; the plan id is a field of its own
        [command_access] = [
            line
            for line in lines
            if line["logger"] == "server.access" and line.get("request_id") == generated
        ]
        assert command_access["path"] == "/plans/{plan_id}/commands"
        assert command_access["plan_id"] == plan_id


async def test_invite_codes_stay_out_of_the_access_log(
    database_url: str, tmp_path: Path, json_log: Any
):
    async with serving(settings_for(database_url, tmp_path)) as (_app, http):
        plan_id = (await new_plan(http)).json()["plan_id"]
        r = await http.post(
            f"/plans/{plan_id}/invites",
            json={"side": "buyer", "role": "editor"},
            headers=auth(SELLER),
        )
        assert r.status_code == 201, r.text
        code = r.json()["code"]
        accepted = await http.post(
            f"/invites/{code}/accept", json={"name": "Bea", "email": "bea@buyer.example"}
        )
        assert accepted.status_code == 200, accepted.text
        # paths no route matches (a trailing slash, a typo) are cut to their first segment
        stray = await http.post(f"/invites/{code}/accept/", json={})
        assert stray.status_code in (307, 404, 405)
        assert (await http.get(f"/invite/{code}")).status_code == 404
        lines = json_log()
        assert any(line.get("path") == "/invites/{code}/accept" for line in lines)
        assert any(line.get("path") == "/invites/…" for line in lines)
        assert code not in json.dumps(lines)


async def test_server_process_writes_json_lines_with_the_request_id(
    database_url: str, tmp_path: Path
):
    env = {"MAPSTREAM_LOG_FORMAT": "json", "MAPSTREAM_LOG_LEVEL": "info"}
    server = await ServerProcess(database_url, tmp_path, env=env).start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.get("/plans/nope", headers={"X-Request-Id": "probe-7"})
            assert r.status_code == 401 and r.headers["x-request-id"] == "probe-7"
            quiet = await http.get("/readyz", headers={"X-Request-Id": "probe-8"})
            assert quiet.status_code == 200 and quiet.headers["x-request-id"] == "probe-8"
            await http.get("/plans/nope", headers={"X-Request-Id": "probe-9"})

        def logged() -> list[dict[str, Any]]:
            text = server.log_path.read_text(errors="replace")
            return [json.loads(line) for line in text.splitlines() if line.strip()]

        async def probe_lines() -> list[dict[str, Any]]:
            return [line for line in logged() if line.get("request_id") in ("probe-7", "probe-9")]

        [line, _] = await eventually(probe_lines, lambda found: len(found) == 2, 10)
        assert line["path"] == "/plans/{plan_id}" and line["status"] == 401
        assert line["logger"] == "server.access" and line["level"] == "info"
        # a passing probe is logged at debug only: not at this server's info level
        assert not [line for line in logged() if line.get("request_id") == "probe-8"]
    finally:
        await server.stop()


def test_log_format_choice():
    assert logs.choose_format(None, tty=True) == "text"
    assert logs.choose_format(None, tty=False) == "json"
    assert logs.choose_format("TEXT", tty=False) == "text"
    assert logs.choose_format("json", tty=True) == "json"
    with pytest.raises(SystemExit, match="MAPSTREAM_LOG_FORMAT"):
        logs.choose_format("xml", tty=False)


def test_text_lines_carry_the_request_context():
    record = logging.LogRecord(
        "server.x", logging.WARNING, __file__, 1, "slow %s", ("append",), None
    )
    token_ = logs.request_id.set("req-9")
    try:
        text = logs.TextFormatter().format(record)
        as_json = json.loads(logs.JSONFormatter().format(record))
    finally:
        logs.request_id.reset(token_)
    assert "WARNING server.x: slow append [request_id=req-9]" in text
    assert as_json["request_id"] == "req-9" and as_json["message"] == "slow append"
    assert "request_id" not in json.loads(logs.JSONFormatter().format(record))
