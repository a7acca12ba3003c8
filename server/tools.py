"""Auditor tools behind the CLI and the auditor routes: verification, proofs, projections.

The CLI commands talk to the database directly (`open_store`), print progress, and return an
exit code; `verify-file` needs no database at all.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import msgspec

from domain import chain
from domain.base import Recorded
from domain.decider import decode_event, evolve
from domain.errors import Malformed, MapstreamError, NotFound
from domain.model import Plan, Side
from projections.analytics import AnalyticsProjection
from projections.audit import AuditProjection
from projections.runner import ProjectionRunner
from projections.snapshots import DENSE_BYTES, EVERY, SCHEMA, SnapshotProjection, encode_state
from server.database import apply_schema, resolve_database_url, wait_for_database
from server.plans import PlanService
from server.settings import Settings
from server.store import AuditQuery, Store, StoredEvent

PROJECTIONS = ("audit", "snapshots", "analytics")
_PAGE = 5000


def projection_runners(
    store: Store, plans: PlanService, *, snapshot_every: int = EVERY, dense_snapshots: bool = True
) -> dict[str, ProjectionRunner[Any]]:
    """The asynchronous projections, by name. Their missing plan states come from snapshots."""
    audit: ProjectionRunner[Any] = ProjectionRunner(
        AuditProjection(plans.at_version), store.audit_table(), store
    )
    dense = DENSE_BYTES if dense_snapshots else -1
    snapshots: ProjectionRunner[Any] = ProjectionRunner(
        SnapshotProjection(plans.at_version, every=snapshot_every, dense_bytes=dense),
        store.snapshot_table(SCHEMA),
        store,
    )
    analytics: ProjectionRunner[Any] = ProjectionRunner(
        AnalyticsProjection(plans.at_version), store.analytics_table(), store
    )
    return {"audit": audit, "snapshots": snapshots, "analytics": analytics}


# -- the hash chain ------------------------------------------------------------------------


def link_of(e: StoredEvent) -> chain.Link:
    return chain.Link.of(e.plan_id, e)


async def read_all(store: Store, plan_id: str) -> list[StoredEvent]:
    """A plan's whole stream, read in pages."""
    events: list[StoredEvent] = []
    while True:
        after = events[-1].version if events else 0
        page = await store.read_stream(plan_id, after=after, limit=_PAGE)
        events.extend(page)
        if len(page) < _PAGE:
            return events


async def verify_plan(store: Store, plan_id: str) -> chain.Verdict:
    """Recompute one plan's chain from its stored events (CPU work off the event loop)."""
    links = [link_of(e) for e in await read_all(store, plan_id)]
    return await asyncio.to_thread(chain.verify, links)


async def verify_with_head(store: Store, plan_id: str) -> chain.Verdict:
    """The chain, and whether it ends where the plan row says the plan is.

    The chain alone cannot see events cut off its end; the `plans` row keeps the version and
    head hash of the last append, so a stream shorter than that is reported as broken. The
    row is read first: events appended after it are simply not part of this check."""
    row = await store.load_plan(plan_id)
    events = await read_all(store, plan_id)
    if row is not None:
        events = [e for e in events if e.version <= row.version]
    verdict = await asyncio.to_thread(chain.verify, [link_of(e) for e in events])
    if not verdict.ok or row is None:
        return verdict
    if (verdict.version, verdict.head_hash) != (row.version, row.head_hash):
        return chain.Verdict(
            False,
            verdict.version,
            verdict.head_hash,
            verdict.version + 1,
            f"the events end at version {verdict.version}, but the plan's last append "
            f"recorded version {row.version} with head {row.head_hash}",
        )
    return verdict


def verdict_body(plan_id: str, verdict: chain.Verdict) -> dict[str, Any]:
    if verdict.ok:
        return {
            "plan_id": plan_id,
            "ok": True,
            "version": verdict.version,
            "head_hash": verdict.head_hash,
        }
    return {
        "plan_id": plan_id,
        "ok": False,
        "broken_at": verdict.broken_at,
        "reason": verdict.reason,
        "intact_to": verdict.version,
        "intact_head": verdict.head_hash,
    }


