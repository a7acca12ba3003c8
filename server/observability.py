"""Observability: /metrics (Prometheus), /healthz and /readyz, request ids and access logs.

Metrics live in one `CollectorRegistry` per app, not in prometheus_client's process-wide
default: the tests run several apps in one process, and the default registry would refuse
the second app's metrics (duplicated names) or mix their counts. In production one process
runs one app, so nothing is lost; the process collectors (CPU, memory, file descriptors, GC)
are added to each app's registry.

Gauges that describe shared state (projection lag, open sockets, webhook backlog) are
computed when /metrics is scraped, so they are right even when nothing moves (a stuck
projection still shows its lag growing).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.errors import MapstreamError, VersionConflict
from server import logs
from server.codec import json_response

log = logging.getLogger(__name__)
access_log = logging.getLogger("server.access")

T = TypeVar("T")

# Counting how far a projection is behind reads the unapplied events themselves (the store
# has no cheaper verb); past this many the gauge says "at least this many".
LAG_EVENTS_CAP = 1000
DEFAULT_READY_MAX_LAG = 30.0  # seconds: MAPSTREAM_READY_MAX_LAG
PROBE_TIMEOUT = 2.0  # seconds for each database probe of /readyz and /metrics
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # access-logged at debug when fine
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces

BacklogSource = Callable[[], float | int | Awaitable[float | int]]


class Metrics:
    """The metrics a service updates as it works (commands, appends, fan-out)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.appends = Counter(
            "mapstream_appends", "Events appended by this instance's commands", registry=r
        )
        self.conflicts = Counter(
            "mapstream_conflicts",
            "Commands answered version_conflict (stale expected_version)",
            registry=r,
        )
        self.command_seconds = Histogram(
            "mapstream_command_seconds",
            "Time to handle one command, queueing and append included, by outcome"
            " (ok, conflict, rejected: any other refusal, error: unavailable, unexpected or"
            " abandoned by the caller)",
            ["outcome"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.sockets = Gauge(
            "mapstream_sockets", "Open, authenticated WebSocket connections", registry=r
        )
        self.fanout_lag = Histogram(
            "mapstream_fanout_lag_seconds",
            "Seconds from an event's recorded_at to its hand-over to this instance's hub",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.projection_lag_events = Gauge(
            "mapstream_projection_lag_events",
            f"Events in the log not yet applied by the projection (capped at {LAG_EVENTS_CAP})",
            ["projection"],
            registry=r,
        )
        self.projection_lag_seconds = Gauge(
            "mapstream_projection_lag_seconds",
            "Age of the oldest event the projection has not applied yet (0: caught up)",
            ["projection"],
            registry=r,
        )
        self.webhook_backlog = Gauge(
            "mapstream_webhook_backlog", "Webhook deliveries waiting to be sent", registry=r
        )
        self.asyncio_tasks = Gauge(
            "mapstream_asyncio_tasks",
            "Unfinished asyncio tasks of the server's event loop (the scrape's own included):"
            " a count that creeps under steady load is a task leak",
            registry=r,
        )
        for outcome in ("ok", "conflict", "rejected", "error"):
            self.command_seconds.labels(outcome)  # every series exists from the start

    async def command(
        self,
        answer: Awaitable[T],
        *,
        plan_id: str,
        command_id: str | None,
        correlation_id: str | None,
        actor: str,
    ) -> T:
        """Await a command's answer, timing it and counting a conflict."""
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await answer
            outcome = "ok"
            return result
        except VersionConflict:
            outcome = "conflict"
            self.conflicts.inc()
            raise
        except MapstreamError as exc:
            outcome = "error" if exc.code == "unavailable" else "rejected"
            raise
        finally:
            seconds = time.perf_counter() - started
            self.command_seconds.labels(outcome).observe(seconds)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "command on plan %s: %s",
                    plan_id,
                    outcome,
                    extra={
                        "plan_id": plan_id,
                        "command_id": command_id,
                        "correlation_id": correlation_id,
                        "actor": actor,
                        "outcome": outcome,
                        "duration_ms": round(seconds * 1000, 3),
                    },
                )

    def appended(self, events: int) -> None:
        self.appends.inc(events)

    def delivering(self, publish: Callable[[list[Any]], None]) -> Callable[[list[Any]], None]:
        """`publish` (the hub's), observing each event's fan-out lag on the way."""

        def deliver(events: list[Any]) -> None:
            now = time.time()
            for e in events:
                self.fanout_lag.observe(max(0.0, now - e.recorded_at.timestamp()))
            publish(events)

        return deliver


@dataclass
class Observability:
    """Per app: its metrics, the readiness bound and the webhook backlog source."""

    metrics: Metrics
    ready_max_lag: float
    webhook_backlog: BacklogSource | None = None
    _warned: set[str] = field(default_factory=set)


_default_backlog: list[BacklogSource] = []  # set_webhook_backlog_source without an app


def ready_max_lag_from_env() -> float:
    raw = os.environ.get("MAPSTREAM_READY_MAX_LAG", "").strip()
    if not raw:
        return DEFAULT_READY_MAX_LAG
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"MAPSTREAM_READY_MAX_LAG must be a number of seconds >= 0, not {raw!r}")
    return value


def of(app: Any) -> Observability:
    """The app's observability, created on first use (the lifespan wires it first)."""
    obs: Observability | None = getattr(app.state, "observability", None)
    if obs is None:
        registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=registry)
        platform_collector.PlatformCollector(registry=registry)
        gc_collector.GCCollector(registry=registry)
        obs = Observability(Metrics(registry), ready_max_lag_from_env())
        app.state.observability = obs
    return obs


