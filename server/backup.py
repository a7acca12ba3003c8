"""`mapstream backup` / `mapstream restore`: a logical, verifiable copy of the source of truth.

Why a logical export and not pg_dump: a dump must be restored by a client of the same major
version as the server (the embedded PostgreSQL is 18, a deployment may run 15), it carries
every derived table, and nothing in it can be checked without a database. A Mapstream backup
is gzipped JSON lines that any PostgreSQL 15+ takes back, and every plan's hash chain in it
can be recomputed, offline (`restore --check`) or on the way in.

What is in a backup, all read in ONE repeatable-read snapshot (so plan heads, events and
invites agree even while the server keeps appending):

- every event, every column but `transaction_id` (a transaction id means nothing in another
  cluster: restored events get the restoring transaction's, so the global log's order becomes
  position order, which per plan is version order);
- the rows of every other table that is not derived: today `invites` and `templates`; a table
  this module does not know is copied too (said on stderr) rather than silently lost;
- per plan, the version and head hash its `plans` row recorded, so an event cut off the end
  of a chain is noticed;
- for each follower of the global log that is not a rebuilt projection (the webhook
  outbox: its checkpoint), the position up to which it had applied every event.

Transaction ids mean nothing in another cluster: restored events get the restoring
transaction's (so the global log's order becomes position order, which per plan is version
order), and so do the xid8 log cursors of copied rows (a delivery's) and of follower
checkpoints, each keeping its position. A follower may thus see again an event it had
applied out of position order just before the backup: at least once, never lost. For the
same reason a webhook subscription's `created_snapshot` (a pg_snapshot of the old cluster,
whose xids may be far above this one's: every new event would look already seen) becomes
`X:X:`, X the restoring transaction: it owes the restored events the outbox had not applied
yet (those it had are behind its checkpoint, and a delivery row already written is not
written again) and every later transaction's.

What is not: the derived tables (`plans` state, `audit_trail`, `snapshots`,
`analytics_plans`, projection checkpoints), rebuilt from the events on restore, and
`presence`, which is ephemeral.

File: line 1 a header (format, counts), then `row` lines per copied table, then per plan a
`plan` line and its `event` lines in version order, then an `end` line with the counts again
and the SHA-256 of every line before it. A restore checks all of it, recomputes each chain,
re-derives each event's audience (an internal item must stay internal: the audience is not
covered by the hash), folds each plan, and writes everything in one transaction into an
EMPTY database only; any doubt rolls it all back. Then it re-verifies every chain from the
database and rebuilds the projections from position 0.

The SQL lives here rather than in server/store.py: it reads and writes whole tables, below
the store's verbs, and no server path uses it.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import os
import sys
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import msgspec

from domain import chain
from domain.base import Recorded
from domain.decider import decode_event, evolve
from domain.errors import Malformed, MapstreamError
from domain.model import Plan
from domain.visibility import audience
from server.database import apply_schema, resolve_database_url, wait_for_database
from server.settings import Settings, load_settings

FORMAT = "mapstream-backup/1"
PROGRESS_EVERY = 10_000
_CHUNK = 2000  # rows per COPY / INSERT round trip

# Rebuilt from the events on restore (or ephemeral): never copied.
DERIVED = frozenset({"plans", "audit_trail", "snapshots", "analytics_plans", "checkpoints"})
EPHEMERAL = frozenset({"presence"})
# not derivable from the events: who was invited, saved skeletons, webhook subscriptions and
# their delivery history (a delivered event is not delivered again)
KNOWN_SOURCE = frozenset({"invites", "templates", "webhook_subscriptions", "webhook_deliveries"})

# Text copies of pg_current_snapshot() (`xmin:xmax:xip,...`) of the old cluster; restored as
# `X:X:`, X the restoring transaction (see the module docstring).
_SNAPSHOT_COLUMNS = frozenset({("webhook_subscriptions", "created_snapshot")})

# Checkpoints of the projections a restore rebuilds; any other checkpoint is a follower with
# effects outside the database (webhooks) and is carried over (see `Header.followers`).
_REBUILT_CHECKPOINTS = ("audit", "analytics")
_REBUILT_PREFIXES = ("snapshots:",)

# Every column of `events` but transaction_id, in this order in the file and in the COPY.
_EVENT_COLUMNS = (
    "plan_id",
    "version",
    "position",
    "type",
    "schema_version",
    "data",
    "actor",
    "command_id",
    "command_first",
    "correlation_id",
    "recorded_at",
    "audience",
    "data_digest",
    "hash",
)
_PLAN_COLUMNS = ("plan_id", "version", "head_hash", "state", "state_version")
_PLAN_COLUMNS_ALL = (*_PLAN_COLUMNS, "created_at", "updated_at")


class CorruptBackup(MapstreamError):
    """The file is damaged, truncated or altered: nothing of it is restored."""

    code = "backup_corrupt"


class TargetNotEmpty(MapstreamError):
    """A restore goes into an empty database only; this one holds data."""

    code = "not_empty"


# -- the file's lines --------------------------------------------------------------------


class Line(msgspec.Struct, frozen=True, tag_field="t"):
    pass


class Header(Line, frozen=True, tag="header"):
    format: str
    created_at: datetime
    postgres: str
    events: int
    plans: int
    tables: dict[str, int]  # copied table -> rows
    # follower checkpoint -> every event at or below this position had been applied
    followers: dict[str, int] = {}


class Row(Line, frozen=True, tag="row"):
    table: str
    row: msgspec.Raw  # row_to_json of the row


class PlanHead(Line, frozen=True, tag="plan"):
    """What the plan's row recorded at its last append: the chain must end exactly here."""

    plan_id: str
    version: int
    head_hash: str


