"""The event store: all SQL of events, plans and commands lives here.

Verbs: `load_plan`, `append`, `read_stream`, `read_log`, `command_results`; for auditors
`read_audit`, `nearest_snapshot` and the projection read models (`audit_table`,
`snapshot_table`). Values are always bound as parameters. A comment says why a query has its shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Generic, TypeVar

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from projections.analytics import PlanFigures
from projections.audit import AuditRow
from projections.snapshots import SnapshotRow, checkpoint_name

LogCursor = tuple[int, int]  # (transaction_id, position): the global log's order
LOG_START: LogCursor = (0, 0)


class StoredEvent(msgspec.Struct, frozen=True):
    plan_id: str
    version: int
    position: int
    transaction_id: int
    type: str
    schema_version: int
    data: str
    actor: str
    command_id: str | None
    correlation_id: str | None
    recorded_at: datetime
    audience: str | None
    data_digest: str
    hash: str

    @property
    def cursor(self) -> LogCursor:
        return (self.transaction_id, self.position)


class NewEvent(msgspec.Struct, frozen=True):
    version: int
    type: str
    schema_version: int
    data: str
    actor: str
    command_id: str | None
    correlation_id: str | None
    audience: str | None
    data_digest: str
    hash: str


class NewCommand(msgspec.Struct, frozen=True):
    command_id: str
    actor: str
    first_version: int
    version: int


class PlanRow(msgspec.Struct, frozen=True):
    """The inline projection row: `state` is the fold at `state_version` (<= `version`)."""

    plan_id: str
    version: int
    head_hash: str
    state: str
    state_version: int
    updated_at: datetime


class CommandResult(msgspec.Struct, frozen=True):
    command_id: str
    first_version: int
    version: int


class Appended(msgspec.Struct, frozen=True):
    positions: list[int]


class Stale(msgspec.Struct, frozen=True):
    """Someone else appended first: the plan is now at `current_version` (0: absent)."""

    current_version: int


class DuplicateCommand(Exception):
    """A command id in the batch was already recorded for this plan."""


_EVENT_COLUMNS = """plan_id, version, position, transaction_id::text AS transaction_id, type,
    schema_version, data::text AS data, actor, command_id, correlation_id, recorded_at,
    audience, data_digest, hash"""


def _event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        plan_id=row["plan_id"],
        version=row["version"],
        position=row["position"],
        transaction_id=int(row["transaction_id"]),
        type=row["type"],
        schema_version=row["schema_version"],
        data=row["data"],
        actor=row["actor"],
        command_id=row["command_id"],
        correlation_id=row["correlation_id"],
        recorded_at=row["recorded_at"],
        audience=row["audience"],
        data_digest=row["data_digest"],
        hash=row["hash"],
    )


# One statement appends a whole batch: it moves the plan row from `base` to the new version
# (the row lock serialises writers of one plan; a stale base matches no row and nothing is
# written) and inserts the events. The first event of each command is flagged
# `command_first`; a unique index on (plan_id, command_id) over those rows turns a repeated
# command id into an error that aborts the statement. Single statement, single round trip.
_APPEND_EXISTING = """
WITH moved AS (
    UPDATE plans SET version = $3, head_hash = $4, updated_at = $6,
        state = COALESCE($5::json, state),
        state_version = CASE WHEN $5::json IS NULL THEN state_version ELSE $3 END
    WHERE plan_id = $1 AND version = $2
    RETURNING plan_id
), added AS (
    INSERT INTO events (plan_id, version, type, schema_version, data, actor, command_id,
                        command_first, correlation_id, recorded_at, audience, data_digest, hash)
    SELECT $1, e.version, e.type, e.schema_version, e.data::json, e.actor, e.command_id,
           e.command_first, e.correlation_id, $6, e.audience, e.digest, e.hash
    FROM unnest($7::int[], $8::text[], $9::smallint[], $10::text[], $11::text[],
                $12::text[], $13::bool[], $14::text[], $15::text[], $16::text[], $17::text[])
         WITH ORDINALITY AS e(version, type, schema_version, data, actor, command_id,
                              command_first, correlation_id, audience, digest, hash, n)
    WHERE EXISTS (SELECT 1 FROM moved)
    ORDER BY e.n
    RETURNING position, version
)
SELECT (SELECT count(*) FROM moved) AS moved,
       (SELECT array_agg(position ORDER BY version) FROM added) AS positions,
       (SELECT version FROM plans WHERE plan_id = $1) AS current_version