def set_webhook_backlog_source(source: BacklogSource | None, app: Any = None) -> None:
    """Where `mapstream_webhook_backlog` comes from: a callable returning a number (or an
    awaitable of one), called at each scrape. With `app`, for that app only; without, for
    every app in the process that has none of its own. None removes it (the gauge reads 0)."""
    if app is not None:
        of(app).webhook_backlog = source
        return
    _default_backlog.clear()
    if source is not None:
        _default_backlog.append(source)


# -- projection lag ------------------------------------------------------------------------


@dataclass(frozen=True)
class Lag:
    events: int  # unapplied events, at most the limit asked for
    seconds: float  # age of the oldest unapplied event; 0 when caught up


async def projection_lag(runner: Any, limit: int) -> Lag:
    """How far `runner`'s read model is behind the log, from its committed checkpoint (so
    every instance reports the same, whichever one runs the projection)."""
    checkpoint = await runner.model.checkpoint()
    # counted in the database: a scrape never fetches the events themselves
    count, oldest = await runner.log.log_backlog(checkpoint, limit)
    if not count or oldest is None:
        return Lag(0, 0.0)
    return Lag(count, max(0.0, time.time() - oldest.timestamp()))


async def _within(seconds: float, awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(seconds):
        return await awaitable


async def refresh(app: Any) -> None:
    """Compute the scrape-time gauges; a part that fails is logged and left as it was."""
    obs = of(app)
    metrics = obs.metrics
    state = app.state
    metrics.sockets.set(len(getattr(state, "connections", ())))
    metrics.asyncio_tasks.set(len(asyncio.all_tasks()))
    for name, runner in getattr(state, "projections", {}).items():
        try:
            lag = await _within(PROBE_TIMEOUT, projection_lag(runner, LAG_EVENTS_CAP))
        except Exception as exc:  # database down or slow: the scrape still answers
            _warn_once(obs, f"lag:{name}", "cannot measure lag of projection %s: %r", name, exc)
            continue
        obs._warned.discard(f"lag:{name}")
        metrics.projection_lag_events.labels(name).set(lag.events)
        metrics.projection_lag_seconds.labels(name).set(lag.seconds)
    source = obs.webhook_backlog or (_default_backlog[0] if _default_backlog else None)
    if source is None:
        metrics.webhook_backlog.set(0)
        return
    try:
        value = source()
        if inspect.isawaitable(value):
            value = await _within(PROBE_TIMEOUT, value)
        metrics.webhook_backlog.set(float(value))
        obs._warned.discard("webhooks")
    except Exception as exc:
        _warn_once(obs, "webhooks", "cannot read the webhook backlog: %r", exc)


def _warn_once(obs: Observability, key: str, message: str, *args: Any) -> None:
    """A failing probe is logged when it starts failing, not at every scrape."""
    if key not in obs._warned:
        obs._warned.add(key)
        log.warning(message, *args)


# -- routes --------------------------------------------------------------------------------


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus text format."""
    await refresh(request.app)
    body = generate_latest(of(request.app).metrics.registry)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def readyz(request: Request) -> Response:
    """GET /readyz: 200 when the database answers and every projection is caught up to
    within MAPSTREAM_READY_MAX_LAG seconds; else 503 with what is wrong."""
    obs = of(request.app)
    state = request.app.state
    ready = True
    body: dict[str, Any] = {}
    try:
        await _within(PROBE_TIMEOUT, state.store.pool.fetchval("SELECT 1"))
        body["database"] = "ok"
    except Exception as exc:  # any failure means not ready
        ready = False
        body["database"] = f"unreachable ({type(exc).__name__})"
    projections: dict[str, Any] = {}
    if ready:
        for name, runner in getattr(state, "projections", {}).items():
            try:
                lag = await _within(PROBE_TIMEOUT, projection_lag(runner, 1))
            except Exception as exc:
                ready = False
                projections[name] = {"status": f"unknown ({type(exc).__name__})"}
                continue
            behind = lag.seconds > obs.ready_max_lag
            ready = ready and not behind
            projections[name] = {
                "status": "behind" if behind else "ok",
                "lag_seconds": round(lag.seconds, 3),
            }
    body["projections"] = projections
    body["max_lag_seconds"] = obs.ready_max_lag
    body = {"status": "ready" if ready else "not_ready", **body}
    return json_response(body, status_code=200 if ready else 503)


def routes() -> list[BaseRoute]:
    return [
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]


# -- request ids and access logs ------------------------------------------------------------


def _route_of(scope: Scope) -> str:
    """The path with its parameters named (`/plans/{plan_id}`): low cardinality, and no
    credential in the log (an invite code is a path parameter)."""
    path: str = scope.get("path", "")
    params = scope.get("path_params") or {}
    if not params:
        # a route without parameters is its path; an unmatched path (404, a redirect) may
        # carry anything, an invite code included: only its first segment is logged
        return path if scope.get("endpoint") is not None else "/" + path.split("/")[1] + "/…"
    values = {str(v): k for k, v in params.items()}
    return "/".join(f"{{{values[p]}}}" if p in values else p for p in path.split("/"))


class RequestContext:
    """Pure ASGI middleware (BaseHTTPMiddleware would buffer streams and skip websockets).

    Takes `X-Request-Id` from the request, or makes one, and echoes it in the response;
    puts it and `X-Correlation-Id` in the log context; logs one access line per request
    and per socket."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        corr = headers.get("x-correlation-id", "")
        # No reset afterwards: each request runs in its own task, and the app's 500 handler
        # (outside this middleware) should still log with the ids.
        logs.request_id.set(rid)
        logs.correlation_id.set(corr if _REQUEST_ID.fullmatch(corr) else None)
        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start" or kind == "websocket.accept":
                status = message.get("status", 101)
                message.setdefault("headers", [])
                MutableHeaders(scope=message).append("x-request-id", rid)
            elif kind == "websocket.close":
                status = message.get("code", 1000)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route_of(scope)
            method = scope.get("method", "WEBSOCKET")
            # probes and scrapes come every few seconds: only their failures are news
            quiet = route in _PROBES and 0 < status < 400
            access_log.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s %s %s",
                method,
                route,
                status or 500,
                extra={
                    "method": method,
                    "path": route,
                    "status": status or 500,
                    "plan_id": (scope.get("path_params") or {}).get("plan_id"),
                    "duration_ms": round(seconds * 1000, 3),
                },
            )