class EventLine(Line, frozen=True, tag="event"):
    plan_id: str
    version: int
    position: int
    type: str
    schema_version: int
    data: str  # the exact stored JSON text: it is hashed byte for byte
    actor: str
    command_id: str | None
    command_first: bool
    correlation_id: str | None
    recorded_at: datetime
    audience: str | None
    data_digest: str
    hash: str


class End(Line, frozen=True, tag="end"):
    events: int
    plans: int
    tables: dict[str, int]
    sha256: str  # of every line before this one, newlines included


_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(Header | Row | PlanHead | EventLine | End)
_keys_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Progress:
    """`backup: 10,000/52,345 events (19%)`, one line per `every` events, and a last one."""

    def __init__(self, label: str, total: int, every: int, out: TextIO) -> None:
        self.label, self.total, self.every, self.out = label, total, max(every, 1), out
        self.done = 0
        self.started = time.monotonic()

    def add(self, n: int = 1) -> None:
        before = self.done // self.every
        self.done += n
        if self.done // self.every != before:
            self.line()

    def line(self, suffix: str = "") -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        print(
            f"{self.label}: {self.done:,}/{self.total:,} events ({pct:.0f}%), "
            f"{rate:,.0f} events/s{suffix}",
            file=self.out,
            flush=True,
        )


async def _connect(settings: Settings) -> tuple[asyncpg.Connection, Any]:
    """A connection to the configured database (DATABASE_URL or the embedded one)."""
    url, embedded = await asyncio.to_thread(
        resolve_database_url, settings.database_url, settings.data_dir
    )
    await wait_for_database(url)
    return await asyncpg.connect(url), embedded


async def _tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
    )
    return [r["tablename"] for r in rows]


def _is_rebuilt(checkpoint: str) -> bool:
    return checkpoint in _REBUILT_CHECKPOINTS or checkpoint.startswith(_REBUILT_PREFIXES)


# -- backup ------------------------------------------------------------------------------


