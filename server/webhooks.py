"""Webhooks (outbox): subscriptions per seller organisation, signed deliveries read from the
global log with a checkpoint. Registered by server.http.routes(), server.cli and server.app.

How an event reaches a seller's system:

1. The **outbox projection** follows the gap-free global log like every asynchronous
   projection (projections/runner.py). For each event of a plan of a subscribed seller
   organisation it writes one `webhook_deliveries` row per matching subscription, with the
   exact JSON body to send, in the same transaction that moves its checkpoint `webhooks`. So
   each event gets exactly one delivery row per subscription, across crashes and instances.
   A subscription owes exactly the events of transactions that its creating statement could
   not see (its `pg_current_snapshot()` is kept): nothing committed before it, everything
   committed after. The subscriptions are read *after* each batch of events was read, so one
   created meanwhile is not owed any of the batch (all of it was committed before).
2. The **delivery worker** (one per cluster: an advisory-lock lease) sends, per
   (subscription, plan), only the lowest pending version: a plan's events arrive in version
   order, and version v+1 is never sent before v was accepted or parked. A 2xx answer marks
   the row delivered; anything else is retried with exponential backoff and jitter
   (`next_attempt_at`), and after `MAPSTREAM_WEBHOOK_MAX_ATTEMPTS` failures the row is parked.
   `replay` (HTTP or `mapstream webhooks replay`) re-drives parked rows. A crash after a send
   and before its row is marked sends it again: delivery is at least once, and the receiver
   drops repeats by the idempotency id `Webhook-Id: <plan_id>:<version>` (also `id` in the body).
3. Every request is signed: `Mapstream-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
   "<t>.<body>" with the subscription's secret>` (`verify_signature` checks one). After a
   rotation (`POST /webhooks/{id}/secret`) the previous secret adds a second `v1` until its
   grace period ends, so a receiver accepts either while it switches.

Payloads carry `changes: [{item_kind, item_id, field, before, after}]`, computed from the plan
just before and just after the event, so a CRM syncs e.g. the close date (the compelling
event's date, field `compelling_event.date`) without reading history. Webhooks belong to the
seller organisation: the seller's own internal items are included, the buyer's never (their
events are not delivered and the states are cut with `view_for(..., "seller")`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import ipaddress
import logging
import random
import re
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

import asyncpg
import httpcore
import httpx
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from domain.decider import EVENT_TYPES, evolve
from domain.errors import DomainError, Forbidden, Malformed, NotFound
from domain.model import CompellingEvent, Plan
from domain.orgs import Organisations
from domain.rules import MAX_TITLE
from domain.visibility import view_for
from projections.diff import ITEM_FIELDS
from projections.runner import LogEvent, ProjectionRunner, stopping
from projections.states import Loader, PlanStates, recorded_of
from server.apidoc import SELLER_ORG, Doc, JsonObject
from server.codec import (
    check_org,
    check_plan_id,
    decode,
    int_query,
    json_response,
    read_body,
)
from server.settings import Settings
from server.store import LogCursor, ProjectionTable, Store, release_advisory_lock

log = logging.getLogger(__name__)

CHECKPOINT = "webhooks"
SIGNATURE_HEADER = "Mapstream-Signature"
ID_HEADER = "Webhook-Id"
TIMESTAMP_HEADER = "Webhook-Timestamp"
EVENT_HEADER = "Mapstream-Event"
ATTEMPT_HEADER = "Mapstream-Attempt"
USER_AGENT = "Mapstream-Webhooks/0.1"
MAX_PER_ORG = 20
MAX_URL = 2000
STATUSES = ("pending", "delivered", "parked")
Status = Literal["pending", "delivered", "parked"]
_ID = re.compile(r"^wh_[0-9a-f]{16}$")
# a rotated secret keeps signing (as a second v1) for a day by default, at most a week
DEFAULT_KEEP_PREVIOUS = 86_400
MAX_KEEP_PREVIOUS = 7 * 86_400
_DELIVERY_LOCK = 0x77686F6F6B  # "whook": advisory lock of the one delivery worker
_encode = msgspec.json.Encoder().encode


# -- signing (pure) --------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `<timestamp>.<body>`: the timestamp is signed too (no replays)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int, *also: str) -> str:
    """`t=<unix>,v1=<hex>`, with one more `v1` per secret in `also` (the previous secret while
    a rotation's grace period lasts: a receiver holding either one verifies)."""
    return ",".join(
        [f"t={timestamp}"] + [f"v1={signature(k, timestamp, body)}" for k in (secret, *also)]
    )


def verify_signature(
    secret: str, header: str, body: bytes, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """Whether `header` (`t=...,v1=...`) signs exactly `body` with `secret`, within
    `tolerance` seconds of `now`. Any v1 may match (one per secret while rotating)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)


def backoff(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after `attempts` failures: base * 2^(attempts-1),
    capped, with "equal jitter" (half fixed, half random) so receivers that come back are
    not hit by every sender at once."""
    delay = min(cap, base * 2 ** max(attempts - 1, 0))
    return float(delay / 2 + (rng or random).uniform(0, delay / 2))


# -- payloads (pure) -------------------------------------------------------------------------


class FieldChange(msgspec.Struct, frozen=True):
    """One field of one item (or of the plan, `item_id` "plan"), before and after the event.
    A nested value (the compelling event, tags) is split into dotted fields:
    `compelling_event.date`."""

    item_kind: str
    item_id: str
    field: str
    before: Any = None
    after: Any = None


class PlanSummary(msgspec.Struct, frozen=True):
    """The plan's headline after the event; `compelling_event.date` is its close date."""

    title: str
    buyer_org: str
    seller_org: str
    kind: str
    status: str
    compelling_event: CompellingEvent | None


class WebhookPayload(msgspec.Struct, frozen=True):
    """The body of every delivery (the same bytes on every attempt)."""

    id: str  # idempotency id: "<plan_id>:<version>", also the Webhook-Id header
    type: str  # the event type, e.g. "MilestoneRescheduled"
    subscription_id: str
    plan_id: str
    version: int
    position: int
    recorded_at: datetime
    actor: str
    hash: str
    audience: str | None  # None: both sides see it; "seller": the seller's internal item
    data: JsonObject  # the event as stored (as in GET /plans/{id}/events)
    changes: list[FieldChange]
    plan: PlanSummary


# Bookkeeping (changes on every event) and append-only history (its new entry is the event's
# `data`; repeating the whole list before and after would only grow the payload).
_PLAN_SKIP = frozenset(
    {"id", "version", "updated_at", "last_activity", "status_updates", "endorsements", "children"}
)
_ITEM_SKIP = frozenset({"id", "slips"})
_PLAN_FIELDS = tuple(
    f.name
    for f in msgspec.structs.fields(Plan)
    if f.name not in _PLAN_SKIP and f.name not in ITEM_FIELDS
)


def _split(out: list[FieldChange], kind: str, item: str, field: str, a: Any, b: Any) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in {**a, **b}:
            if a.get(key) != b.get(key):
                _split(out, kind, item, f"{field}.{key}", a.get(key), b.get(key))
    else:
        out.append(FieldChange(kind, item, field, a, b))


def changes_between(before: Plan, after: Plan) -> list[FieldChange]:
    """The fields the event changed: the plan's, then each existing item's (items added are
    in the event's data; their appearance is not a field change)."""
    out: list[FieldChange] = []
    for name in _PLAN_FIELDS:
        a, b = getattr(before, name), getattr(after, name)
        if a != b:
            _split(out, "plan", "plan", name, msgspec.to_builtins(a), msgspec.to_builtins(b))
    for collection, kind in ITEM_FIELDS.items():
        old: dict[str, Any] = getattr(before, collection)
        new: dict[str, Any] = getattr(after, collection)
        if old is new:
            continue
        for item_id, now in new.items():
            was = old.get(item_id)
            if was is None or was is now or was == now:
                continue
            a, b = msgspec.to_builtins(was), msgspec.to_builtins(now)
            for name in {**a, **b}:
                if name not in _ITEM_SKIP and a.get(name) != b.get(name):
                    _split(out, kind, item_id, name, a.get(name), b.get(name))
    return out


def payload(e: LogEvent, before: Plan, after: Plan, subscription_id: str = "") -> WebhookPayload:
    """The delivery body of `e`, as the seller side may see it (`msgspec.structs.replace`
    its `subscription_id` for each subscription)."""
    seen_after = view_for(after, "seller")
    return WebhookPayload(
        id=f"{e.plan_id}:{e.version}",
        type=e.type,
        subscription_id=subscription_id,
        plan_id=e.plan_id,
        version=e.version,
        position=e.position,
        recorded_at=e.recorded_at,
        actor=e.actor,
        hash=e.hash,
        audience=e.audience,
        data=msgspec.Raw(e.data.encode()),
        changes=changes_between(view_for(before, "seller"), seen_after),
        plan=PlanSummary(
            title=after.title,
            buyer_org=after.buyer_org,
            seller_org=after.seller_org,
            kind=after.kind,
            status=after.status,
            compelling_event=after.compelling_event,
        ),
    )


# -- the store of subscriptions and deliveries -----------------------------------------------


class Snapshot(msgspec.Struct, frozen=True):
    """A PostgreSQL snapshot (`pg_current_snapshot()`): which transactions it saw committed."""

    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """`xmin:xmax:xip,xip,...`, the text form of pg_snapshot."""
        xmin, xmax, running = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in running.split(",") if x))

    def saw(self, xid: int) -> bool:
        """Whether a (committed) transaction had committed when the snapshot was taken."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.running)


class Target(msgspec.Struct, frozen=True):
    """What the outbox projection needs of an active subscription."""

    subscription_id: str
    seller_org: str
    events: frozenset[str]
    created: Snapshot  # it owes the events of transactions this snapshot did not see

    def wants(self, e: LogEvent, orgs: set[str]) -> bool:
        return (
            self.seller_org in orgs
            and not self.created.saw(e.cursor[0])
            and ("*" in self.events or e.type in self.events)
        )


class WebhookOut(msgspec.Struct, frozen=True):
    subscription_id: str
    seller_org: str
    url: str
    events: list[str]
    description: str
    created_by: str
    created_at: datetime
    pending: int = 0
    delivered: int = 0
    parked: int = 0


class WebhookCreated(WebhookOut, frozen=True, kw_only=True):
    secret: str  # shown once: it signs every delivery of this subscription


class DeliveryOut(msgspec.Struct, frozen=True):
    id: str
    plan_id: str
    version: int
    type: str
    status: Status
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


class Due(msgspec.Struct, frozen=True):
    """A delivery the worker sends now."""

    plan_id: str
    subscription_id: str
    version: int
    type: str
    body: str
    attempts: int
    url: str
    secret: str
    previous_secret: str | None = None  # signs too until its grace period ends


class SecretIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """POST /webhooks/{id}/secret: how long the old secret keeps signing too (seconds)."""

    keep_previous_for: int = DEFAULT_KEEP_PREVIOUS


class SecretRotated(msgspec.Struct, frozen=True):
    subscription_id: str
    secret: str  # shown once, like the first one
    previous_valid_until: datetime | None  # deliveries carry both signatures until then


class DeliveryRow(msgspec.Struct, frozen=True):
    plan_id: str
    subscription_id: str
    version: int
    transaction_id: int
    position: int
    type: str
    body: str


_SUBSCRIPTION_COLUMNS = """s.subscription_id, s.seller_org, s.url, s.events, s.description,
    s.created_by, s.created_at,
    (SELECT count(*) FROM webhook_deliveries d
     WHERE d.subscription_id = s.subscription_id AND d.status = 'pending') AS pending,
    (SELECT count(*) FROM webhook_deliveries d
     WHERE d.subscription_id = s.subscription_id AND d.status = 'delivered') AS delivered,
    (SELECT count(*) FROM webhook_deliveries d
     WHERE d.subscription_id = s.subscription_id AND d.status = 'parked') AS parked"""


def _subscription(r: asyncpg.Record) -> WebhookOut:
    return WebhookOut(
        subscription_id=r["subscription_id"],
        seller_org=r["seller_org"],
        url=r["url"],
        events=list(r["events"]),
        description=r["description"],
        created_by=r["created_by"],
        created_at=r["created_at"],
        pending=r["pending"],
        delivered=r["delivered"],
        parked=r["parked"],
    )


# Per (subscription, plan) only the lowest pending version is a candidate (DISTINCT ON over
# the partial index of pending rows): that is what keeps a plan's deliveries in order.
_DUE = """
SELECT d.plan_id, d.subscription_id, d.version, d.type, d.body::text AS body, d.attempts,
       s.url, s.secret,
       CASE WHEN s.previous_secret_until > now() THEN s.previous_secret END AS previous_secret