def middleware() -> list[Middleware]:
    return [Middleware(RequestContext)]


# -- OpenAPI -------------------------------------------------------------------------------


def openapi(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) to merge into /openapi.json; `ref` formats a component $ref."""
    readiness = {"$ref": ref.format(name="Readiness")}
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers (checks nothing else)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "alive",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"status": {"const": "ok"}},
                                    "required": ["status"],
                                }
                            }
                        },
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: the database answers and every projection is caught up",
                "description": "503 when the database is unreachable or a projection's oldest"
                " unapplied event is older than MAPSTREAM_READY_MAX_LAG seconds (default 30).",
                "security": [],
                "responses": {
                    "200": {
                        "description": "ready",
                        "content": {"application/json": {"schema": readiness}},
                    },
                    "503": {
                        "description": "not ready: the body says what is wrong",
                        "content": {"application/json": {"schema": readiness}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "description": "Metrics named mapstream_*: appends, conflicts, command latency,"
                " sockets, fan-out lag, projection lag, webhook backlog; plus process_* and"
                " python_* metrics. Listed in the README.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    components: dict[str, Any] = {
        "Readiness": {
            "type": "object",
            "properties": {
                "status": {"enum": ["ready", "not_ready"]},
                "database": {"type": "string", "description": "`ok` or why not"},
                "projections": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "status": {"type": "string", "description": "ok, behind or unknown"},
                            "lag_seconds": {"type": "number"},
                        },
                        "required": ["status"],
                    },
                },
                "max_lag_seconds": {"type": "number"},
            },
            "required": ["status", "database", "projections", "max_lag_seconds"],
        }
    }
    return paths, components