async def backup(
    settings: Settings,
    path: Path,
    *,
    out: TextIO = sys.stderr,
    every: int = PROGRESS_EVERY,
    force: bool = False,
) -> Header:
    """Write the store to `path` from one consistent snapshot; returns the header written.

    Raises Malformed for a bad target path or a database without Mapstream's schema."""
    if not force and await asyncio.to_thread(path.exists):
        raise Malformed(f"{path} exists: choose another file or pass --force")
    partial = path.with_name(path.name + ".partial")
    conn, _embedded = await _connect(settings)
    try:
        # One snapshot for everything: plan heads, events and invites as of one instant.
        # Read only, so it holds no transaction id and never holds the global log back.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            header, copied = await _header(conn, out)
            progress = _Progress("backup", header.events, every, out)
            try:
                with gzip.open(partial, "wb", compresslevel=6) as f:
                    digest = hashlib.sha256()

                    def write(line: Line) -> None:
                        raw = _encoder.encode(line) + b"\n"
                        digest.update(raw)
                        f.write(raw)

                    write(header)
                    for table in copied:
                        if header.tables[table]:
                            print(f"backup: {header.tables[table]:,} rows of {table}", file=out)
                        async for r in conn.cursor(
                            f"SELECT row_to_json(t)::text AS r FROM {_ident(table)} t",
                            prefetch=_CHUNK,
                        ):
                            write(Row(table, msgspec.Raw(r["r"].encode())))
                    plans = await _write_events(conn, write, progress)
                    if plans != header.plans:
                        raise CorruptBackup(
                            f"the database has {header.plans} plan rows but events of "
                            f"{plans} plans: run `mapstream verify`"
                        )
                    f.write(
                        _encoder.encode(
                            End(header.events, header.plans, header.tables, digest.hexdigest())
                        )
                        + b"\n"
                    )
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        os.replace(partial, path)
        progress.line(f", {header.plans:,} plans: written to {path}")
        return header
    finally:
        await conn.close()


async def _header(conn: asyncpg.Connection, out: TextIO) -> tuple[Header, list[str]]:
    tables = await _tables(conn)
    if "events" not in tables:
        raise Malformed("this database has no Mapstream schema (no `events` table)")
    columns = {
        r["column_name"]
        for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'events'"
        )
    }
    unknown = columns - set(_EVENT_COLUMNS) - {"transaction_id"}
    if unknown:
        # a column added to events must be carried explicitly: refuse rather than drop it
        raise Malformed(
            f"events has columns this backup does not know: {', '.join(sorted(unknown))}"
        )
    copied = [t for t in tables if t not in DERIVED | EPHEMERAL | {"events"}]
    for t in copied:
        if t not in KNOWN_SOURCE:
            print(f"backup: also copying table {t} (not known to be derived)", file=out)
    counts = {t: int(await conn.fetchval(f"SELECT count(*) FROM {_ident(t)}")) for t in copied}
    # the first event a follower has not applied bounds what it surely has: log order is
    # (transaction_id, position), a restored log's is position alone
    followers = {
        r["name"]: int(r["upto"])
        for r in await conn.fetch(
            "SELECT c.name, COALESCE((SELECT min(e.position) - 1 FROM events e"
            "   WHERE (e.transaction_id, e.position) > (c.transaction_id, c.position)),"
            " (SELECT max(position) FROM events), 0) AS upto FROM checkpoints c ORDER BY c.name"
        )
        if not _is_rebuilt(r["name"])
    }
    header = Header(
        format=FORMAT,
        created_at=datetime.now(UTC),
        postgres=str(await conn.fetchval("SHOW server_version")),
        events=int(await conn.fetchval("SELECT count(*) FROM events")),
        plans=int(await conn.fetchval("SELECT count(*) FROM plans")),
        tables=counts,
        followers=followers,
    )
    return header, copied


async def _write_events(conn: asyncpg.Connection, write: Any, progress: _Progress) -> int:
    """Each plan's head line, then its events in version order. Returns the plans written."""
    heads = {
        r["plan_id"]: (r["version"], r["head_hash"])
        for r in await conn.fetch("SELECT plan_id, version, head_hash FROM plans")
    }
    current: str | None = None
    plans = 0
    # data as text: the exact stored bytes, which are hashed
    columns = ", ".join("data::text AS data" if c == "data" else c for c in _EVENT_COLUMNS)
    sql = f"SELECT {columns} FROM events ORDER BY plan_id, version"  # the primary key's order
    async for r in conn.cursor(sql, prefetch=_CHUNK):
        if r["plan_id"] != current:
            current = r["plan_id"]
            head = heads.get(current)
            if head is None:
                raise CorruptBackup(
                    f"plan {current!r} has events but no plan row: run `mapstream verify`"
                )
            write(PlanHead(current, head[0], head[1]))
            plans += 1
        write(EventLine(**dict(r)))
        progress.add()
    return plans