FROM (SELECT DISTINCT ON (subscription_id, plan_id)
             plan_id, subscription_id, version, type, body, attempts, next_attempt_at
      FROM webhook_deliveries WHERE status = 'pending'
      ORDER BY subscription_id, plan_id, version) d
JOIN webhook_subscriptions s ON s.subscription_id = d.subscription_id AND s.deleted_at IS NULL
WHERE d.next_attempt_at <= now()
ORDER BY d.next_attempt_at
LIMIT $1
"""

# Two writers of one batch (a rebuild, another instance) produce the same rows: first stays.
_INSERT_DELIVERIES = """
INSERT INTO webhook_deliveries (plan_id, subscription_id, version, transaction_id, position,
                                type, body)
SELECT r.plan_id, r.subscription_id, r.version, r.transaction_id::xid8, r.position, r.type,
       r.body::json
FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::bigint[], $6::text[], $7::text[])
     AS r(plan_id, subscription_id, version, transaction_id, position, type, body)
ON CONFLICT DO NOTHING
"""


def _delivery_args(rows: Sequence[DeliveryRow]) -> list[Any]:
    return [
        [r.plan_id for r in rows],
        [r.subscription_id for r in rows],
        [r.version for r in rows],
        [str(r.transaction_id) for r in rows],
        [r.position for r in rows],
        [r.type for r in rows],
        [r.body for r in rows],
    ]


class WebhookStore:
    """All SQL of webhooks: subscriptions, the outbox rows and their delivery state."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(
        self,
        seller_org: str,
        url: str,
        events: Sequence[str],
        description: str,
        created_by: str,
    ) -> WebhookCreated:
        subscription_id = f"wh_{secrets.token_hex(8)}"
        secret = f"whsec_{secrets.token_urlsafe(32)}"
        async with self.pool.acquire() as conn, conn.transaction():
            # one organisation's subscriptions are counted and added one at a time
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"wh:{seller_org}")
            count = await conn.fetchval(
                "SELECT count(*) FROM webhook_subscriptions"
                " WHERE seller_org = $1 AND deleted_at IS NULL",
                seller_org,
            )
            if count >= MAX_PER_ORG:
                raise DomainError(
                    "webhook_limit",
                    f"{seller_org!r} has {count} webhooks already; delete one first",
                    limit=MAX_PER_ORG,
                )
            created_at = await conn.fetchval(
                "INSERT INTO webhook_subscriptions (subscription_id, seller_org, url, events,"
                " secret, description, created_by, created_snapshot)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, pg_current_snapshot()::text)"
                " RETURNING created_at",
                subscription_id,
                seller_org,
                url,
                list(events),
                secret,
                description,
                created_by,
            )
        return WebhookCreated(
            subscription_id=subscription_id,
            seller_org=seller_org,
            url=url,
            events=list(events),
            description=description,
            created_by=created_by,
            created_at=created_at,
            secret=secret,
        )

    async def subscriptions(self, seller_org: str | None = None) -> list[WebhookOut]:
        rows = await self.pool.fetch(
            f"SELECT {_SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions s"
            " WHERE s.deleted_at IS NULL AND ($1::text IS NULL OR s.seller_org = $1)"
            " ORDER BY s.seller_org, s.created_at",
            seller_org,
        )
        return [_subscription(r) for r in rows]

    async def get(self, subscription_id: str) -> WebhookOut | None:
        row = await self.pool.fetchrow(
            f"SELECT {_SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions s"
            " WHERE s.subscription_id = $1 AND s.deleted_at IS NULL",
            subscription_id,
        )
        return None if row is None else _subscription(row)

    async def rotate_secret(
        self, subscription_id: str, keep_previous_for: int
    ) -> SecretRotated | None:
        """A new secret; the current one keeps signing too for `keep_previous_for` seconds
        (0: not at all). None if there is no such subscription."""
        secret = f"whsec_{secrets.token_urlsafe(32)}"
        row = await self.pool.fetchrow(
            "UPDATE webhook_subscriptions SET"
            " previous_secret = CASE WHEN $3 > 0 THEN secret END,"
            " previous_secret_until = CASE WHEN $3 > 0"
            "   THEN now() + make_interval(secs => $3) END,"
            " secret = $2"
            " WHERE subscription_id = $1 AND deleted_at IS NULL"
            " RETURNING previous_secret_until",
            subscription_id,
            secret,
            keep_previous_for,
        )
        if row is None:
            return None
        return SecretRotated(subscription_id, secret, row["previous_secret_until"])

    async def delete(self, subscription_id: str) -> bool:
        """Stop the subscription; its rows stay (deleted_at) for the record."""
        done = await self.pool.fetchval(
            "UPDATE webhook_subscriptions SET deleted_at = now()"
            " WHERE subscription_id = $1 AND deleted_at IS NULL RETURNING 1",
            subscription_id,
        )
        return done is not None

    async def deliveries(
        self,
        subscription_id: str,
        *,
        status: str | None = None,
        plan_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryOut]:
        """Newest event first."""
        rows = await self.pool.fetch(
            "SELECT plan_id, version, type, status, attempts, next_attempt_at, last_attempt_at,"
            " last_status, last_error, delivered_at, created_at FROM webhook_deliveries"
            " WHERE subscription_id = $1 AND ($2::text IS NULL OR status = $2)"
            "   AND ($3::text IS NULL OR plan_id = $3)"
            " ORDER BY transaction_id DESC, position DESC LIMIT $4",
            subscription_id,
            status,
            plan_id,
            limit,
        )
        return [
            DeliveryOut(
                id=f"{r['plan_id']}:{r['version']}",
                plan_id=r["plan_id"],
                version=r["version"],
                type=r["type"],
                status=r["status"],
                attempts=r["attempts"],
                next_attempt_at=r["next_attempt_at"] if r["status"] == "pending" else None,
                last_attempt_at=r["last_attempt_at"],
                last_status=r["last_status"],
                last_error=r["last_error"],
                delivered_at=r["delivered_at"],
                created_at=r["created_at"],
            )
            for r in rows
        ]

    async def replay(
        self, subscription_id: str, plan_id: str | None = None, version: int | None = None
    ) -> int:
        """Send again: every parked delivery (of one plan, with `plan_id`), or with `version`
        that one delivery, delivered or parked. Each starts over with a fresh attempt count."""
        n = await self.pool.fetchval(
            "WITH redriven AS (UPDATE webhook_deliveries SET status = 'pending', attempts = 0,"
            " next_attempt_at = now()"
            " WHERE subscription_id = $1 AND ($2::text IS NULL OR plan_id = $2)"
            "   AND CASE WHEN $3::int IS NULL THEN status = 'parked'"
            "            ELSE version = $3 AND status <> 'pending' END"
            " RETURNING 1) SELECT count(*) FROM redriven",
            subscription_id,
            plan_id,
            version,
        )
        return int(n or 0)

    async def targets(self) -> list[Target]:
        rows = await self.pool.fetch(
            "SELECT subscription_id, seller_org, events, created_snapshot"
            " FROM webhook_subscriptions WHERE deleted_at IS NULL"
        )
        return [
            Target(
                r["subscription_id"],
                r["seller_org"],
                frozenset(r["events"]),
                Snapshot.parse(r["created_snapshot"]),
            )
            for r in rows
        ]

    async def start_checkpoint(self, at: LogCursor) -> None:
        """The outbox starts where the log is when webhooks first run: history is never sent
        (every subscription owes only the events after its creation anyway)."""
        await self.pool.execute(
            "INSERT INTO checkpoints (name, transaction_id, position)"
            " VALUES ($1, $2::text::xid8, $3) ON CONFLICT DO NOTHING",
            CHECKPOINT,
            str(at[0]),
            at[1],
        )

    async def prune(self, days: float) -> int:
        """Forget deliveries accepted more than `days` ago (0: keep them all). Pending and
        parked ones stay: they are still owed."""
        # a rotated secret whose grace period is over is forgotten (it no longer signs)
        await self.pool.execute(
            "UPDATE webhook_subscriptions SET previous_secret = NULL, previous_secret_until = NULL"
            " WHERE previous_secret_until <= now()"
        )
        if days <= 0:
            return 0
        status = await self.pool.execute(
            "DELETE FROM webhook_deliveries WHERE status = 'delivered'"
            " AND delivered_at < now() - make_interval(secs => $1)",
            days * 86400.0,
        )
        return int(status.split()[-1])

    async def backlog(self) -> int:
        """Deliveries not yet accepted by their receiver (pending, waiting or retrying)."""
        n = await self.pool.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
        )
        return int(n or 0)

    async def due(self, limit: int) -> list[Due]:
        rows = await self.pool.fetch(_DUE, limit)
        return [
            Due(
                r["plan_id"],
                r["subscription_id"],
                r["version"],
                r["type"],
                r["body"],
                r["attempts"],
                r["url"],
                r["secret"],
                r["previous_secret"],
            )
            for r in rows
        ]

    async def delivered(self, d: Due, status: int) -> None:
        await self.pool.execute(
            "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1,"
            " last_attempt_at = now(), last_status = $4, last_error = NULL, delivered_at = now()"
            " WHERE plan_id = $1 AND subscription_id = $2 AND version = $3 AND status = 'pending'",
            d.plan_id,
            d.subscription_id,
            d.version,
            status,
        )

    async def failed(
        self, d: Due, status: int | None, error: str, max_attempts: int, delay: float
    ) -> str | None:
        """Count a failed attempt; park the delivery at `max_attempts`. Its new status."""
        result: str | None = await self.pool.fetchval(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = now(),"
            " last_status = $4, last_error = $5,"
            " status = CASE WHEN attempts + 1 >= $6 THEN 'parked' ELSE 'pending' END,"
            " next_attempt_at = now() + make_interval(secs => $7)"
            " WHERE plan_id = $1 AND subscription_id = $2 AND version = $3 AND status = 'pending'"
            " RETURNING status",
            d.plan_id,
            d.subscription_id,
            d.version,
            status,
            error[:500],
            max_attempts,
            delay,
        )
        return result