async def check_snapshots(store: Store, plan_id: str, events: list[StoredEvent]) -> list[int]:
    """Versions whose snapshot differs from the fold of the events (they are deleted: caches)."""
    snaps = {v: (h, s) for v, h, s in await store.snapshots_of(plan_id, SCHEMA)}
    if not snaps:
        return []
    bad: list[int] = []
    state = Plan(id=plan_id)
    for e in events:
        if e.version > max(snaps):
            break
        state = evolve(state, Recorded(e.version, e.actor, e.recorded_at, _decode(e)))
        snap = snaps.get(e.version)
        if snap is not None and (snap[0] != e.hash or snap[1] != encode_state(state)):
            bad.append(e.version)
    bad += [v for v in snaps if v > len(events)]
    if bad:
        await store.delete_snapshots(plan_id, SCHEMA, bad)
    return bad


def _decode(e: StoredEvent) -> Any:
    return decode_event(e.type, e.schema_version, e.data)


async def open_store(settings: Settings) -> tuple[Store, asyncpg.Pool]:
    url, _embedded = await asyncio.to_thread(
        resolve_database_url, settings.database_url, settings.data_dir
    )
    await wait_for_database(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert pool is not None
    async with pool.acquire() as conn:
        await apply_schema(conn)
    return Store(pool), pool


async def verify_plans(settings: Settings, plan_id: str | None) -> int:
    """`mapstream verify [PLAN_ID]`: each chain, its end against the plan row, its snapshots."""
    store, pool = await open_store(settings)
    try:
        ids = [plan_id] if plan_id else await store.plan_ids()
        broken = 0
        for n, pid in enumerate(ids, 1):
            events = await read_all(store, pid)
            if not events:
                print(f"{pid}: no such plan", file=sys.stderr)
                broken += 1
                continue
            verdict = await verify_with_head(store, pid)
            if not verdict.ok:
                broken += 1
                print(
                    f"[{n}/{len(ids)}] {pid}: BROKEN at version {verdict.broken_at} "
                    f"({verdict.reason}); the chain is intact up to version {verdict.version}"
                )
                continue
            line = f"[{n}/{len(ids)}] {pid}: ok, {verdict.version} events, head {verdict.head_hash}"
            try:
                bad = await check_snapshots(store, pid, events)
            except MapstreamError as exc:  # an event this code cannot fold
                line += f" (snapshots not checked: {exc})"
            else:
                if bad:
                    line += f"; snapshots at {bad} disagreed with the fold and were deleted"
            print(line)
        return 1 if broken else 0
    finally:
        await pool.close()


# -- proofs: a plan's chain in one self-contained file ---------------------------------------

PROOF_FORMAT = "mapstream-proof/1"


class ProofEvent(msgspec.Struct, frozen=True):
    """One link. `data` is the exact stored JSON text (it is hashed byte for byte); a
    redacted event keeps only its digest and hash, and still verifies."""

    version: int
    recorded_at: datetime
    data_digest: str
    hash: str
    type: str = "Redacted"
    actor: str = ""
    data: str | None = None


class Proof(msgspec.Struct, frozen=True):
    format: str
    plan_id: str
    version: int
    head_hash: str
    exported_at: datetime
    events: list[ProofEvent]
    side: str | None = None  # set when the other side's internal events are redacted
    how_to_check: str = (
        "data_digest = SHA-256(JSON [type, actor, data]) with data the exact text; "
        "hash = SHA-256(previous hash|plan_id|version|recorded_at as UTC ISO-8601 with "
        "microseconds|data_digest), starting from 64 zeros; `mapstream verify-file` does it"
    )


_proof_encoder = msgspec.json.Encoder()
_proof_decoder = msgspec.json.Decoder(Proof)


def proof_of(plan_id: str, events: list[StoredEvent], side: Side | None) -> Proof:
    out = []
    for e in events:
        if side is not None and e.audience is not None and e.audience != side:
            out.append(ProofEvent(e.version, e.recorded_at, e.data_digest, e.hash))
        else:
            out.append(
                ProofEvent(e.version, e.recorded_at, e.data_digest, e.hash, e.type, e.actor, e.data)
            )
    head = events[-1].hash if events else chain.GENESIS
    return Proof(PROOF_FORMAT, plan_id, len(events), head, datetime.now(UTC), out, side)


def check_proof(raw: bytes, expected_head: str | None = None) -> chain.Verdict:
    """Verify a proof file offline: its chain, and that it ends where it says it does."""
    try:
        proof = _proof_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Malformed(f"not a Mapstream proof file: {exc}") from exc
    if proof.format != PROOF_FORMAT:
        raise Malformed(f"unknown proof format {proof.format!r} (this reads {PROOF_FORMAT})")
    links = [chain.Link.of(proof.plan_id, e) for e in proof.events]
    verdict = chain.verify(links)
    if not verdict.ok:
        return verdict
    if (verdict.version, verdict.head_hash) != (proof.version, proof.head_hash):
        return chain.Verdict(
            False,
            verdict.version,
            verdict.head_hash,
            verdict.version + 1,
            f"the file says version {proof.version} with head {proof.head_hash}, "
            f"its events end at version {verdict.version} with head {verdict.head_hash}",
        )
    if expected_head is not None and expected_head != verdict.head_hash:
        return chain.Verdict(
            False,
            verdict.version,
            verdict.head_hash,
            None,
            f"the chain is consistent but ends with head {verdict.head_hash}, "
            f"not the expected {expected_head}",
        )
    return verdict


async def export_proof(settings: Settings, plan_id: str, side: Side | None) -> bytes | None:
    """`mapstream export-proof`: the proof file's bytes (None: no such plan)."""
    store, pool = await open_store(settings)
    try:
        events = await read_all(store, plan_id)
    finally:
        await pool.close()
    if not events:
        return None
    return _proof_encoder.encode(proof_of(plan_id, events, side)) + b"\n"


def verify_file(path: Path, expected_head: str | None) -> int:
    """`mapstream verify-file FILE`: offline, no database."""
    try:
        verdict = check_proof(path.read_bytes(), expected_head)
    except OSError as exc:
        print(f"{path}: {exc.strerror}", file=sys.stderr)
        return 2
    except Malformed as exc:
        print(f"{path}: {exc.message}", file=sys.stderr)
        return 2
    if verdict.ok:
        print(f"{path}: ok, {verdict.version} events, head {verdict.head_hash}")
        return 0
    where = f"at version {verdict.broken_at} " if verdict.broken_at is not None else ""
    print(f"{path}: BROKEN {where}({verdict.reason}); intact up to version {verdict.version}")
    return 1


# -- bounds given as a version, a tag or a time ------------------------------------------


def parse_time(raw: str, field: str) -> datetime:
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise Malformed(
            f"`{field}` must be a version, a tag or an ISO-8601 time, e.g. 2026-06-03T12:00:00Z",
            field=field,
        ) from None
    if at.tzinfo is None:
        raise Malformed(f"`{field}` needs a time zone, e.g. 2026-06-03T12:00:00Z", field=field)
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise Malformed(f"`{field}` is out of range", field=field) from None


def _text(raw: str | None, field: str) -> str | None:
    """A filter value as PostgreSQL text can hold it (no NUL), or None when empty."""
    if raw is None or not raw.strip():
        return None
    if "\x00" in raw or len(raw) > 1000:
        raise Malformed(f"`{field}` must be text of at most 1000 characters", field=field)
    return raw.strip()


def version_of(plan: Plan, raw: str, field: str) -> int:
    """A version given as a number or a tag name ("sent-to-procurement")."""
    if raw.isascii() and raw.isdigit():
        version = int(raw)
    elif raw in plan.tags:
        version = plan.tags[raw]
    else:
        raise NotFound(f"no version or tag {raw!r} in this plan", field=field)
    if version > plan.version:
        raise NotFound(f"the plan has no version {version} (it is at {plan.version})", field=field)
    return version


def bound(plan: Plan, raw: str, field: str) -> int | datetime:
    """`from`/`to` of the audit trail: a version, a tag, or else an ISO-8601 time."""
    if (raw.isascii() and raw.isdigit()) or raw in plan.tags:
        return version_of(plan, raw, field)
    return parse_time(raw, field)


def audit_query(
    plan: Plan,
    *,
    actor: str | None = None,
    item: str | None = None,
    types: str | None = None,
    start: str | None = None,
    end: str | None = None,
    side: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> AuditQuery:
    """The filters of GET /plans/{id}/audit and `mapstream audit`, checked."""
    since = until = None
    upto = None
    if start:
        b = bound(plan, start, "from")
        if isinstance(b, int):
            after = max(after, b - 1)
        else:
            since = b
    if end:
        b = bound(plan, end, "to")
        if isinstance(b, int):
            upto = b
        else:
            until = b
    types = _text(types, "type")
    kinds = tuple(t.strip() for t in types.split(",") if t.strip()) if types else ()
    return AuditQuery(
        after=after,
        upto=upto,
        actor=_text(actor, "actor"),
        item=_text(item, "item"),
        types=kinds,
        since=since,
        until=until,
        side=side,
        limit=limit,
    )


# -- the audit trail and projections from the command line ---------------------------------


async def print_audit(
    settings: Settings,
    plan_id: str,
    filters: dict[str, str | None],
    side: Side | None,
    as_json: bool,
    out: TextIO,
) -> int:
    """`mapstream audit PLAN_ID`: bring the trail up to date, then print it."""
    store, pool = await open_store(settings)
    try:
        plans = PlanService(store)
        try:
            plan = await plans.current(plan_id)
        except NotFound:
            print(f"{plan_id}: no such plan", file=sys.stderr)
            return 1
        # safe while a server runs the same projection: commits are compare-and-set
        await projection_runners(store, plans)["audit"].catch_up()
        query = audit_query(
            plan,
            actor=filters.get("actor"),
            item=filters.get("item"),
            types=filters.get("types"),
            start=filters.get("start"),
            end=filters.get("end"),
            side=side,
            limit=1000,
        )
        while True:
            page = await store.read_audit(plan_id, query)
            for version, row in page:
                if as_json:
                    out.write(row + "\n")
                else:
                    r = msgspec.json.decode(row)
                    at = datetime.fromisoformat(r["at"]).astimezone(UTC)
                    out.write(f"v{version:<5} {at:%Y-%m-%d %H:%M} UTC  {r['summary']}\n")
            if len(page) < query.limit:
                return 0
            query = msgspec.structs.replace(query, after=page[-1][0])
    finally:
        await pool.close()


class ProgressLine:
    """`audit: 45,000/100,000 events (45%), 12,345 events/s, ETA 4 s` at most once a second."""

    def __init__(self, name: str, out: TextIO = sys.stderr) -> None:
        self.name = name
        self.out = out
        self.last = 0.0
        self.tty = out.isatty()

    def __call__(self, done: int, total: int, rate: float, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 1.0:
            return
        self.last = now
        pct = 100.0 * done / total if total else 100.0
        left = max(total - done, 0)
        if not left:
            eta = "done"
        else:
            eta = f"ETA {left / rate:,.0f} s" if rate > 0 else "ETA unknown"
        line = f"{self.name}: {done:,}/{total:,} events ({pct:.0f}%), {rate:,.0f} events/s, {eta}"
        if self.tty:
            self.out.write("\r" + line.ljust(79) + ("\n" if final else ""))
        else:
            self.out.write(line + "\n")
        self.out.flush()


async def rebuild(settings: Settings, name: str, out: TextIO = sys.stderr) -> int:
    """`mapstream rebuild PROJECTION`: drop the read model and apply the log from position 0.

    When a running server holds the projection's lease, its runner does the work (it notices
    the reset checkpoint) and this command shows the progress; otherwise it does it here."""
    if name not in PROJECTIONS:
        print(f"unknown projection {name!r}; choose from {', '.join(PROJECTIONS)}", file=out)
        return 2
    store, pool = await open_store(settings)
    try:
        runner = projection_runners(store, PlanService(store))[name]
        runner.batch = 2000  # fewer round trips: a rebuild has the whole log to go through
        progress = ProgressLine(name, out)
        started = time.monotonic()
        async with runner.model.lease() as lease:
            if lease.held:
                print(f"{name}: rebuilding from position 0", file=out)
                n = await runner.rebuild(progress)
            else:
                print(f"{name}: a running server applies it; reset, watching it rebuild", file=out)
                await runner.model.clear()
                n = await _watch(runner, progress)
        head = await store.log_count()
        elapsed = max(time.monotonic() - started, 1e-9)
        progress(head, head, n / elapsed, final=True)
        return 0
    finally:
        await pool.close()


async def _watch(runner: ProjectionRunner[Any], progress: ProgressLine) -> int:
    """Report another runner's progress to the head as of now; take over if it stalls."""
    log_ = runner.log
    head = await log_.log_head()
    total = await log_.log_count(head)
    started = stalled_since = time.monotonic()
    last = -1
    while True:
        cursor = await runner.model.checkpoint()
        done = await log_.log_count(cursor)
        now = time.monotonic()
        progress(done, total, done / max(now - started, 1e-9))
        if cursor >= head:
            return done
        if done != last:
            last, stalled_since = done, now
        elif now - stalled_since > 10.0:
            print(f"{runner.name}: no progress for 10 s; applying it here", file=progress.out)
            return done + await runner.catch_up(progress)
        await asyncio.sleep(0.25)