"""

# A new plan: the plan row is inserted instead of moved; ON CONFLICT means someone created
# the same plan id first.
_APPEND_NEW = _APPEND_EXISTING.replace(
    """UPDATE plans SET version = $3, head_hash = $4, updated_at = $6,
        state = COALESCE($5::json, state),
        state_version = CASE WHEN $5::json IS NULL THEN state_version ELSE $3 END
    WHERE plan_id = $1 AND version = $2
    RETURNING plan_id""",
    """INSERT INTO plans (plan_id, version, head_hash, state, state_version, created_at, updated_at)
    SELECT $1, $3, $4, $5::json, $3, $6, $6 WHERE $2 = 0
    ON CONFLICT (plan_id) DO NOTHING
    RETURNING plan_id""",
)


# Several plans' batches in one statement (cross-plan group commit): each plan row moves from
# its own base (a stale one matches no row and its events are not inserted; the others go
# ahead), one round trip and one commit for all of them. Rows are locked in plan_id order
# (requests come sorted), which keeps two instances batching the same plans from deadlocking
# in the common case; a deadlock or a duplicate command id aborts the whole statement, and
# the caller then appends each plan on its own.
_APPEND_MANY = """
WITH req AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::text[],
                         $6::timestamptz[])
         AS r(plan_id, base, new_version, head_hash, state, at)
), moved AS (
    UPDATE plans p SET version = r.new_version, head_hash = r.head_hash, updated_at = r.at,
        state = COALESCE(r.state::json, p.state),
        state_version = CASE WHEN r.state IS NULL THEN p.state_version ELSE r.new_version END
    FROM req r
    WHERE p.plan_id = r.plan_id AND p.version = r.base
    RETURNING p.plan_id, r.at
), added AS (
    INSERT INTO events (plan_id, version, type, schema_version, data, actor, command_id,
                        command_first, correlation_id, recorded_at, audience, data_digest, hash)
    SELECT e.plan_id, e.version, e.type, e.schema_version, e.data::json, e.actor, e.command_id,
           e.command_first, e.correlation_id, m.at, e.audience, e.digest, e.hash
    FROM unnest($7::text[], $8::int[], $9::text[], $10::smallint[], $11::text[], $12::text[],
                $13::text[], $14::bool[], $15::text[], $16::text[], $17::text[], $18::text[])
         WITH ORDINALITY AS e(plan_id, version, type, schema_version, data, actor, command_id,
                              command_first, correlation_id, audience, digest, hash, n)
    JOIN moved m ON m.plan_id = e.plan_id
    ORDER BY e.n
    RETURNING plan_id, position, version
)
SELECT r.plan_id,
       EXISTS (SELECT 1 FROM moved m WHERE m.plan_id = r.plan_id) AS moved,
       (SELECT array_agg(a.position ORDER BY a.version) FROM added a
         WHERE a.plan_id = r.plan_id) AS positions,
       (SELECT p.version FROM plans p WHERE p.plan_id = r.plan_id) AS current_version
FROM req r
"""


def _event_arrays(
    pairs: Sequence[tuple[str, NewEvent]], firsts: set[tuple[str, int]]
) -> list[list[Any]]:
    """The events' columns as the append statements' unnest() takes them; `firsts` are the
    (plan, version) of each command's first event (flagged `command_first`)."""
    return [
        [e.version for _, e in pairs],
        [e.type for _, e in pairs],
        [e.schema_version for _, e in pairs],
        [e.data for _, e in pairs],
        [e.actor for _, e in pairs],
        [e.command_id for _, e in pairs],
        [e.command_id is not None and (p, e.version) in firsts for p, e in pairs],
        [e.correlation_id for _, e in pairs],
        [e.audience for _, e in pairs],
        [e.data_digest for _, e in pairs],
        [e.hash for _, e in pairs],
    ]


