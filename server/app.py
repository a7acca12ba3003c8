"""`create_app(settings)`: builds pool, store and services in the lifespan, on `app.state`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from domain.errors import MapstreamError
from server import memory, observability, webhooks
from server.codec import json_response
from server.database import apply_schema, resolve_database_url, wait_for_database
from server.errors import RateLimited, database_down, error_body, status_of
from server.follower import LogFollower, Waker
from server.http import routes
from server.hub import Hub
from server.invites import InviteStore
from server.limits import RateLimiter
from server.plans import PlanService, Unavailable
from server.presence import Presence
from server.replica import ReadRouter
from server.settings import Settings
from server.store import Store
from server.tools import projection_runners
from server.ws import Connection, WSSettings, on_membership, presence_broadcaster, shutdown_all

log = logging.getLogger(__name__)


async def create_pool(settings: Settings, url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        command_timeout=30,
        server_settings={
            "application_name": "mapstream",
            # a stuck writer would hold back every global-log reader: cut it off
            "idle_in_transaction_session_timeout": str(settings.idle_in_transaction_ms),
        },
    )
    assert pool is not None
    return pool


async def _seed_demo(app: Starlette, settings: Settings, url: str | None) -> None:
    from datetime import UTC, datetime

    from server.demo import BUYER, DEMO_PLAN_ID, SELLER, ensure_demo
    from server.tokens import issue

    created = await ensure_demo(app.state.plans, datetime.now(UTC).date())
    ttl = settings.token_ttl_seconds
    base = url or f"http://{settings.host}:{settings.port}"
    lines = [
        "",
        f"  Mapstream is running at {base}",
        f"  Demo plan: {base}/plans/{DEMO_PLAN_ID} ({'created now' if created else 'already there'})",
        f"  Seller token ({SELLER}):",
        f"    {issue(SELLER, settings.signing_secret, ttl)}",
        f"  Buyer token ({BUYER}):",
        f"    {issue(BUYER, settings.signing_secret, ttl)}",
        "  Try:",
        f"    curl -H 'Authorization: Bearer <seller token>' {base}/plans/{DEMO_PLAN_ID}",
        "",
    ]
    print("\n".join(lines), flush=True)


def create_app(settings: Settings, *, demo: bool = False, announce: str | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        url, embedded = await asyncio.to_thread(
            resolve_database_url, settings.database_url, settings.data_dir
        )
        await wait_for_database(url)
        pool = await create_pool(settings, url)
        async with pool.acquire() as conn:
            await apply_schema(conn)
        store = Store(pool)
        hub = Hub()
        registry: set[Connection] = set()
        waker = Waker(pool)
        metrics = observability.of(app).metrics  # per-app registry: see server/observability.py
        follower = LogFollower(store, metrics.delivering(hub.publish), database_url=url)

        def appended(plan_id: str, version: int) -> None:
            follower.wake()
            reads.wrote(plan_id, version)
            waker.poke()

        plans = PlanService(store, on_append=appended, metrics=metrics)
        plans.cut_off = follower.lost.is_set
        reads = await ReadRouter.open(settings, plans)  # DATABASE_REPLICA_URL, if set
        limits = {
            "command": RateLimiter(settings.command_rate, settings.command_burst),
            "read": RateLimiter(settings.read_rate, settings.read_burst),
        }
        presence = Presence(pool, ttl=settings.presence_ttl, broadcast=presence_broadcaster(hub))
        hub.on_membership = on_membership(hub, registry)
        app.state.settings = settings
        app.state.embedded = embedded
        app.state.store = store
        app.state.plans = plans
        app.state.hub = hub
        app.state.follower = follower
        app.state.presence = presence
        app.state.connections = registry
        app.state.invites = InviteStore(pool)
        app.state.limits = limits
        app.state.reads = reads
        tasks = [
            asyncio.create_task(waker.run(), name="waker"),
            asyncio.create_task(follower.run(), name="log-follower"),
            asyncio.create_task(
                presence.run(url, lambda plan_id: bool(hub.subscribers(plan_id))), name="presence"
            ),
        ]
        # asynchronous projections (audit trail, snapshots, portfolio analytics): one runner
        # each, leased per cluster (server/tools.py projection_runners registers them)
        app.state.projections = projection_runners(store, plans)
        for name, runner in app.state.projections.items():
            tasks.append(asyncio.create_task(runner.run(), name=f"projection:{name}"))
        tasks.extend(webhooks.start(app))
        tasks.append(asyncio.create_task(reads.run(), name="replica-monitor"))
        memory.start()  # keep the RSS flat under connection churn (server/memory.py)
        await follower.started.wait()
        if demo:
            await _seed_demo(app, settings, announce)
        log.info("mapstream ready")
        try:
            yield
        finally:
            await shutdown_all(registry)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await reads.close()
            await pool.close()

    async def on_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MapstreamError)
        headers = {"Retry-After": "1"} if isinstance(exc, Unavailable) else None
        if isinstance(exc, RateLimited):
            headers = {
                "Retry-After": str(max(1, math.ceil(float(exc.extra.get("retry_after", 1)))))
            }
        return json_response(error_body(exc), status_code=status_of(exc), headers=headers)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "malformed")
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return json_response(
            {"error": {"code": code, "message": message}}, status_code=exc.status_code
        )

    async def on_crash(request: Request, exc: Exception) -> Response:
        if database_down(exc):
            err: Any = Unavailable("the database is not reachable right now; retry shortly")
            return json_response(error_body(err), status_code=503, headers={"Retry-After": "1"})
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        body = {
            "error": {"code": "internal", "message": "an unexpected error happened; it is logged"}
        }
        return json_response(body, status_code=500)

    ws_settings = WSSettings(
        queue_limit=settings.ws_queue_limit,
        max_subscriptions=settings.ws_max_subscriptions,
        max_message_bytes=settings.ws_max_message_bytes,
        subscribe_delay=settings.debug_subscribe_delay,
    )

    async def websocket_endpoint(websocket: WebSocket) -> None:
        state = websocket.app.state
        conn = Connection(
            websocket,
            hub=state.hub,
            plans=state.plans,
            presence=state.presence,
            secrets=settings.secrets,
            settings=ws_settings,
            registry=state.connections,
            limiter=state.limits["command"],
        )
        await conn.run()

    return Starlette(
        routes=[*routes(), WebSocketRoute("/ws", websocket_endpoint)],
        lifespan=lifespan,
        middleware=observability.middleware(),
        exception_handlers={MapstreamError: on_error, HTTPException: on_http, Exception: on_crash},
    )