# -- reading a backup (restore and --check) -------------------------------------------------


class PlanRestore(msgspec.Struct, frozen=True):
    """One plan, its chain verified and its events folded."""

    head: PlanHead
    events: list[EventLine]
    state: Plan


class RowsRestore(msgspec.Struct, frozen=True):
    table: str
    rows: list[msgspec.Raw]


def read_backup(path: Path, progress: _Progress | None = None) -> Iterator[Any]:
    """Yield the header, then `RowsRestore` chunks, then one `PlanRestore` per verified plan.

    Raises Malformed (not a backup) or CorruptBackup (damaged, truncated, altered) at the
    first problem; the caller writes inside one transaction, so nothing of it survives."""
    try:
        with gzip.open(path, "rb") as f:
            yield from _read_lines(f, progress)
    except gzip.BadGzipFile as exc:
        if "Not a gzipped file" in str(exc):
            raise Malformed(f"{path} is not a Mapstream backup (not gzip)") from exc
        raise CorruptBackup(f"{path} is damaged: {exc}") from exc  # CRC or length
    except OSError as exc:
        raise Malformed(f"{path}: {exc.strerror or exc}") from exc
    except (EOFError, zlib.error) as exc:
        raise CorruptBackup(f"{path} is cut short or damaged ({exc})") from exc


def _read_lines(f: Any, progress: _Progress | None) -> Iterator[Any]:
    digest = hashlib.sha256()
    header: Header | None = None
    events = plans = 0
    rows: dict[str, int] = {}
    chunk: RowsRestore | None = None
    plan: PlanHead | None = None
    plan_events: list[EventLine] = []
    end: End | None = None
    for n, raw in enumerate(f, 1):
        if end is not None:
            raise CorruptBackup(f"line {n}: data after the end line")
        try:
            line = _line_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if header is None:
                raise Malformed(f"not a Mapstream backup ({exc})") from exc
            raise CorruptBackup(f"line {n} is damaged: {exc}") from exc
        if header is None:
            if not isinstance(line, Header) or line.format != FORMAT:
                raise Malformed(f"not a Mapstream backup: line 1 is not a {FORMAT} header")
            header = line
            yield header
            if progress is not None:
                progress.total = header.events
        elif isinstance(line, Row):
            if plans:
                raise CorruptBackup(f"line {n}: a table row after the events")
            if chunk is not None and (chunk.table != line.table or len(chunk.rows) >= _CHUNK):
                yield chunk
                chunk = None
            if chunk is None:
                chunk = RowsRestore(line.table, [])
            chunk.rows.append(line.row)
            rows[line.table] = rows.get(line.table, 0) + 1
        elif isinstance(line, PlanHead):
            if chunk is not None:
                yield chunk
                chunk = None
            if plan is not None:
                yield _verified(plan, plan_events)
            plan, plan_events = line, []
            plans += 1
        elif isinstance(line, EventLine):
            if plan is None or line.plan_id != plan.plan_id:
                raise CorruptBackup(f"line {n}: an event of plan {line.plan_id!r} out of place")
            plan_events.append(line)
            events += 1
            if progress is not None:
                progress.add()
        elif isinstance(line, End):
            end = line
            if end.sha256 != digest.hexdigest():
                raise CorruptBackup(
                    "the file's checksum does not match its content: it was damaged or edited"
                )
            continue
        else:  # another header
            raise CorruptBackup(f"line {n}: a second header")
        digest.update(raw)
    if header is None:
        raise Malformed("not a Mapstream backup: the file is empty")
    if end is None:
        raise CorruptBackup("the backup is incomplete: it has no end line (cut short?)")
    if chunk is not None:
        yield chunk
    if plan is not None:
        yield _verified(plan, plan_events)
    found = (events, plans, rows)
    for claimed in (
        (header.events, header.plans, header.tables),
        (end.events, end.plans, end.tables),
    ):
        claimed = (claimed[0], claimed[1], {t: n for t, n in claimed[2].items() if n})
        if claimed != found:
            raise CorruptBackup(
                f"the backup says {claimed[0]} events of {claimed[1]} plans and rows "
                f"{claimed[2]}, but holds {found[0]} events of {found[1]} plans and rows {found[2]}"
            )