@contextlib.asynccontextmanager
async def _command_ids_once() -> AsyncIterator[None]:
    """A repeated command id aborts an append statement: say so as DuplicateCommand."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "events_command_once":
            raise DuplicateCommand(str(exc)) from exc
        raise


class AppendRequest(msgspec.Struct, frozen=True):
    """One plan's batch for `Store.append_many` (the arguments of `Store.append`)."""

    plan_id: str
    base_version: int
    head_hash: str
    state: str | None
    recorded_at: datetime
    commands: Sequence[NewCommand]
    events: Sequence[NewEvent]


_MAX_VERSION = 2_147_483_647  # events.version is an integer


class Store:
    """The event store over an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def load_plan(self, plan_id: str) -> PlanRow | None:
        row = await self.pool.fetchrow(
            "SELECT plan_id, version, head_hash, state::text AS state, state_version, updated_at"
            " FROM plans WHERE plan_id = $1",
            plan_id,
        )
        if row is None:
            return None
        return PlanRow(
            row["plan_id"],
            row["version"],
            row["head_hash"],
            row["state"],
            row["state_version"],
            row["updated_at"],
        )

    async def append(
        self,
        plan_id: str,
        base_version: int,
        head_hash: str,
        state: str | None,
        recorded_at: datetime,
        commands: Sequence[NewCommand],
        events: Sequence[NewEvent],
    ) -> Appended | Stale:
        """Append `events` on top of `base_version` in one transaction, or say it is stale.

        `state` (the fold at the new version) may be None: the stored state then stays at
        its older version and readers fold the events after it.

        Raises DuplicateCommand when a command id was recorded before (nothing is written).
        """
        new_version = events[-1].version if events else base_version
        firsts = {(plan_id, c.first_version) for c in commands}
        args: list[Any] = [
            plan_id,
            base_version,
            new_version,
            head_hash,
            state,
            recorded_at,
            *_event_arrays([(plan_id, e) for e in events], firsts),
        ]
        sql = _APPEND_NEW if base_version == 0 else _APPEND_EXISTING
        async with _command_ids_once():
            row = await self.pool.fetchrow(sql, *args)
        assert row is not None
        if row["moved"] == 0:
            return Stale(row["current_version"] or 0)
        return Appended(list(row["positions"] or []))

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[Appended | Stale]:
        """`append` for several existing plans (distinct ids) in one statement and commit.

        Raises DuplicateCommand when any command id was recorded before, and
        asyncpg.DeadlockDetectedError when another writer locked the same plans in another
        order: nothing is written then, and the caller appends each plan on its own."""
        reqs = sorted(requests, key=lambda r: r.plan_id)
        firsts = {(r.plan_id, c.first_version) for r in reqs for c in r.commands}
        pairs = [(r.plan_id, e) for r in reqs for e in r.events]
        args: list[Any] = [
            [r.plan_id for r in reqs],
            [r.base_version for r in reqs],
            [r.events[-1].version if r.events else r.base_version for r in reqs],
            [r.head_hash for r in reqs],
            [r.state for r in reqs],
            [r.recorded_at for r in reqs],
            [plan_id for plan_id, _ in pairs],
            *_event_arrays(pairs, firsts),
        ]
        async with _command_ids_once():
            rows = await self.pool.fetch(_APPEND_MANY, *args)
        by_plan = {r["plan_id"]: r for r in rows}
        results: list[Appended | Stale] = []
        for req in requests:
            row = by_plan[req.plan_id]
            if not row["moved"]:
                results.append(Stale(row["current_version"] or 0))
            else:
                results.append(Appended(list(row["positions"] or [])))
        return results

    async def command_results(
        self, plan_id: str, command_ids: Sequence[str]
    ) -> dict[str, CommandResult]:
        # only on the retry path: a command's events are contiguous and share its id
        rows = await self.pool.fetch(
            "SELECT command_id, min(version) AS first_version, max(version) AS version"
            " FROM events WHERE plan_id = $1 AND command_id = ANY($2::text[])"
            " GROUP BY command_id",
            plan_id,
            list(command_ids),
        )
        return {
            r["command_id"]: CommandResult(r["command_id"], r["first_version"], r["version"])
            for r in rows
        }

    async def read_stream(
        self,
        plan_id: str,
        *,
        after: int = 0,
        upto: int | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """A plan's events with after < version <= upto, in version order.

        Per-plan reads need no global horizon: versions are contiguous and each batch commits
        atomically, so a reader never sees version v+1 without v.
        """
        rows = await self.pool.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM events"
            " WHERE plan_id = $1 AND version > $2 AND version <= $3 ORDER BY version LIMIT $4",
            plan_id,
            after,
            _MAX_VERSION if upto is None else upto,  # no "$3 IS NULL OR": keeps one plan
            limit,
        )
        return [_event(r) for r in rows]

    async def version_at(self, plan_id: str, at: datetime) -> int:
        """The plan's version as of time `at` (0 if it did not exist yet)."""
        v = await self.pool.fetchval(
            "SELECT max(version) FROM events WHERE plan_id = $1 AND recorded_at <= $2",
            plan_id,
            at,
        )
        return int(v or 0)

    async def read_log(
        self,
        after: LogCursor = LOG_START,
        limit: int = 1000,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> list[StoredEvent]:
        """The global log after `after`, gap-free for readers.

        Positions are taken at insert but become visible at commit, in any order. So a reader
        takes only events whose transaction is older than every transaction still running
        (pg_snapshot_xmin): that prefix can no longer change. It orders and checkpoints by
        (transaction_id, position). A long-running writing transaction holds readers back,
        which is why writers are kept short and idle_in_transaction_session_timeout is set.
        `conn`: read on this connection instead of the pool (the hub's follower has its own).
        """
        rows = await (conn or self.pool).fetch(
            f"SELECT {_EVENT_COLUMNS} FROM events"
            " WHERE (transaction_id, position) > ($1::text::xid8, $2::bigint)"
            "   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY events.transaction_id, events.position LIMIT $3",
            str(after[0]),
            after[1],
            limit,
        )
        return [_event(r) for r in rows]

    async def log_backlog(self, after: LogCursor, limit: int) -> tuple[int, datetime | None]:
        """How many events a log reader at `after` has yet to read (at most `limit`), and
        when the oldest of them was recorded: projection lag, without reading the events."""
        row = await self.pool.fetchrow(
            "SELECT count(*) AS n, min(recorded_at) AS oldest FROM ("
            " SELECT recorded_at FROM events"
            " WHERE (transaction_id, position) > ($1::text::xid8, $2::bigint)"
            "   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY events.transaction_id, events.position LIMIT $3) AS behind",
            str(after[0]),
            after[1],
            limit,
        )
        assert row is not None
        return int(row["n"]), row["oldest"]

    async def log_head(self) -> LogCursor:
        """The cursor of the last event a log reader can see now."""
        row = await self.pool.fetchrow(
            "SELECT transaction_id::text AS transaction_id, position FROM events"
            " WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY events.transaction_id DESC, events.position DESC LIMIT 1"
        )
        return LOG_START if row is None else (int(row["transaction_id"]), row["position"])

    async def plan_ids(self) -> list[str]:
        return [
            r["plan_id"]
            for r in await self.pool.fetch("SELECT plan_id FROM plans ORDER BY plan_id")
        ]

    # -- replication (server/replica.py) ---------------------------------------------------

    async def plan_version(self, plan_id: str) -> int:
        """The plan's last version here (0: absent); cheap enough to poll."""
        v = await self.pool.fetchval("SELECT version FROM plans WHERE plan_id = $1", plan_id)
        return int(v or 0)

    async def wal_flushed(self) -> int:
        """On the primary: the WAL position flushed so far (what a streaming replica can
        receive), in bytes. A commit that returned has its commit record below it."""
        v = await self.pool.fetchval("SELECT (pg_current_wal_flush_lsn() - '0/0')::bigint")
        return int(v)

    async def wal_replayed(self) -> int | None:
        """On a standby: the WAL position replayed so far, in bytes; None if not in recovery
        (pg_last_wal_replay_lsn stays set on a promoted server, so recovery is checked)."""
        v = await self.pool.fetchval(
            "SELECT CASE WHEN pg_is_in_recovery()"
            " THEN (pg_last_wal_replay_lsn() - '0/0')::bigint END"
        )
        return None if v is None else int(v)

    # -- reads for auditors --------------------------------------------------------------

    async def log_count(self, upto: LogCursor | None = None) -> int:
        """How many events a log reader can see now, up to `upto` (for progress lines)."""
        n = await self.pool.fetchval(
            "SELECT count(*) FROM events"
            " WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
            "   AND ($1::text IS NULL OR (transaction_id, position) <= ($1::text::xid8, $2::bigint))",
            None if upto is None else str(upto[0]),
            0 if upto is None else upto[1],
        )
        return int(n or 0)

    async def events_of_type(self, plan_id: str, types: Sequence[str]) -> list[StoredEvent]:
        rows = await self.pool.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE plan_id = $1 AND type = ANY($2::text[])"
            " ORDER BY version",
            plan_id,
            list(types),
        )
        return [_event(r) for r in rows]

    async def read_audit(self, plan_id: str, query: AuditQuery) -> list[tuple[int, str]]:
        """(version, row JSON) of one plan's audit rows in version order; see AuditQuery."""
        rows = await self.pool.fetch(
            _READ_AUDIT,
            plan_id,
            query.after,
            query.upto,
            query.actor,
            query.item,
            list(query.types) if query.types else None,
            query.since,
            query.until,
            query.side,
            query.limit,
        )
        return [(r["version"], r["row"]) for r in rows]

    async def audit_version(self, plan_id: str) -> int:
        """The last version of `plan_id` the audit trail has a row for (0: none yet)."""
        v = await self.pool.fetchval(
            "SELECT max(version) FROM audit_trail WHERE plan_id = $1", plan_id
        )
        return int(v or 0)

    # -- snapshots (caches of the fold; see projections/snapshots.py) ----------------------

    async def nearest_snapshot(
        self, plan_id: str, version: int, schema: str
    ) -> tuple[int, str] | None:
        """(version, state JSON) of the latest usable snapshot at or below `version`.

        Usable: encoded with this `schema` fingerprint, and bound to this chain (its hash is
        the stored event's hash at its version): a snapshot of a replaced or foreign stream
        is never used."""
        row = await self.pool.fetchrow(
            "SELECT s.version, s.state::text AS state FROM snapshots s"
            " JOIN events e ON e.plan_id = s.plan_id AND e.version = s.version AND e.hash = s.hash"
            " WHERE s.plan_id = $1 AND s.schema = $2 AND s.version <= $3"
            " ORDER BY s.version DESC LIMIT 1",
            plan_id,
            schema,
            version,
        )
        return None if row is None else (row["version"], row["state"])

    async def history(
        self, plan_id: str, upto: int, schema: str | None
    ) -> tuple[tuple[int, str] | None, list[Fact]]:
        """What the fold at version `upto` needs, in one round trip: the latest usable snapshot
        at or below it (as `nearest_snapshot`; none when `schema` is None) and the events
        after that snapshot, as light `Fact` rows in version order."""
        rows = await self.pool.fetch(_HISTORY, plan_id, schema, upto)
        snapshot = None
        facts: list[Fact] = []
        for r in rows:
            if r["state"] is not None:
                snapshot = (r["version"], r["state"])
            else:
                facts.append(
                    (r["version"], r["type"], r["schema_version"], r["data"], r["actor"], r["at"])
                )
        return snapshot, facts

    async def snapshots_of(self, plan_id: str, schema: str) -> list[tuple[int, str, str]]:
        """(version, hash, state JSON) of every snapshot of `plan_id` with `schema`."""
        rows = await self.pool.fetch(
            "SELECT version, hash, state::text AS state FROM snapshots"
            " WHERE plan_id = $1 AND schema = $2 ORDER BY version",
            plan_id,
            schema,
        )
        return [(r["version"], r["hash"], r["state"]) for r in rows]

    async def delete_snapshots(self, plan_id: str, schema: str, versions: Sequence[int]) -> None:
        await self.pool.execute(
            "DELETE FROM snapshots WHERE plan_id = $1 AND schema = $2 AND version = ANY($3::int[])",
            plan_id,
            schema,
            list(versions),
        )

    # -- asynchronous projections --------------------------------------------------------

    def audit_table(self, name: str = "audit") -> ProjectionTable[AuditRow]:
        """The audit trail read model (table audit_trail) under checkpoint `name`."""
        return ProjectionTable(
            self.pool,
            name,
            insert=_INSERT_AUDIT,
            args=_audit_args,
            clear=[("DELETE FROM audit_trail", ())],
        )

    def analytics_table(self, name: str = "analytics") -> ProjectionTable[PlanFigures]:
        """The portfolio analytics read model (table analytics_plans) under checkpoint `name`."""
        return ProjectionTable(
            self.pool,
            name,
            insert=_UPSERT_ANALYTICS,
            args=_analytics_args,
            clear=[("DELETE FROM analytics_plans", ())],
        )

    async def read_analytics(
        self, seller_org: str, domains: frozenset[str] | None = None
    ) -> list[PlanFigures]:
        """The analytics rows of one seller organisation's plans; with `domains` (a verified
        organisation) only plans with a seller-side member at one of them."""
        if domains is None:
            rows = await self.pool.fetch(
                "SELECT figures::text AS figures FROM analytics_plans WHERE seller_org = $1",
                seller_org,
            )
        else:
            rows = await self.pool.fetch(
                "SELECT figures::text AS figures FROM analytics_plans WHERE seller_org = $1"
                " AND EXISTS (SELECT 1 FROM unnest(seller_members) AS m(email)"
                "             WHERE lower(split_part(m.email, '@', 2)) = ANY($2::text[]))",
                seller_org,
                sorted(domains),
            )
        return [_figures_decoder.decode(r["figures"]) for r in rows]

    async def is_seller_member(self, seller_org: str, email: str) -> bool:
        """Whether `email` is a seller-side member of at least one plan of `seller_org`."""
        found = await self.pool.fetchval(
            "SELECT 1 FROM analytics_plans WHERE seller_org = $1 AND $2 = ANY(seller_members)"
            " LIMIT 1",
            seller_org,
            email,
        )
        return found is not None

    def snapshot_table(self, schema: str) -> ProjectionTable[SnapshotRow]:
        """The snapshots of one state fingerprint; its checkpoint is named after it.

        A new fingerprint starts from position 0 and leaves the old fingerprint's snapshots
        alone (an instance of the old code may still run them, or come back after a
        rollback); a rebuild also drops snapshots whose fingerprint has no checkpoint."""
        name = checkpoint_name(schema)
        orphans = (
            "DELETE FROM snapshots s WHERE s.schema = $1 OR NOT EXISTS"
            " (SELECT 1 FROM checkpoints c WHERE c.name = 'snapshots:' || s.schema)"
        )
        return ProjectionTable(
            self.pool,
            name,
            insert=_INSERT_SNAPSHOTS,
            args=_snapshot_args,
            clear=[(orphans, (schema,))],
        )


