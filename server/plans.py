"""The plan service: decode -> decide -> append, with per-plan group commit.

Commands for one plan are queued and appended by one flusher task at a time: it decides them
in order against the cached state and writes the whole batch in one statement. A hot plan
with many concurrent writers therefore pays one round trip and one commit per batch, not
per command. Another instance appending first makes the batch stale: the flusher reloads
the plan and decides the batch again (nothing was answered yet).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from domain import chain
from domain.base import Context, Event, Recorded
from domain.decider import CREATES_ITEM, PlanCommand, decide, decode_event, evolve, fold
from domain.errors import MapstreamError, NotFound, VersionConflict
from domain.model import Plan
from domain.visibility import audience
from projections.snapshots import EVERY as SNAPSHOT_EVERY
from projections.snapshots import SCHEMA as SNAPSHOT_SCHEMA
from server.apidoc import JsonObject
from server.errors import database_down
from server.observability import Metrics
from server.store import (
    Appended,
    AppendRequest,
    DuplicateCommand,
    NewCommand,
    NewEvent,
    PlanRow,
    Stale,
    Store,
    StoredEvent,
)

log = logging.getLogger(__name__)

_MAX_BATCH = 128
_MAX_RETRIES = 20
_CACHE_PLANS = 2048
# The stored inline state is rewritten only once the events after it weigh half as much as
# the state itself (and at least STATE_MIN_EVERY versions have passed): an append then costs
# O(its events), not O(plan size), and a cold read folds a bounded tail. STATE_MAX_EVERY
# caps the tail for plans of many tiny events.
STATE_MIN_EVERY = 32
STATE_MAX_EVERY = 2048

_encoder = msgspec.json.Encoder()
_plan_decoder = msgspec.json.Decoder(Plan)


class Unavailable(MapstreamError):
    """The database cannot be reached right now; retry with the same command_id."""

    code = "unavailable"


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class EventOut(msgspec.Struct, frozen=True):
    """An event as clients see it (GET /plans/{id}/events, the hub, command answers)."""

    plan_id: str
    version: int
    position: int
    type: str
    data: JsonObject
    actor: str
    command_id: str | None
    recorded_at: datetime
    hash: str
    data_digest: str


class RedactedOut(msgspec.Struct, frozen=True):
    """An event of the other side's internal item: its place in the chain, no content."""

    plan_id: str
    version: int
    position: int
    data_digest: str
    hash: str
    recorded_at: datetime
    type: str = "Redacted"


class WithdrawnOut(RedactedOut, frozen=True):
    """The other side made a shared item internal: the placeholder names the item that left
    your view (drop it, its comments and its dependencies); its new content stays hidden."""

    withdrawn: list[str] = []


class _Withdrawal(msgspec.Struct):
    id: str = ""
    changes: dict[str, Any] = {}


_withdrawal = msgspec.json.Decoder(_Withdrawal)


def event_out(e: StoredEvent, side: str | None = None) -> EventOut | RedactedOut:
    """`e` as `side` may see it (None: everything, for admins and auditors of the full log)."""
    if side is not None and e.audience is not None and e.audience != side:
        if e.type == "ActionItemUpdated":
            update = _withdrawal.decode(e.data)
            if update.changes.get("visibility") == "internal":
                return WithdrawnOut(
                    e.plan_id,
                    e.version,
                    e.position,
                    e.data_digest,
                    e.hash,
                    e.recorded_at,
                    withdrawn=[update.id],
                )
        return RedactedOut(e.plan_id, e.version, e.position, e.data_digest, e.hash, e.recorded_at)
    return EventOut(
        plan_id=e.plan_id,
        version=e.version,
        position=e.position,
        type=e.type,
        data=msgspec.Raw(e.data.encode()),
        actor=e.actor,
        command_id=e.command_id,
        recorded_at=e.recorded_at,
        hash=e.hash,
        data_digest=e.data_digest,
    )


class CommandAnswer(msgspec.Struct, frozen=True):
    version: int
    events: list[StoredEvent]


def recorded(e: StoredEvent) -> Recorded:
    return Recorded(
        e.version, e.actor, e.recorded_at, decode_event(e.type, e.schema_version, e.data)
    )


@dataclass
class _Pending:
    command: PlanCommand
    actor: str
    command_id: str | None
    correlation_id: str | None
    expected_version: int | None
    future: asyncio.Future[CommandAnswer]