def _verified(head: PlanHead, events: list[EventLine]) -> PlanRestore:
    """Recompute the chain, check it ends at the recorded head, fold it, re-derive audiences."""
    where = f"plan {head.plan_id!r}"
    verdict = chain.verify(chain.Link.of(head.plan_id, e) for e in events)
    if not verdict.ok:
        raise CorruptBackup(
            f"{where}: the hash chain breaks at version {verdict.broken_at} ({verdict.reason})",
            plan_id=head.plan_id,
            broken_at=verdict.broken_at,
        )
    if (verdict.version, verdict.head_hash) != (head.version, head.head_hash):
        raise CorruptBackup(
            f"{where}: the events end at version {verdict.version}, but the plan recorded "
            f"version {head.version} with head {head.head_hash}",
            plan_id=head.plan_id,
            broken_at=verdict.version + 1,
        )
    state = Plan(id=head.plan_id)
    for e in events:
        try:
            event = decode_event(e.type, e.schema_version, e.data)
        except (MapstreamError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CorruptBackup(
                f"{where} version {e.version}: this Mapstream cannot read the event ({exc})",
                plan_id=head.plan_id,
            ) from exc
        # the audience is not hashed: derive it again, so an internal item stays internal
        if audience(state, event) != e.audience:
            raise CorruptBackup(
                f"{where} version {e.version}: the event's audience {e.audience!r} is not "
                f"the one its content implies ({audience(state, event)!r})",
                plan_id=head.plan_id,
            )
        state = evolve(state, Recorded(e.version, e.actor, e.recorded_at, event))
    return PlanRestore(head, events, state)


def check(path: Path, *, out: TextIO = sys.stderr, every: int = PROGRESS_EVERY) -> Header:
    """`mapstream restore --check FILE`: verify a backup offline, without a database."""
    progress = _Progress("check", 0, every, out)
    header: Header | None = None
    for item in read_backup(path, progress):
        if isinstance(item, Header):
            header = item
    assert header is not None
    progress.line(f", {header.plans:,} plans: every chain verifies")
    return header


# -- restore -----------------------------------------------------------------------------


async def restore(
    settings: Settings, path: Path, *, out: TextIO = sys.stderr, every: int = PROGRESS_EVERY
) -> Header:
    """Restore `path` into the configured database, which must be empty; then re-verify
    every chain from the database and rebuild every projection.

    Raises Malformed, CorruptBackup or TargetNotEmpty before anything is committed."""
    if not await asyncio.to_thread(path.is_file):
        raise Malformed(f"{path}: no such file")
    conn, _embedded = await _connect(settings)
    try:
        progress = _Progress("restore", 0, every, out)
        async with conn.transaction():
            # the schema too, so a refused restore leaves even a blank database blank
            await apply_schema(conn)
            # appenders (a server started by mistake) wait until this commits or rolls back
            await conn.execute("LOCK TABLE events, plans IN SHARE ROW EXCLUSIVE MODE")
            await _require_empty(conn)
            header = await _write(conn, read_backup(path, progress), progress)
        progress.line(f", {header.plans:,} plans: verified and committed")
    finally:
        await conn.close()
    await _after_commit(settings, header, out, every)
    return header


async def _require_empty(conn: asyncpg.Connection) -> None:
    busy = []
    for table in await _tables(conn):
        if table in EPHEMERAL:
            continue
        where = " WHERE position > 0" if table == "checkpoints" else ""
        n = int(await conn.fetchval(f"SELECT count(*) FROM {_ident(table)}{where}"))
        if n:
            busy.append(f"{table} ({n:,} rows)")
    if busy:
        raise TargetNotEmpty(
            "restore goes into an empty database only, and this one holds data: "
            + ", ".join(busy)
            + ". Create a new database and point DATABASE_URL at it.",
            tables=busy,
        )


async def _write(conn: asyncpg.Connection, items: Iterator[Any], progress: _Progress) -> Header:
    header: Header | None = None
    events: list[tuple[Any, ...]] = []
    plans: list[tuple[Any, ...]] = []
    max_position = 0
    state_encoder = msgspec.json.Encoder()
    for item in items:
        if isinstance(item, Header):
            header = item
        elif isinstance(item, RowsRestore):
            await _insert_rows(conn, item)
        elif isinstance(item, PlanRestore):
            evs = item.events
            plans.append(
                (
                    item.head.plan_id,
                    item.head.version,
                    item.head.head_hash,
                    state_encoder.encode(item.state).decode(),
                    item.head.version,
                    evs[0].recorded_at,
                    evs[-1].recorded_at,
                )
            )
            for e in evs:
                events.append(tuple(getattr(e, c) for c in _EVENT_COLUMNS))
                max_position = max(max_position, e.position)
            if len(events) >= _CHUNK:
                await conn.copy_records_to_table("events", records=events, columns=_EVENT_COLUMNS)
                events = []
            if len(plans) >= _CHUNK:
                await conn.copy_records_to_table("plans", records=plans, columns=_PLAN_COLUMNS_ALL)
                plans = []
    assert header is not None  # read_backup yields it first or raises
    if events:
        await conn.copy_records_to_table("events", records=events, columns=_EVENT_COLUMNS)
    if plans:
        await conn.copy_records_to_table("plans", records=plans, columns=_PLAN_COLUMNS_ALL)
    if max_position:
        # positions were restored as they were: new appends continue after them
        await conn.execute(
            f"ALTER TABLE events ALTER COLUMN position RESTART WITH {int(max_position) + 1}"
        )
    for name, upto in header.followers.items():
        # it goes on after the events it had applied, in the restored log's order
        await conn.execute(
            "INSERT INTO checkpoints (name, transaction_id, position)"
            " VALUES ($1, pg_current_xact_id(), $2)",
            name,
            upto,
        )
    return header


async def _insert_rows(conn: asyncpg.Connection, chunk: RowsRestore) -> None:
    columns = {
        r["column_name"]: (r["is_generated"], r["udt_name"])
        for r in await conn.fetch(
            "SELECT column_name, is_generated, udt_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = $1",
            chunk.table,
        )
    }
    if not columns:
        raise Malformed(
            f"the backup has a table {chunk.table!r} that this database does not: "
            "restore it with the Mapstream version that wrote it (or newer)"
        )
    keys: set[str] = set()
    for row in chunk.rows:
        try:
            keys |= _keys_decoder.decode(row).keys()
        except msgspec.DecodeError as exc:
            raise CorruptBackup(f"a row of {chunk.table} is damaged: {exc}") from exc
    missing = keys - columns.keys()
    if missing:
        raise Malformed(
            f"the backup's {chunk.table} rows have columns this database lacks: "
            f"{', '.join(sorted(missing))}; restore with a newer Mapstream"
        )
    names = [c for c in sorted(keys) if columns[c][0] != "ALWAYS"]

    def value(c: str) -> str:
        # a log cursor's transaction id is the restoring transaction's, and so is a
        # snapshot's horizon (see the module docstring)
        if (chunk.table, c) in _SNAPSHOT_COLUMNS:
            return "pg_current_xact_id()::text || ':' || pg_current_xact_id()::text || ':'"
        if columns[c][1] == "xid8":
            return f"CASE WHEN {_ident(c)} = '0' THEN {_ident(c)} ELSE pg_current_xact_id() END"
        return _ident(c)

    values = ", ".join(value(c) for c in names)
    table = _ident(chunk.table)
    await conn.execute(
        f"INSERT INTO {table} ({', '.join(_ident(c) for c in names)}) OVERRIDING SYSTEM VALUE"
        f" SELECT {values} FROM json_populate_recordset(NULL::{table}, $1::json)",
        "[" + ",".join(bytes(r).decode() for r in chunk.rows) + "]",
    )
    # identity / serial columns continue after the restored values
    for column in columns:
        seq = await conn.fetchval("SELECT pg_get_serial_sequence($1, $2)", chunk.table, column)
        if seq is not None:
            await conn.execute(
                f"SELECT setval($1, (SELECT max({_ident(column)}) FROM {table}))", seq
            )


async def _after_commit(settings: Settings, header: Header, out: TextIO, every: int) -> None:
    """Verify every chain as stored, then rebuild the projections from position 0."""
    from server.store import Store
    from server.tools import PROJECTIONS, rebuild, verify_with_head

    url, _embedded = await asyncio.to_thread(
        resolve_database_url, settings.database_url, settings.data_dir
    )
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = Store(pool)
        progress = _Progress("verify", header.events, every, out)
        for plan_id in await store.plan_ids():
            verdict = await verify_with_head(store, plan_id)
            if not verdict.ok:  # committed already: say so, this is no refusal
                raise RuntimeError(
                    f"restored, but plan {plan_id!r} does not verify as stored: broken at "
                    f"version {verdict.broken_at} ({verdict.reason}); run `mapstream verify`"
                )
            progress.add(verdict.version)
        progress.line(f", {header.plans:,} plans: every chain verifies as stored")
        # the restored events become visible to log readers once every transaction older
        # than the restore has ended (anywhere in the cluster): wait for that, then rebuild
        deadline = time.monotonic() + 60
        while await store.log_count() < header.events:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "restored and verified, but a long transaction elsewhere in the PostgreSQL "
                    "cluster hides the restored events from log readers: run `mapstream "
                    "rebuild audit`, `snapshots` and `analytics` later (a server also does it)"
                )
            await asyncio.sleep(0.05)
    finally:
        await pool.close()
    for name in ("snapshots", *[p for p in PROJECTIONS if p != "snapshots"]):
        if await rebuild(settings, name, out) != 0:
            raise RuntimeError(f"restored and verified, but rebuilding {name} failed")