# (version, type, schema_version, data, actor, recorded_at): what a fold reads of an event
Fact = tuple[int, str, int, str, str, datetime]

# The snapshot comes back as one more row (with `state`), ordered before the events after it.
# The bounds are plain index conditions (no `$n IS NULL OR ...`), so a cached generic plan
# still scans only the versions it returns.
_HISTORY = """
WITH snap AS (
    SELECT s.version, s.state FROM snapshots s
    JOIN events e ON e.plan_id = s.plan_id AND e.version = s.version AND e.hash = s.hash
    WHERE s.plan_id = $1 AND s.schema = $2 AND s.version <= $3
    ORDER BY s.version DESC LIMIT 1
)
SELECT version, type, schema_version, data::text AS data, actor, recorded_at AS at,
       NULL::text AS state
FROM events
WHERE plan_id = $1 AND version > COALESCE((SELECT version FROM snap), 0) AND version <= $3
UNION ALL
SELECT version, NULL, NULL, NULL, NULL, NULL, state::text FROM snap
ORDER BY version
"""


class AuditQuery(msgspec.Struct, frozen=True):
    """Filters of the audit trail. None means "any"."""

    after: int = 0  # versions after this one (pagination)
    upto: int | None = None  # up to this version
    actor: str | None = None  # email or name, any case
    item: str | None = None  # an item id the event is about
    types: tuple[str, ...] = ()  # event types
    since: datetime | None = None  # recorded at or after
    until: datetime | None = None  # recorded at or before
    side: str | None = None  # the reader's side: the other side's internal rows are left out
    limit: int = 100