# -- the outbox projection -------------------------------------------------------------------


class OutboxProjection:
    """Log events -> one delivery row per (matching subscription, event)."""

    def __init__(
        self,
        load: Loader,
        targets: Callable[[], Awaitable[list[Target]]],
        capacity: int = 1024,
        orgs: Organisations | None = None,
    ) -> None:
        self.states = PlanStates(load, capacity)
        self._targets = targets
        self.orgs = orgs or Organisations()

    async def project(self, events: Sequence[LogEvent]) -> list[DeliveryRow]:
        # read after the batch: see the module docstring for why that order matters
        targets = await self._targets()
        if not targets:
            return []
        floor = min(t.created.xmin for t in targets)
        rows: list[DeliveryRow] = []
        for e in events:
            if e.cursor[0] < floor:
                continue  # committed before every subscription: no state needed
            before = await self.states.before(e)
            try:
                after = evolve(before, recorded_of(e))
            except Exception as exc:  # an event this code cannot read: say so, go on
                log.error("webhooks: cannot read %s v%s (%s); not sent", e.plan_id, e.version, exc)
                self.states.forget(e.plan_id)
                continue
            self.states.advance(after)
            if e.audience == "buyer":
                continue  # the buyer's internal item: never sent to the seller's systems
            # the organisations whose plan this is, before or after the event (a verified one
            # only while a seller-side member speaks for it: see domain/orgs.py)
            orgs = {p.seller_org for p in (before, after) if self.orgs.owns(p, p.seller_org)}
            common: WebhookPayload | None = None
            for t in targets:
                if t.wants(e, orgs):
                    common = common or payload(e, before, after)
                    one = msgspec.structs.replace(common, subscription_id=t.subscription_id)
                    body = _encode(one).decode()
                    rows.append(
                        DeliveryRow(
                            e.plan_id, t.subscription_id, e.version, *e.cursor, e.type, body
                        )
                    )
            await asyncio.sleep(0)  # a batch is CPU work: let the sockets of this process run
        return rows

    def reset(self) -> None:
        self.states.reset()


