"""The event store: all SQL of events, plans and commands lives here.

Verbs: `load_plan`, `append`, `read_stream`, `read_log`, `command_results`. Values are always
bound as parameters. A comment says why a query has its shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

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
        firsts = {c.first_version for c in commands}
        args: list[Any] = [
            plan_id,
            base_version,
            new_version,
            head_hash,
            state,
            recorded_at,
            [e.version for e in events],
            [e.type for e in events],
            [e.schema_version for e in events],
            [e.data for e in events],
            [e.actor for e in events],
            [e.command_id for e in events],
            [e.command_id is not None and e.version in firsts for e in events],
            [e.correlation_id for e in events],
            [e.audience for e in events],
            [e.data_digest for e in events],
            [e.hash for e in events],
        ]
        sql = _APPEND_NEW if base_version == 0 else _APPEND_EXISTING
        try:
            row = await self.pool.fetchrow(sql, *args)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "events_command_once":
                raise DuplicateCommand(str(exc)) from exc
            raise
        assert row is not None
        if row["moved"] == 0:
            return Stale(row["current_version"] or 0)
        return Appended(list(row["positions"] or []))

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
            " WHERE plan_id = $1 AND version > $2 AND ($3::int IS NULL OR version <= $3)"
            " ORDER BY version LIMIT $4",
            plan_id,
            after,
            upto,
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

    async def read_log(self, after: LogCursor = LOG_START, limit: int = 1000) -> list[StoredEvent]:
        """The global log after `after`, gap-free for readers.

        Positions are taken at insert but become visible at commit, in any order. So a reader
        takes only events whose transaction is older than every transaction still running
        (pg_snapshot_xmin): that prefix can no longer change. It orders and checkpoints by
        (transaction_id, position). A long-running writing transaction holds readers back,
        which is why writers are kept short and idle_in_transaction_session_timeout is set.
        """
        rows = await self.pool.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM events"
            " WHERE (transaction_id, position) > ($1::text::xid8, $2::bigint)"
            "   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY transaction_id, position LIMIT $3",
            str(after[0]),
            after[1],
            limit,
        )
        return [_event(r) for r in rows]

    async def log_head(self) -> LogCursor:
        """The cursor of the last event a log reader can see now."""
        row = await self.pool.fetchrow(
            "SELECT transaction_id::text AS transaction_id, position FROM events"
            " WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY transaction_id DESC, position DESC LIMIT 1"
        )
        return LOG_START if row is None else (int(row["transaction_id"]), row["position"])

    async def plan_ids(self) -> list[str]:
        return [
            r["plan_id"]
            for r in await self.pool.fetch("SELECT plan_id FROM plans ORDER BY plan_id")
        ]