_READ_AUDIT = """
SELECT version, row::text AS row FROM audit_trail
WHERE plan_id = $1 AND version > $2
  AND ($3::int IS NULL OR version <= $3)
  AND ($4::text IS NULL OR actor = lower($4) OR lower(actor_name) = lower($4))
  AND ($5::text IS NULL OR $5 = ANY(items))
  AND ($6::text[] IS NULL OR type = ANY($6))
  AND ($7::timestamptz IS NULL OR recorded_at >= $7)
  AND ($8::timestamptz IS NULL OR recorded_at <= $8)
  AND ($9::text IS NULL OR audience IS NULL OR audience = $9)
ORDER BY version
LIMIT $10
"""

# One statement per batch: the rows arrive as parallel arrays (items as a JSON array each,
# since unnest would flatten a 2-D array).
_INSERT_AUDIT = """
INSERT INTO audit_trail (plan_id, version, position, recorded_at, type, actor, actor_name,
                         items, audience, row)
SELECT r.plan_id, r.version, r.position, r.recorded_at, r.type, r.actor, r.actor_name,
       ARRAY(SELECT json_array_elements_text(r.items::json)), r.audience, r.row::json
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::text[])
     AS r(plan_id, version, position, recorded_at, type, actor, actor_name, items, audience, row)
"""