@dataclass
class _Cached:
    plan: Plan
    head_hash: str
    last_at: datetime
    state_version: int = 0  # version of the state stored in the plans row
    state_bytes: int = 0  # its encoded size
    tail_bytes: int = 0  # event data appended since

    def state_is_due(self, new_version: int, added_bytes: int) -> bool:
        behind = new_version - self.state_version
        if self.state_version == 0 or behind >= STATE_MAX_EVERY:
            return True
        return behind >= STATE_MIN_EVERY and self.tail_bytes + added_bytes >= self.state_bytes // 2


@dataclass
class _Writer:
    queue: list[_Pending] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class GroupCommit:
    """Cross-plan group commit: the flushers of different plans hand their ready batches here.

    Up to `inflight` statements run at once; batches that arrive meanwhile wait and then go
    together in ONE statement (`Store.append_many`), so many plans with one writer each pay
    one round trip and one commit per group rather than per command. An idle service adds
    no wait: a batch goes at once when a statement slot is free. When the group statement
    fails as a whole (a duplicate command id, a deadlock with another instance), each batch
    is appended on its own so each flusher gets its own answer.
    """

    def __init__(self, store: Store, *, inflight: int = 2, max_plans: int = 64) -> None:
        self.store = store
        self.inflight = inflight
        self.max_plans = max_plans
        self._ready: list[tuple[AppendRequest, asyncio.Future[Appended | Stale]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.grouped = 0  # batches that went in a group statement (for tests and metrics)
        self.fallbacks = 0  # group statements refused as a whole, then appended one by one

    async def append(self, request: AppendRequest) -> Appended | Stale:
        if request.base_version == 0:  # a new plan: its row is inserted, not moved
            return await self._alone(request)
        future: asyncio.Future[Appended | Stale] = asyncio.get_running_loop().create_future()
        self._ready.append((request, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._ready and self._running < self.inflight:
            group, self._ready = self._ready[: self.max_plans], self._ready[self.max_plans :]
            self._running += 1
            task = asyncio.create_task(self._commit(group), name="group-commit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _commit(
        self, group: list[tuple[AppendRequest, asyncio.Future[Appended | Stale]]]
    ) -> None:
        try:
            if len(group) == 1:
                await self._settle(*group[0])
                return
            try:
                results = await self.store.append_many([r for r, _ in group])
            except BaseException as exc:
                if isinstance(exc, DuplicateCommand | asyncpg.PostgresError) and not (
                    database_down(exc)
                ):
                    # refused as a whole (a recorded command id, a deadlock with another
                    # instance, or one batch PostgreSQL rejects): each batch on its own, so
                    # one plan's problem is that plan's answer only
                    self.fallbacks += 1
                    await asyncio.gather(*(self._settle(r, f) for r, f in group))
                    return
                for _, future in group:  # the database is gone (or we are cancelled)
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            self.grouped += len(group)
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._running -= 1
            self._start()

    async def _settle(
        self, request: AppendRequest, future: asyncio.Future[Appended | Stale]
    ) -> None:
        try:
            result = await self._alone(request)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not future.done():
                future.set_result(result)

    async def _alone(self, r: AppendRequest) -> Appended | Stale:
        return await self.store.append(
            r.plan_id, r.base_version, r.head_hash, r.state, r.recorded_at, r.commands, r.events
        )


class PlanService:
    """Handles commands and reads for plans. One per process, built in the app lifespan."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_append: Callable[[str, int], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = clock
        self.on_append = on_append
        self._writers: dict[str, _Writer] = {}
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._group = GroupCommit(store)
        # True while this instance cannot read its database (set by the app from its log
        # follower): commands are then refused at once rather than left hanging on a
        # partitioned connection until the statement timeout
        self.cut_off: Callable[[], bool] = lambda: False

    # -- commands ---------------------------------------------------------------------------

    async def handle(
        self,
        plan_id: str,
        command: PlanCommand,
        actor: str,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
        expected_version: int | None = None,
    ) -> CommandAnswer:
        """Decide and append one command. Raises MapstreamError (domain, conflict, unavailable)."""
        self._check_reachable()
        if type(command).__struct_config__.tag in CREATES_ITEM and not getattr(command, "id", ""):
            command = msgspec.structs.replace(command, id=new_id())  # type: ignore[type-var]
        loop = asyncio.get_running_loop()
        pending = _Pending(
            command, actor, command_id, correlation_id, expected_version, loop.create_future()
        )
        writer = self._writers.get(plan_id)
        if writer is None:
            writer = self._writers[plan_id] = _Writer()
        writer.queue.append(pending)
        if writer.task is None:
            writer.task = asyncio.create_task(
                # a fresh context: the flusher serves many requests, not the first one's id
                self._flush_loop(plan_id, writer),
                name=f"flush:{plan_id}",
                context=contextvars.Context(),
            )
        return await self.metrics.command(
            asyncio.shield(pending.future),
            plan_id=plan_id,
            command_id=command_id,
            correlation_id=correlation_id,
            actor=actor,
        )

    def _check_reachable(self) -> None:
        """Refuse a write at once while this instance is cut off from its database."""
        if self.cut_off():
            raise Unavailable(
                "this instance cannot reach the database right now: retry with the same "
                "command_id (another instance may answer)"
            )

    async def _flush_loop(self, plan_id: str, writer: _Writer) -> None:
        try:
            while writer.queue:
                batch, writer.queue = writer.queue[:_MAX_BATCH], writer.queue[_MAX_BATCH:]
                try:
                    await self._flush(plan_id, batch)
                except Exception as exc:
                    self._cache.pop(plan_id, None)
                    error = _as_client_error(exc)
                    if not isinstance(error, MapstreamError) or isinstance(error, Unavailable):
                        log.error(
                            "append failed for plan %s: %s",
                            plan_id,
                            exc,
                            extra={"plan_id": plan_id},
                        )
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(error)
        finally:
            writer.task = None
            if not writer.queue:
                self._writers.pop(plan_id, None)

    async def _cached(self, plan_id: str) -> _Cached:
        cached = self._cache.get(plan_id)
        if cached is not None:
            self._cache.move_to_end(plan_id)
            return cached
        loaded = await self._load(plan_id)
        if loaded is None:
            cached = _Cached(Plan(id=plan_id), chain.GENESIS, datetime.min.replace(tzinfo=UTC))
        else:
            plan, row, tail_bytes = loaded
            cached = _Cached(
                plan, row.head_hash, row.updated_at, row.state_version, len(row.state), tail_bytes
            )
        self._remember(plan_id, cached)
        return cached

    def _remember(self, plan_id: str, cached: _Cached) -> None:
        self._cache[plan_id] = cached
        self._cache.move_to_end(plan_id)
        while len(self._cache) > _CACHE_PLANS:
            self._cache.popitem(last=False)

    async def _flush(self, plan_id: str, batch: list[_Pending]) -> None:
        for attempt in range(_MAX_RETRIES):
            # State first, then the known command ids: a retry whose first attempt committed
            # before this load is then always found (one committed after makes us stale).
            base = await self._cached(plan_id)
            if attempt > 0:
                batch = await self._answer_known_commands(plan_id, batch)
                if not batch:
                    return
            plan, head, at = base.plan, base.head_hash, max(self.clock(), base.last_at)
            new_events: list[NewEvent] = []
            new_commands: list[NewCommand] = []
            outcomes: list[tuple[_Pending, int, int] | tuple[_Pending, MapstreamError]] = []
            seen_ids: set[str] = set()
            for p in batch:
                if p.command_id is not None and p.command_id in seen_ids:
                    # the same id twice in one batch: answer both from the first
                    outcomes.append((p, -1, -1))
                    continue
                try:
                    if p.expected_version is not None and p.expected_version != plan.version:
                        raise VersionConflict(plan.version, p.expected_version)
                    ctx = Context(actor=p.actor, now=at, member=plan.member(p.actor))
                    events = decide(plan, p.command, ctx)
                except MapstreamError as exc:
                    outcomes.append((p, exc))
                    continue
                first = plan.version + 1
                for event in events:
                    version = plan.version + 1
                    new = new_event(
                        plan_id,
                        head,
                        version,
                        at,
                        event,
                        audience(plan, event),
                        p.actor,
                        p.command_id,
                        p.correlation_id,
                    )
                    head = new.hash
                    new_events.append(new)
                    plan = evolve(plan, Recorded(version, p.actor, at, event))
                if p.command_id is not None and events:
                    seen_ids.add(p.command_id)
                    new_commands.append(NewCommand(p.command_id, p.actor, first, plan.version))
                outcomes.append((p, first, plan.version))
            refused = [o[0] for o in outcomes if len(o) == 2 and o[0].command_id is not None]
            if refused:
                # a refusal may be a retry of a command that already succeeded: first answer wins
                await self._answer_known_commands(plan_id, refused)
            if not new_events:
                self._resolve(outcomes, [])
                return
            added = sum(len(e.data) for e in new_events)
            state = (
                _encoder.encode(plan).decode() if base.state_is_due(plan.version, added) else None
            )
            request = AppendRequest(
                plan_id, base.plan.version, head, state, at, new_commands, new_events
            )
            try:
                result = await self._group.append(request)
            except DuplicateCommand:
                self._cache.pop(plan_id, None)
                continue  # answer the known ids from the store on the next pass
            if isinstance(result, Stale):
                log.info(
                    "plan %s moved on under us (at v%s, cached v%s); deciding again",
                    plan_id,
                    result.current_version,
                    base.plan.version,
                    extra={"plan_id": plan_id},
                )
                self._cache.pop(plan_id, None)
                continue
            assert isinstance(result, Appended)
            self.metrics.appended(len(new_events))
            if state is not None:
                after = _Cached(plan, head, at, plan.version, len(state), 0)
            else:
                after = _Cached(
                    plan, head, at, base.state_version, base.state_bytes, base.tail_bytes + added
                )
            self._remember(plan_id, after)
            stored = [
                _stored(plan_id, e, pos, at)
                for e, pos in zip(new_events, result.positions, strict=True)
            ]
            self._resolve(outcomes, stored)
            if self.on_append is not None:
                self.on_append(plan_id, plan.version)
            return
        raise Unavailable("the plan is too busy right now: retry with the same command_id")

    def _resolve(self, outcomes: list[Any], stored: list[StoredEvent]) -> None:
        by_version = {e.version: e for e in stored}
        first_answer: dict[str, CommandAnswer] = {}
        for outcome in outcomes:
            p = outcome[0]
            if p.future.done():
                continue
            if len(outcome) == 2:
                p.future.set_exception(outcome[1])
                continue
            _, first, last = outcome
            if first == -1:
                continue
            answer = CommandAnswer(last, [by_version[v] for v in range(first, last + 1)])
            if p.command_id is not None:
                first_answer[p.command_id] = answer
            p.future.set_result(answer)
        for outcome in outcomes:
            p = outcome[0]
            if not p.future.done() and len(outcome) == 3 and p.command_id in first_answer:
                p.future.set_result(first_answer[p.command_id])

    async def _answer_known_commands(self, plan_id: str, batch: list[_Pending]) -> list[_Pending]:
        """Answer commands whose id was recorded before with their first answer; keep the rest."""
        ids = [p.command_id for p in batch if p.command_id is not None]
        if not ids:
            return batch
        known = await self.store.command_results(plan_id, ids)
        if not known:
            return batch
        rest = []
        for p in batch:
            result = known.get(p.command_id) if p.command_id is not None else None
            if result is None:
                rest.append(p)
                continue
            events = await self.store.read_stream(
                plan_id, after=result.first_version - 1, upto=result.version
            )
            if not p.future.done():
                p.future.set_result(CommandAnswer(result.version, events))
        return rest

    # -- reads -----------------------------------------------------------------------------

    async def create_whole(
        self,
        plan: Plan,
        events: list[tuple[Event, str | None]],
        actor: str,
        at: datetime,
        *,
        command_id: str | None = None,
        correlation_id: str | None = None,
    ) -> int | None:
        """Append a new plan's whole history (decided by the caller, e.g. an import) at once.

        `plan` is the fold of `events`, each given with the only side that may see it. All or
        nothing: returns the new version, the version recorded for `command_id` when this is
        a retry, or None when a plan with this id exists already (nothing written)."""
        self._check_reachable()
        head = chain.GENESIS
        new_events: list[NewEvent] = []
        for version, (event, side) in enumerate(events, 1):
            new_events.append(
                new_event(
                    plan.id, head, version, at, event, side, actor, command_id, correlation_id
                )
            )
            head = new_events[-1].hash
        commands = [NewCommand(command_id, actor, 1, plan.version)] if command_id else []
        state = _encoder.encode(plan).decode()
        try:
            result = await self.store.append(plan.id, 0, head, state, at, commands, new_events)
        except DuplicateCommand:
            result = None
        if not isinstance(result, Appended):
            if command_id:
                known = (await self.store.command_results(plan.id, [command_id])).get(command_id)
                if known is not None:
                    first = await self.store.read_stream(
                        plan.id, after=known.first_version - 1, upto=known.first_version
                    )
                    if first and first[0].actor == actor:  # a retry by the same person
                        return known.version
            return None
        # the cache may hold this id as "no plan yet" (a command sent to it before)
        self._remember(plan.id, _Cached(plan, head, at, plan.version, len(state), 0))
        if self.on_append is not None:
            self.on_append(plan.id, plan.version)
        return plan.version

    async def current(self, plan_id: str) -> Plan:
        """The inline projection: the state after the last committed append."""
        loaded = await self._load(plan_id, snapshots=True)
        if loaded is None:
            raise NotFound(f"no plan {plan_id!r}")
        return loaded[0]

    async def _load(
        self, plan_id: str, *, snapshots: bool = False
    ) -> tuple[Plan, PlanRow, int] | None:
        """The stored state brought up to the row's version with the events after it.

        With `snapshots`, a snapshot newer than the stored state shortens a long tail (the
        writer keeps its own accounting of the tail, so it loads without them).
        Returns the plan, the row, and the size of the event data folded on top."""
        row = await self.store.load_plan(plan_id)
        if row is None:
            return None
        start, state = row.state_version, row.state
        if snapshots and row.version - row.state_version > SNAPSHOT_EVERY:
            found = await self.store.nearest_snapshot(plan_id, row.version, SNAPSHOT_SCHEMA)
            if found is not None and found[0] > start:
                start, state = found
        plan = _plan_decoder.decode(state)
        tail_bytes = 0
        if start < row.version:
            tail = await self.store.read_stream(plan_id, after=start, upto=row.version)
            plan = fold((recorded(e) for e in tail), plan)
            tail_bytes = sum(len(e.data) for e in tail)
        return plan, row, tail_bytes

    async def at_version(self, plan_id: str, version: int, *, snapshots: bool = True) -> Plan:
        """The plan as it was at `version`: the fold of its first `version` events.

        With `snapshots`, the fold starts from the nearest usable snapshot at or below
        `version` (projections/snapshots.py), so only the events after it are read."""
        schema = SNAPSHOT_SCHEMA if snapshots else None
        snapshot, facts = await self.store.history(plan_id, version, schema)
        start = 0 if snapshot is None else snapshot[0]
        if snapshot is None and not facts:
            raise NotFound(f"no plan {plan_id!r}")
        if start + len(facts) < version:
            at = start + len(facts)
            raise NotFound(f"plan {plan_id!r} has no version {version} (it is at {at})")
        base = Plan(id=plan_id) if snapshot is None else _plan_decoder.decode(snapshot[1])
        return fold(
            (
                Recorded(v, actor, at, decode_event(t, sv, data))
                for v, t, sv, data, actor, at in facts
            ),
            base,
        )

    async def at_time(self, plan_id: str, at: datetime) -> Plan:
        version = await self.store.version_at(plan_id, at)
        if version == 0:
            raise NotFound(f"plan {plan_id!r} did not exist at {at.isoformat()}")
        return await self.at_version(plan_id, version)


def _tag(event: Event) -> str:
    return str(type(event).__struct_config__.tag)


def new_event(
    plan_id: str,
    previous_hash: str,
    version: int,
    at: datetime,
    event: Event,
    side: str | None,
    actor: str,
    command_id: str | None,
    correlation_id: str | None,
) -> NewEvent:
    """`event` encoded, digested and chained after `previous_hash`, ready to append."""
    data = _encoder.encode(event).decode()
    digest = chain.data_digest(_tag(event), actor, data)
    return NewEvent(
        version=version,
        type=_tag(event),
        schema_version=type(event).schema_version,
        data=data,
        actor=actor,
        command_id=command_id,
        correlation_id=correlation_id,
        audience=side,
        data_digest=digest,
        hash=chain.event_hash(previous_hash, plan_id, version, at, digest),
    )


def _stored(plan_id: str, e: NewEvent, position: int, at: datetime) -> StoredEvent:
    return StoredEvent(
        plan_id=plan_id,
        version=e.version,
        position=position,
        transaction_id=0,
        type=e.type,
        schema_version=e.schema_version,
        data=e.data,
        actor=e.actor,
        command_id=e.command_id,
        correlation_id=e.correlation_id,
        recorded_at=at,
        audience=e.audience,
        data_digest=e.data_digest,
        hash=e.hash,
    )


def _as_client_error(exc: BaseException) -> BaseException:
    if isinstance(exc, MapstreamError):
        return exc
    from server.errors import database_down

    if database_down(exc):
        return Unavailable("the database is not reachable: retry with the same command_id")
    return exc