# -- the command line ----------------------------------------------------------------------


def _run_backup(args: argparse.Namespace) -> int:
    try:
        header = asyncio.run(
            backup(load_settings(), Path(args.file), every=args.progress_every, force=args.force)
        )
    except MapstreamError as exc:
        print(f"backup failed [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    tables = ", ".join(f"{n:,} {t}" for t, n in header.tables.items())
    print(f"{args.file}: {header.events:,} events of {header.plans:,} plans; {tables}")
    return 0


def _run_restore(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if args.check:
        try:
            header = check(path, every=args.progress_every)
        except MapstreamError as exc:
            print(f"{path}: check failed [{exc.code}]: {exc.message}", file=sys.stderr)
            return 1
        print(f"{path}: ok, {header.events:,} events of {header.plans:,} plans")
        return 0
    try:
        header = asyncio.run(restore(load_settings(), path, every=args.progress_every))
    except MapstreamError as exc:
        print(f"restore refused [{exc.code}]: {exc.message}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"restore: {exc}", file=sys.stderr)
        return 1
    print(
        f"restored {header.events:,} events of {header.plans:,} plans from {path}; "
        "every chain verified; projections rebuilt"
    )
    return 0


def register(sub: Any) -> None:
    """Add `mapstream backup` and `mapstream restore` to the CLI's subparsers."""
    b = sub.add_parser(
        "backup",
        help="write every event (and invites, templates) to a verifiable file",
        description="Write a consistent logical backup (gzipped JSON lines) of the database "
        "in DATABASE_URL (or the embedded one): events, invites, templates, plan heads. "
        "Derived tables are left out; restore rebuilds them.",
    )
    b.add_argument("file", help="the backup file to write, e.g. mapstream-2026-06-03.jsonl.gz")
    b.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    b.set_defaults(run=_run_backup)

    r = sub.add_parser(
        "restore",
        help="restore a backup into an EMPTY database, verify it, rebuild projections",
        description="Restore a `mapstream backup` file into the database in DATABASE_URL "
        "(or the embedded one), which must be empty. Every plan's hash chain is recomputed "
        "before anything is committed (one transaction: a damaged file writes nothing), "
        "verified again from the database, and the projections are rebuilt.",
    )
    r.add_argument("file", help="a file written by `mapstream backup`")
    r.add_argument("--check", action="store_true", help="only verify the file (no database needed)")
    r.set_defaults(run=_run_restore)
    for parser in (b, r):
        parser.add_argument(
            "--progress-every",
            type=int,
            default=PROGRESS_EVERY,
            metavar="N",
            help=f"print a progress line every N events (default {PROGRESS_EVERY:,})",
        )