# Two writers may produce the same snapshot (the same fold): the first one stays.
_INSERT_SNAPSHOTS = """
INSERT INTO snapshots (plan_id, version, schema, hash, state)
SELECT r.plan_id, r.version, r.schema, r.hash, r.state::json
FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[])
     AS r(plan_id, version, schema, hash, state)
ON CONFLICT DO NOTHING
"""

# One row per plan: a batch carries each plan's latest figures once; a row never goes back
# to an older version.
_UPSERT_ANALYTICS = """
INSERT INTO analytics_plans (plan_id, version, seller_org, seller_members, figures)
SELECT r.plan_id, r.version, r.seller_org,
       ARRAY(SELECT json_array_elements_text(r.seller_members::json)), r.figures::json
FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[])
     AS r(plan_id, version, seller_org, seller_members, figures)
ON CONFLICT (plan_id) DO UPDATE
SET version = EXCLUDED.version, seller_org = EXCLUDED.seller_org,
    seller_members = EXCLUDED.seller_members, figures = EXCLUDED.figures
WHERE analytics_plans.version <= EXCLUDED.version
"""

_row_encoder = msgspec.json.Encoder()
_figures_decoder = msgspec.json.Decoder(PlanFigures)


def _audit_args(rows: Sequence[AuditRow]) -> list[Any]:
    return [
        [r.plan_id for r in rows],
        [r.version for r in rows],
        [r.position for r in rows],
        [r.at for r in rows],
        [r.type for r in rows],
        [r.actor for r in rows],
        [r.actor_name for r in rows],
        [_row_encoder.encode(r.items).decode() for r in rows],
        [r.audience for r in rows],
        [_row_encoder.encode(r).decode() for r in rows],
    ]