class OutboxTable(ProjectionTable[DeliveryRow]):
    """The outbox read model; wakes the delivery worker after a commit that added rows."""

    def __init__(
        self, pool: asyncpg.Pool, on_rows: Callable[[], None], name: str = CHECKPOINT
    ) -> None:
        # clear=[]: a rebuild from position 0 re-derives the same rows (ON CONFLICT DO
        # NOTHING) and never forgets what was delivered or parked
        super().__init__(pool, name, insert=_INSERT_DELIVERIES, args=_delivery_args, clear=[])
        self._on_rows = on_rows

    async def commit(
        self,
        expected: LogCursor,
        cursor: LogCursor,
        rows: Sequence[DeliveryRow],
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        done = await super().commit(expected, cursor, rows, before_commit)
        if done and rows:
            self._on_rows()
        return done


# -- the delivery worker ---------------------------------------------------------------------


class DeliveryWorker:
    """Sends due deliveries; one worker leads across instances (advisory lock)."""

    def __init__(
        self,
        hooks: WebhookStore,
        settings: Settings,
        *,
        batch: int = 64,
        concurrency: int = 8,
        standby_interval: float = 2.0,
    ) -> None:
        self.hooks = hooks
        self.settings = settings
        self.batch = batch
        self.concurrency = concurrency
        self.standby_interval = standby_interval
        self.leading = False
        self.sent = 0  # attempts made by this worker (for tests and metrics)
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(
            transport=receiver_transport(self.settings.webhook_allow_private),
            timeout=self.settings.webhook_timeout,
            follow_redirects=False,
            # no HTTP(S)_PROXY while addresses are checked: the address checked must be the
            # one connected to (with private addresses allowed, a proxy may stand between)
            trust_env=self.settings.webhook_allow_private,
            headers={"User-Agent": USER_AGENT},
        ) as client:
            self._client = client
            while True:
                try:
                    await self._lead()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if stopping():
                        raise
                    log.warning("webhook delivery stopped (%s); restarting", exc)
                    await asyncio.sleep(1.0)

    async def _lead(self) -> None:
        async with self.hooks.pool.acquire() as conn:
            held = await conn.fetchval("SELECT pg_try_advisory_lock($1::bigint)", _DELIVERY_LOCK)
            if not held:
                await self._sleep(self.standby_interval)
                return
            self.leading = True
            try:
                renew_at = time.monotonic() + 5.0
                prune_at = time.monotonic()
                while True:
                    self._wake.clear()
                    n = await self.step()
                    if time.monotonic() > renew_at:  # the lock lives as long as this session
                        await conn.fetchval("SELECT 1", timeout=5)
                        renew_at = time.monotonic() + 5.0
                    if time.monotonic() > prune_at:
                        pruned = await self.hooks.prune(self.settings.webhook_retention_days)
                        if pruned:
                            log.info("webhooks: pruned %s delivered deliveries", pruned)
                        prune_at = time.monotonic() + 3600.0
                    if n < self.batch:
                        await self._sleep(self.settings.webhook_poll)
            finally:
                self.leading = False
                await release_advisory_lock(
                    conn, "SELECT pg_advisory_unlock($1::bigint)", _DELIVERY_LOCK
                )

    async def step(self) -> int:
        """Send every delivery due now (the head of each (subscription, plan) queue)."""
        due = await self.hooks.due(self.batch)
        if not due:
            return 0
        gate = asyncio.Semaphore(self.concurrency)

        async def one(d: Due) -> None:
            async with gate:
                await self.deliver(d)

        async with asyncio.TaskGroup() as group:
            for d in due:
                group.create_task(one(d))
        return len(due)

    async def deliver(self, d: Due) -> None:
        assert self._client is not None, "run() owns the HTTP client"
        body = d.body.encode()
        now = int(time.time())
        headers = {
            "Content-Type": "application/json",
            ID_HEADER: f"{d.plan_id}:{d.version}",
            TIMESTAMP_HEADER: str(now),
            SIGNATURE_HEADER: signature_header(
                d.secret, body, now, *([d.previous_secret] if d.previous_secret else [])
            ),
            EVENT_HEADER: d.type,
            ATTEMPT_HEADER: str(d.attempts + 1),
        }
        status: int | None = None
        try:
            # receiver_transport refuses a host that resolves into this server's own network
            # now (the address it checks is the address it connects to)
            # the answer's body is never read: a receiver cannot make us buffer it
            async with self._client.stream("POST", d.url, content=body, headers=headers) as r:
                status = r.status_code
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except Exception as exc:  # refused, timed out, bad name (IDNA), TLS: all a failed attempt
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        self.sent += 1
        if not error and status is not None:
            await self.hooks.delivered(d, status)
            return
        attempts = d.attempts + 1
        s = self.settings
        delay = backoff(attempts, s.webhook_backoff, s.webhook_backoff_max)
        outcome = await self.hooks.failed(d, status, error, s.webhook_max_attempts, delay)
        if outcome == "parked":
            log.warning(
                "webhook %s: %s:%s parked after %s attempts (%s)",
                d.subscription_id,
                d.plan_id,
                d.version,
                attempts,
                error,
            )

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass


# -- HTTP ------------------------------------------------------------------------------------


class WebhookIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """POST /webhooks. `events`: event types (e.g. "MilestoneRescheduled"), or "*" for all."""

    seller_org: str
    url: str
    events: list[str] = msgspec.field(default_factory=lambda: ["*"])
    description: str = ""


class ReplayIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """POST /webhooks/{id}/replay: every parked delivery; of one plan with `plan_id`; with
    `plan_id` and `version`, that one delivery again even if it was delivered."""

    plan_id: str | None = None
    version: int | None = None


class WebhookList(msgspec.Struct, frozen=True):
    seller_org: str
    webhooks: list[WebhookOut]


class DeliveryList(msgspec.Struct, frozen=True):
    subscription_id: str
    deliveries: list[DeliveryOut]


class ReplayOut(msgspec.Struct, frozen=True):
    subscription_id: str
    replayed: int


_WEBHOOK_IN = msgspec.json.Decoder(WebhookIn)
_SECRET_IN = msgspec.json.Decoder(SecretIn)
_REPLAY_IN = msgspec.json.Decoder(ReplayIn)


def _hooks(request: Request) -> WebhookStore:
    hooks: WebhookStore = request.app.state.webhooks
    return hooks


def _wake_worker(request: Request) -> None:
    worker: DeliveryWorker | None = getattr(request.app.state, "webhook_worker", None)
    if worker is not None:
        worker.wake()


def check_url(url: str) -> str:
    ok = 0 < len(url) <= MAX_URL and url.isprintable() and not any(c.isspace() for c in url)
    if ok:
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises on a bad port
            (parts.hostname or "").encode("idna")  # raises on a name DNS cannot carry
        except (ValueError, UnicodeError):
            ok = False
    if not ok:
        raise Malformed(
            f"`url` must be an http:// or https:// URL of at most {MAX_URL} characters",
            field="url",
        )
    return url


async def private_address(url: str) -> str | None:
    """The first address `url`'s host resolves to that is not on the public internet
    (loopback, private, link-local: the server's own network), or None.

    Checked when a subscription is made, for a clear answer; every attempt is checked again
    where it connects (`PublicOnly`), so a webhook cannot be used to make this server call
    into its own network (MAPSTREAM_WEBHOOK_ALLOW_PRIVATE=1 lifts both, e.g. for a receiver
    on the same host)."""
    parts = urlsplit(url)
    try:
        addresses = await host_addresses(
            parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        )
    except (OSError, UnicodeError):
        return None  # does not resolve: the attempt fails on its own, with the resolver's words
    return next((a for a in addresses if not is_public(a)), None)


async def host_addresses(host: str, port: int) -> list[str]:
    """The distinct addresses `host` resolves to, in the resolver's order (IPv6 zone ids
    dropped); OSError or UnicodeError when it does not resolve."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


# IPv6 prefixes that carry an IPv4 address in their last 32 bits and reach it where they are
# translated (NAT64, RFC 6052 and 8215), and the deprecated IPv4-compatible form
_EMBEDS_IPV4 = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::/96"),
)


def is_public(text: str) -> bool:
    """Whether an address is on the public internet, and so is any IPv4 address it carries
    (IPv4-mapped, 6to4, Teredo, NAT64): `64:ff9b::a00:5` reaches 10.0.0.5 where NAT64 runs,
    though `ipaddress` calls it global."""
    address = ipaddress.ip_address(text)
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        carried = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
        if any(address in net for net in _EMBEDS_IPV4):
            carried.append(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
        return all(v4 is None or v4.is_global for v4 in carried)
    return True


MAX_ADDRESSES = 4  # of a receiver's host, tried in turn


class PublicOnly(httpcore.AsyncNetworkBackend):
    """Connects only to addresses on the public internet, resolving each host once.

    The address checked is the address connected to: a receiver's name that resolved to a
    public address when the subscription was made, and resolves into the server's own network
    when an attempt is made (DNS rebinding, or a record changed since), is refused before a
    byte is sent. TLS still verifies the certificate against the URL's host name."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            # one deadline for the lookup and every address tried: a host with many silent
            # addresses costs one connect timeout, not one per address
            async with asyncio.timeout(timeout):
                return await self._connect(host, port, timeout, local_address, socket_options)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"{host}: no connection within {timeout} s") from None

    async def _connect(
        self,
        host: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await host_addresses(host, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from exc
        if not all(is_public(a) for a in addresses):
            raise httpcore.ConnectError(
                f"not sent: {host} resolves to an address of this server's own network"
            )
        failures: list[str] = []
        for address in addresses[:MAX_ADDRESSES]:  # the first that answers, as a browser does
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failures.append(f"{address}: {str(exc) or type(exc).__name__}")
        raise httpcore.ConnectError("; ".join(failures) or f"{host} has no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("not sent: a webhook receiver is never a local socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def receiver_transport(allow_private: bool) -> httpx.AsyncHTTPTransport:
    """The transport webhook deliveries go through: connections only to public addresses,
    checked at connect time (`PublicOnly`), unless MAPSTREAM_WEBHOOK_ALLOW_PRIVATE=1. Either
    way TLS trusts SSL_CERT_FILE / SSL_CERT_DIR when they are set (a private CA)."""
    transport = httpx.AsyncHTTPTransport(trust_env=True)
    if allow_private:
        return transport
    # httpx has no resolver hook: its transport converts requests for an httpcore pool, and
    # this one is the same pool with the checking network backend (tests/test_webhooks.py
    # fails if an httpx upgrade stops using it)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("httpx.AsyncHTTPTransport changed: webhooks cannot guard addresses")
    limits = httpx.Limits()
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=True),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=PublicOnly(),
    )
    return transport


def check_events(events: Sequence[str]) -> list[str]:
    unknown = [e for e in events if e != "*" and e not in EVENT_TYPES]
    if not events or len(events) > len(EVENT_TYPES) or unknown:
        what = f"unknown event type {unknown[0]!r}; " if unknown else ""
        raise Malformed(
            f"{what}`events` lists event types (e.g. MilestoneRescheduled) or '*' for all",
            field="events",
        )
    return sorted(set(events))


async def may_manage(request: Request, user: str, org: str) -> bool:
    """Admins, and (unless MAPSTREAM_WEBHOOK_ADMINS_ONLY) the seller-side members of at least
    one of the organisation's plans: the same rule as GET /analytics."""
    from server.http import org_access

    settings: Settings = request.app.state.settings
    return await org_access(request, user, org, members=not settings.webhook_admins_only)


async def _managed(request: Request, user: str) -> WebhookOut:
    """The subscription in the path, if the caller may manage it; else 404 (as for plans)."""
    subscription_id = request.path_params["subscription_id"]
    sub = await _hooks(request).get(subscription_id) if _ID.match(subscription_id) else None
    if sub is None or not await may_manage(request, user, sub.seller_org):
        raise NotFound(f"no webhook {subscription_id!r} that you can manage")
    return sub


async def create_webhook(request: Request) -> Response:
    """POST /webhooks: subscribe a URL to a seller organisation's events; the secret once."""
    from server.http import current_user

    user = current_user(request, limit="command")
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    new: WebhookIn = decode(body, _WEBHOOK_IN)
    org = check_org(new.seller_org)
    url = check_url(new.url)
    events = check_events(new.events)
    if len(new.description) > MAX_TITLE or not new.description.isprintable():
        raise Malformed(
            f"`description` is at most {MAX_TITLE} printable characters", field="description"
        )
    if not await may_manage(request, user, org):
        raise Forbidden(
            "webhooks are managed by admins and the seller-side members of the organisation's plans"
        )
    settings: Settings = request.app.state.settings
    if not settings.webhook_allow_private:
        private = await private_address(url)
        if private is not None:
            raise Malformed(
                "`url` reaches an address of this server's own network (loopback, private or"
                " link-local); webhooks go to public addresses"
                " (MAPSTREAM_WEBHOOK_ALLOW_PRIVATE=1 allows it)",
                field="url",
            )
    created = await _hooks(request).create(org, url, events, new.description, user)
    log.info("webhook %s created for %s by %s", created.subscription_id, org, user)
    return json_response(created, status_code=201)


async def list_webhooks(request: Request) -> Response:
    """GET /webhooks?seller_org=NAME: the organisation's subscriptions (never the secrets)."""
    from server.http import current_user

    user = current_user(request)
    org = check_org(request.query_params.get("seller_org", ""))
    if not await may_manage(request, user, org):
        raise Forbidden(
            "webhooks are managed by admins and the seller-side members of the organisation's plans"
        )
    return json_response(WebhookList(org, await _hooks(request).subscriptions(org)))


async def delete_webhook(request: Request) -> Response:
    """DELETE /webhooks/{id}: no more deliveries; the rows stay for the record."""
    from server.http import current_user

    user = current_user(request, limit="command")
    sub = await _managed(request, user)
    if not await _hooks(request).delete(sub.subscription_id):
        raise NotFound(f"no webhook {sub.subscription_id!r} that you can manage")
    log.info("webhook %s deleted by %s", sub.subscription_id, user)
    return json_response({"subscription_id": sub.subscription_id, "deleted": True})


async def list_deliveries(request: Request) -> Response:
    """GET /webhooks/{id}/deliveries?status=&plan_id=&limit=: newest event first."""
    from server.http import current_user

    user = current_user(request)
    sub = await _managed(request, user)
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise Malformed(f"`status` is one of {', '.join(STATUSES)}", field="status")
    plan_id = request.query_params.get("plan_id") or None
    if plan_id is not None:
        check_plan_id(plan_id)
    limit = int_query(request, "limit", 100, low=1, high=1000)
    rows = await _hooks(request).deliveries(
        sub.subscription_id, status=status, plan_id=plan_id, limit=limit
    )
    return json_response(DeliveryList(sub.subscription_id, rows))


async def _optional_body(request: Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    """The request's JSON body decoded; no body means `{}` (every field has a default)."""
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    return decode(body if body.strip() else b"{}", decoder)


async def replay_deliveries(request: Request) -> Response:
    """POST /webhooks/{id}/replay {plan_id?, version?}: send parked deliveries again."""
    from server.http import current_user

    user = current_user(request, limit="command")
    sub = await _managed(request, user)
    ask: ReplayIn = await _optional_body(request, _REPLAY_IN)
    if ask.plan_id is not None:
        check_plan_id(ask.plan_id)
    if ask.version is not None and (ask.plan_id is None or not 1 <= ask.version < 2**31):
        raise Malformed("`version` (1 or more) needs a `plan_id`", field="version")
    n = await _hooks(request).replay(sub.subscription_id, ask.plan_id, ask.version)
    if n:
        _wake_worker(request)
    log.info("webhook %s: %s deliveries replayed by %s", sub.subscription_id, n, user)
    return json_response(ReplayOut(sub.subscription_id, n))


async def rotate_secret(request: Request) -> Response:
    """POST /webhooks/{id}/secret {keep_previous_for?}: a new signing secret, shown once."""
    from server.http import current_user

    user = current_user(request, limit="command")
    sub = await _managed(request, user)
    ask: SecretIn = await _optional_body(request, _SECRET_IN)
    if not 0 <= ask.keep_previous_for <= MAX_KEEP_PREVIOUS:
        raise Malformed(
            f"`keep_previous_for` is 0 to {MAX_KEEP_PREVIOUS} seconds (7 days)",
            field="keep_previous_for",
        )
    rotated = await _hooks(request).rotate_secret(sub.subscription_id, ask.keep_previous_for)
    if rotated is None:
        raise NotFound(f"no webhook {sub.subscription_id!r} that you can manage")
    log.info("webhook %s: secret rotated by %s", sub.subscription_id, user)
    return json_response(rotated)


def routes() -> list[BaseRoute]:
    return [
        Route("/webhooks", create_webhook, methods=["POST"]),
        Route("/webhooks", list_webhooks, methods=["GET"]),
        Route("/webhooks/{subscription_id}", delete_webhook, methods=["DELETE"]),
        Route("/webhooks/{subscription_id}/deliveries", list_deliveries, methods=["GET"]),
        Route("/webhooks/{subscription_id}/replay", replay_deliveries, methods=["POST"]),
        Route("/webhooks/{subscription_id}/secret", rotate_secret, methods=["POST"]),
    ]


def openapi(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) to merge into /openapi.json; `ref` formats a component $ref."""
    _, components = msgspec.json.schema_components(
        [
            WebhookIn,
            WebhookCreated,
            WebhookList,
            DeliveryList,
            ReplayIn,
            ReplayOut,
            SecretIn,
            SecretRotated,
            WebhookPayload,
        ],
        ref_template=ref,
    )

    doc = Doc(ref)
    body, errors = doc.body, doc.errors

    subscription_id = {
        "name": "subscription_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^wh_[0-9a-f]{16}$"},
    }
    delivery = (
        "Each delivery is a POST of a WebhookPayload body with headers `Webhook-Id`"
        " (`<plan_id>:<version>`, the idempotency id), `Webhook-Timestamp`, `Mapstream-Event`,"
        " `Mapstream-Attempt` and `Mapstream-Signature: t=<unix>,v1=<hex HMAC-SHA256 of"
        ' "<t>.<body>">` (a second `v1`, by the previous secret, while a rotation\'s grace'
        " period lasts). A 2xx answer accepts it; anything else is retried with backoff,"
        " then parked."
    )
    paths: dict[str, Any] = {
        "/webhooks": {
            "post": {
                "summary": "Subscribe a URL to a seller organisation's events (its sellers, admins)",
                "description": delivery,
                "requestBody": {"required": True, "content": body("WebhookIn")},
                "responses": {
                    "201": {
                        "description": "created; `secret` is shown this once",
                        "content": body("WebhookCreated"),
                    },
                    **errors(
                        "403 forbidden",
                        "413 payload_too_large",
                        "422 rule_violation (webhook_limit)",
                    ),
                },
            },
            "get": {
                "summary": "A seller organisation's webhook subscriptions",
                "parameters": [SELLER_ORG],
                "responses": {
                    "200": {"description": "subscriptions", "content": body("WebhookList")},
                    **errors("403 forbidden"),
                },
            },
        },
        "/webhooks/{subscription_id}": {
            "delete": {
                "summary": "Delete a subscription (no more deliveries)",
                "parameters": [subscription_id],
                "responses": {"200": {"description": "deleted"}, **errors("404 not_found")},
            }
        },
        "/webhooks/{subscription_id}/deliveries": {
            "get": {
                "summary": "A subscription's deliveries, newest event first",
                "parameters": [
                    subscription_id,
                    {"name": "status", "in": "query", "schema": {"enum": list(STATUSES)}},
                    {"name": "plan_id", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {
                    "200": {"description": "deliveries", "content": body("DeliveryList")},
                    **errors("404 not_found"),
                },
            }
        },
        "/webhooks/{subscription_id}/replay": {
            "post": {
                "summary": "Send parked deliveries again (or one delivery, even if delivered)",
                "parameters": [subscription_id],
                "requestBody": {"required": False, "content": body("ReplayIn")},
                "responses": {
                    "200": {"description": "how many were re-driven", "content": body("ReplayOut")},
                    **errors("404 not_found", "413 payload_too_large"),
                },
            }
        },
        "/webhooks/{subscription_id}/secret": {
            "post": {
                "summary": "Rotate the signing secret; the old one keeps signing for a while",
                "description": "The new secret is shown this once. Until `previous_valid_until`"
                " every delivery carries a signature by each secret, so receivers can switch"
                " at their own pace; `keep_previous_for: 0` stops the old one at once.",
                "parameters": [subscription_id],
                "requestBody": {"required": False, "content": body("SecretIn")},
                "responses": {
                    "200": {"description": "the new secret", "content": body("SecretRotated")},
                    **errors("404 not_found", "413 payload_too_large"),
                },
            }
        },
    }
    return paths, components


# -- CLI -------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add `mapstream webhooks ...` to the CLI's subparsers."""
    parser = sub.add_parser(
        "webhooks", help="webhook subscriptions: list them, show deliveries, replay parked ones"
    )
    actions = parser.add_subparsers(dest="webhooks_action", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="subscriptions and how many deliveries are where")
    ls.add_argument("--org", help="one seller organisation only")
    dl = actions.add_parser("deliveries", help="a subscription's deliveries, newest first")
    dl.add_argument("subscription_id")
    dl.add_argument("--status", choices=STATUSES)
    dl.add_argument("--plan", help="one plan only")
    dl.add_argument("--limit", type=int, default=50)
    rp = actions.add_parser(
        "replay", help="send parked deliveries again (one delivery with --plan and --version)"
    )
    rp.add_argument("subscription_id")
    rp.add_argument("--plan", help="one plan only")
    rp.add_argument("--version", type=int, help="that one delivery, even if delivered")
    rs = actions.add_parser(
        "rotate-secret", help="a new signing secret (printed once); the old one signs too a while"
    )
    rs.add_argument("subscription_id")
    rs.add_argument(
        "--keep-previous",
        type=int,
        default=DEFAULT_KEEP_PREVIOUS,
        metavar="SECONDS",
        help=f"how long the old secret signs too (default {DEFAULT_KEEP_PREVIOUS}: a day;"
        f" 0 to {MAX_KEEP_PREVIOUS})",
    )
    parser.set_defaults(run=_cli)


def _cli(args: argparse.Namespace) -> int:
    from server.settings import load_settings

    return asyncio.run(run_cli(load_settings(), args, sys.stdout))


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M:%S UTC")


async def run_cli(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from server.tools import open_store

    _store, pool = await open_store(settings)
    try:
        hooks = WebhookStore(pool)
        action = args.webhooks_action
        if action == "list":
            subs = await hooks.subscriptions(args.org)
            if not subs:
                print("no webhook subscriptions", file=out)
            for s in subs:
                print(
                    f"{s.subscription_id}  {s.seller_org}  {s.url}  events: {', '.join(s.events)}"
                    f"  pending {s.pending}, delivered {s.delivered}, parked {s.parked}",
                    file=out,
                )
            return 0
        if await hooks.get(args.subscription_id) is None:
            print(f"{args.subscription_id}: no such webhook subscription", file=sys.stderr)
            return 1
        if action == "deliveries":
            rows = await hooks.deliveries(
                args.subscription_id, status=args.status, plan_id=args.plan, limit=args.limit
            )
            if not rows:
                print("no deliveries", file=out)
            for d in rows:
                last = f"HTTP {d.last_status}" if d.last_status else (d.last_error or "-")
                when = {
                    "delivered": f"delivered at {_when(d.delivered_at)}",
                    "parked": f"parked after {d.attempts} attempts, last {last}",
                    "pending": f"pending, {d.attempts} attempts so far, next at "
                    f"{_when(d.next_attempt_at)}",
                }[d.status]
                print(f"{d.id}  {d.type}  {when}", file=out)
            return 0
        if action == "rotate-secret":
            if not 0 <= args.keep_previous <= MAX_KEEP_PREVIOUS:
                print(f"--keep-previous is 0 to {MAX_KEEP_PREVIOUS} seconds", file=sys.stderr)
                return 2
            rotated = await hooks.rotate_secret(args.subscription_id, args.keep_previous)
            if rotated is None:
                print(f"{args.subscription_id}: no such webhook subscription", file=sys.stderr)
                return 1
            until = rotated.previous_valid_until
            print(rotated.secret, file=out)
            print(
                "the previous secret no longer signs"
                if until is None
                else f"the previous secret signs too until {_when(until)}",
                file=sys.stderr,
            )
            return 0
        if args.version is not None and args.plan is None:
            print("--version needs --plan", file=sys.stderr)
            return 2
        n = await hooks.replay(args.subscription_id, args.plan, args.version)
        what = "delivery" if n == 1 else "deliveries"
        print(
            f"{args.subscription_id}: {n} {what} queued again"
            if n
            else f"{args.subscription_id}: nothing to replay (no parked deliveries)",
            file=out,
        )
        return 0
    finally:
        await pool.close()


# -- wiring ----------------------------------------------------------------------------------


def start(app: Starlette) -> list[asyncio.Task[None]]:
    """Background tasks (the outbox projection and the delivery worker) of the app's lifespan."""
    settings: Settings = app.state.settings
    store: Store = app.state.store
    hooks = WebhookStore(store.pool)
    worker = DeliveryWorker(hooks, settings)
    runner: ProjectionRunner[DeliveryRow] = ProjectionRunner(
        OutboxProjection(app.state.plans.at_version, hooks.targets, orgs=settings.orgs),
        OutboxTable(store.pool, worker.wake),
        store,
    )
    app.state.webhooks = hooks
    app.state.webhook_worker = worker
    app.state.webhook_outbox = runner
    from server import observability

    observability.set_webhook_backlog_source(hooks.backlog, app=app)

    async def outbox() -> None:
        while True:
            try:
                await hooks.start_checkpoint(await store.log_head())
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("webhooks: cannot start the outbox yet (%s)", exc)
                await asyncio.sleep(1.0)
        await runner.run()

    return [
        asyncio.create_task(outbox(), name="webhooks:outbox"),
        asyncio.create_task(worker.run(), name="webhooks:delivery"),
    ]


__all__ = [
    "WebhookPayload",
    "openapi",
    "register",
    "routes",
    "signature_header",
    "start",
    "verify_signature",
]