def _analytics_args(rows: Sequence[PlanFigures]) -> list[Any]:
    return [
        [r.plan_id for r in rows],
        [r.version for r in rows],
        [r.seller_org for r in rows],
        [_row_encoder.encode(r.seller_members).decode() for r in rows],
        [_row_encoder.encode(r).decode() for r in rows],
    ]


def _snapshot_args(rows: Sequence[SnapshotRow]) -> list[Any]:
    return [
        [r.plan_id for r in rows],
        [r.version for r in rows],
        [r.schema for r in rows],
        [r.hash for r in rows],
        [r.state for r in rows],
    ]


R = TypeVar("R")

_PROJECTION_LOCK = 0x70726F6A  # "proj": advisory lock class of projection leases


async def release_advisory_lock(
    conn: PoolConnectionProxy[asyncpg.Record], sql: str, *args: Any
) -> None:
    """Unlock a session lock on the way out of a lease, whatever state the connection is in.

    A connection the database dropped (a restart, a partition) took its locks with it, and
    asyncpg may already have detached it from its proxy: then there is nothing to do, and
    no error may replace the exception (or cancellation) that is ending the lease."""
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        if not conn.is_closed():
            await conn.execute(sql, *args)


class ProjectionLease:
    """Held while a session advisory lock on the projection's name is held."""

    def __init__(self, conn: PoolConnectionProxy[asyncpg.Record], held: bool) -> None:
        self._conn = conn
        self.held = held

    async def renew(self) -> None:
        """Raise when the connection holding the lock is gone (the lock went with it)."""
        await self._conn.fetchval("SELECT 1", timeout=5)


class ProjectionTable(Generic[R]):
    """A read model in one table with its checkpoint in `checkpoints`: see projections/runner.py.

    `commit` moves the checkpoint first (compare-and-set, which also row-locks it, so two
    writers of one read model serialise there), then writes the rows, in one transaction.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        name: str,
        *,
        insert: str,
        args: Callable[[Sequence[R]], list[Any]],
        clear: Sequence[tuple[str, tuple[Any, ...]]],
    ) -> None:
        self.pool = pool
        self.name = name
        self._insert = insert
        self._args = args
        self._clear = clear

    async def checkpoint(self) -> LogCursor:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING", self.name
            )
            row = await conn.fetchrow(
                "SELECT transaction_id::text AS transaction_id, position FROM checkpoints"
                " WHERE name = $1",
                self.name,
            )
        assert row is not None
        return (int(row["transaction_id"]), row["position"])

    async def commit(
        self,
        expected: LogCursor,
        cursor: LogCursor,
        rows: Sequence[R],
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            moved = await conn.fetchval(
                "UPDATE checkpoints SET transaction_id = $2::text::xid8, position = $3,"
                " updated_at = now()"
                " WHERE name = $1 AND (transaction_id, position) = ($4::text::xid8, $5::bigint)"
                " RETURNING 1",
                self.name,
                str(cursor[0]),
                cursor[1],
                str(expected[0]),
                expected[1],
            )
            if moved is None:
                return False  # nothing written: the transaction has no change
            if rows:
                await conn.execute(self._insert, *self._args(rows))
            if before_commit is not None:
                await before_commit()
        return True

    async def clear(self) -> None:
        await self.checkpoint()  # the row exists: lock it so a running commit serialises
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM checkpoints WHERE name = $1 FOR UPDATE", self.name)
            for sql, args in self._clear:
                await conn.execute(sql, *args)
            await conn.execute(
                "UPDATE checkpoints SET transaction_id = '0', position = 0, updated_at = now()"
                " WHERE name = $1",
                self.name,
            )

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[ProjectionLease]:
        """Try to become the one runner of this projection across instances."""
        async with self.pool.acquire() as conn:
            held = bool(
                await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))", _PROJECTION_LOCK, self.name
                )
            )
            try:
                yield ProjectionLease(conn, held)
            finally:
                if held:
                    await release_advisory_lock(
                        conn,
                        "SELECT pg_advisory_unlock($1, hashtext($2))",
                        _PROJECTION_LOCK,
                        self.name,
                    )
