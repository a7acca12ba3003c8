"""Replay: the state of a long plan at any version, against a raw read of the events it needs.

    .venv/bin/python -m bench.replay [--events 10000] [--rebuild-events 100000] [--repeat 7]

1. Builds one plan of `--events` events through `PlanService` (a realistic mix: comments,
   status changes, reschedules, notes, new action items, tags), then runs the snapshot
   projection (a snapshot every 100 versions, every 25 below 400 for a small plan).
2. For the head, the middle and the worst case (99 events after a snapshot), times:
   - raw:   `SELECT data FROM events WHERE plan_id = $1 AND version <= k` and a msgspec decode of
            every row into its typed event: reading the events a fold needs, and nothing else;
   - fold:  `PlanService.at_version(k, snapshots=False)`: read and fold all k events;
   - snap:  `PlanService.at_version(k)`: the nearest snapshot plus the events after it;
   and prints each as a ratio to raw. Target of the issue: any version in <= 2x raw.
   Then the current state (`PlanService.current`: the inline plans row plus its tail) with
   and without snapshots.
3. Adds plans until the log holds `--rebuild-events` events and times `rebuild` of the audit
   trail and of the snapshots from position 0 (events/s), against a raw read of the whole log.

It runs on a fresh database (embedded PostgreSQL in .data/bench unless DATABASE_URL is set)
and drops it at the end. It prints and never asserts: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from functools import partial
from typing import Any

import asyncpg
import msgspec

from bench.append import server_info
from bench.common import admin_url, code_version
from domain import action_items as ai
from domain import comments as co
from domain import members as mem
from domain import milestones as ms
from domain import plans as pl
from domain import stakeholders as sh
from domain import versions as ver
from domain.decider import PlanCommand, PlanEvent
from domain.model import Side
from server.database import apply_schema
from server.plans import PlanService
from server.store import Store
from server.tools import projection_runners
from tests.support import create_database, drop_database, with_database

SELLER = "sam@seller.example"
BUYER = "bianca@buyer.example"
TEXT = (
    "Legal reviewed the MSA redlines on Tuesday; two clauses remain open (liability cap and "
    "data residency). Next sync Thursday."
)
TARGET = 2.0
_raw_decoder = msgspec.json.Decoder(PlanEvent)
Script = list[tuple[str, PlanCommand]]


def plan_script(events: int, rng: random.Random) -> Script:
    """Commands that produce exactly `events` events (each one event, after the setup)."""
    start = date(2026, 3, 1)
    script: Script = [
        (SELLER, pl.CreatePlan(title="Bench plan", buyer_org="B", seller_org="S", side="seller")),
        (SELLER, mem.AddMember(email=BUYER, side="buyer", role="editor", name="Bianca")),
    ]
    people = [f"p{i}" for i in range(8)]
    for i, pid in enumerate(people):
        side: Side = "buyer" if i % 2 else "seller"
        script.append((SELLER, sh.AddStakeholder(id=pid, name=f"Person {i}", side=side)))
    milestones = [f"m{i}" for i in range(12)]
    due: dict[str, date] = {}
    for i, mid in enumerate(milestones):
        due[mid] = start + timedelta(days=7 * i)
        script.append(
            (
                SELLER,
                ms.AddMilestone(id=mid, title=f"Milestone {i}", owner=people[i % 8], due=due[mid]),
            )
        )
    items: list[str] = []
    status: dict[str, str] = {}

    def add_item() -> tuple[str, PlanCommand]:
        iid = f"a{len(items)}"
        items.append(iid)
        status[iid] = "not_started"
        due[iid] = start + timedelta(days=len(items))
        return SELLER, ai.AddActionItem(
            id=iid,
            milestone_id=rng.choice(milestones),
            title=f"Action {iid}",
            owner=rng.choice(people),
            due=due[iid],
        )

    for _ in range(48):
        script.append(add_item())
    tags = 0
    while len(script) + 1 < events:  # CreatePlan makes two events
        who = rng.choice((SELLER, BUYER))
        roll = rng.random()
        if roll < 0.40:
            cmd: PlanCommand = co.AddComment(item_id=rng.choice(items + milestones), text=TEXT)
        elif roll < 0.62:
            iid = rng.choice(items)
            new = rng.choice(
                [s for s in ("not_started", "in_progress", "blocked") if s != status[iid]]
            )
            status[iid] = new
            cmd = ai.SetActionItemStatus(id=iid, status=new)  # type: ignore[arg-type]
        elif roll < 0.74:
            iid = rng.choice(items)
            due[iid] += timedelta(days=1)
            cmd = ai.RescheduleActionItem(id=iid, due=due[iid], reason="waiting on the buyer")
        elif roll < 0.80:
            mid = rng.choice(milestones)
            due[mid] += timedelta(days=2)
            cmd = ms.RescheduleMilestone(id=mid, due=due[mid], reason="slipped a sprint")
        elif roll < 0.90:
            cmd = ai.UpdateActionItem(id=rng.choice(items), notes=f"note {uuid.uuid4().hex[:8]}")
        elif roll < 0.995:
            who, cmd = add_item()
        else:
            tags += 1
            cmd = ver.TagVersion(name=f"checkpoint {tags}")
        script.append((who, cmd))
    return script


async def play(service: PlanService, plan_id: str, script: Script, chunk: int = 100) -> None:
    """Queue commands in chunks: the plan's flusher appends each chunk in a few statements."""
    for i in range(0, len(script), chunk):
        part = script[i : i + chunk]
        await asyncio.gather(*(service.handle(plan_id, c, who) for who, c in part))


async def median(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    await fn()  # warm caches: the same for every case
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def raw_read(pool: asyncpg.Pool, plan_id: str, upto: int) -> int:
    rows = await pool.fetch(
        "SELECT data::text AS data FROM events WHERE plan_id = $1 AND version <= $2 ORDER BY version",
        plan_id,
        upto,
    )
    for r in rows:
        _raw_decoder.decode(r["data"])
    return len(rows)


async def time_travel(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    store = Store(pool)
    service = PlanService(store)
    plan_id = "replay"
    t0 = time.perf_counter()
    await play(service, plan_id, plan_script(args.events, random.Random(7)))
    built = time.perf_counter() - t0
    head = (await service.current(plan_id)).version
    t0 = time.perf_counter()
    await projection_runners(store, service)["snapshots"].catch_up()
    snap_time = time.perf_counter() - t0
    row = await pool.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(length(state::text)), 0) AS bytes,"
        " max(length(state::text)) AS biggest FROM snapshots WHERE plan_id = $1",
        plan_id,
    )
    assert row is not None
    print(
        f"plan of {head:,} events built in {built:.1f} s; snapshots every 100 versions: "
        f"{row['n']} written in {snap_time:.1f} s, {row['bytes'] / 2**20:.0f} MiB in all, "
        f"state at head {(row['biggest'] or 0) / 2**20:.2f} MiB",
        flush=True,
    )
    middle = head // 2 // 100 * 100
    cases = [
        (f"{head:,} (head)", head),
        (f"{head - 1:,} (99 after a snapshot)", head - 1),
        (f"{middle:,} (middle, on a snapshot)", middle),
        (f"{middle + 99:,} (middle + 99)", middle + 99),
        ("1,099", 1099),
        ("399", 399),
        ("199", 199),
        ("150", 150),
        ("99", 99),
        ("24 (before the first snapshot)", 24),
    ]
    print()
    print(
        f"{'state at version':<34}{'raw ms':>9}{'fold ms':>10}{'fold/raw':>10}"
        f"{'snap ms':>10}{'snap/raw':>10}"
    )
    worst = 0.0
    for label, k in cases:
        raw = await median(partial(raw_read, pool, plan_id, k), args.repeat)
        full = await median(partial(service.at_version, plan_id, k, snapshots=False), args.repeat)
        snap = await median(partial(service.at_version, plan_id, k), args.repeat)
        worst = max(worst, snap / raw)
        print(
            f"{label:<34}{raw * 1000:>9.1f}{full * 1000:>10.1f}{full / raw:>10.2f}"
            f"{snap * 1000:>10.1f}{snap / raw:>10.2f}",
            flush=True,
        )
    raw = await median(partial(raw_read, pool, plan_id, head), args.repeat)
    stored = await store.load_plan(plan_id)
    assert stored is not None
    print(
        f"\nthe current state (GET /plans/{{id}}): plans row at v{stored.state_version} + the tail"
    )
    without = await median(partial(service._load, plan_id), args.repeat)
    current = await median(partial(service.current, plan_id), args.repeat)
    print(
        f"{'current, without snapshots':<34}{raw * 1000:>9.1f}{without * 1000:>10.1f}"
        f"{without / raw:>10.2f}{current * 1000:>10.1f}{current / raw:>10.2f}"
    )
    verdict = "PASS" if worst <= TARGET else "MISS"
    print(f"\ntarget: any version with snapshots <= {TARGET:g}x raw: worst {worst:.2f}x {verdict}")


async def rebuild_throughput(pool: asyncpg.Pool, args: argparse.Namespace) -> None:
    store = Store(pool)
    service = PlanService(store)
    missing = args.rebuild_events - await store.log_count()
    sizes = [2000] * (missing // 2000) + ([missing % 2000] if missing % 2000 >= 100 else [])
    rng = random.Random(11)
    t0 = time.perf_counter()
    for first in range(0, len(sizes), 8):  # eight plans at a time
        group = [
            (f"r{n}", plan_script(size, rng))
            for n, size in enumerate(sizes[first : first + 8], first)
        ]
        await asyncio.gather(*(play(service, pid, script) for pid, script in group))
    total = await store.log_count()
    built = time.perf_counter() - t0
    print(f"\nglobal log of {total:,} events ({len(sizes)} more plans built in {built:.0f} s)")

    async def raw_log() -> None:
        cursor = (0, 0)
        while events := await store.read_log(cursor, 5000):
            for e in events:
                _raw_decoder.decode(e.data)
            cursor = events[-1].cursor

    t0 = time.perf_counter()
    await raw_log()
    raw = total / (time.perf_counter() - t0)
    print(f"{'raw read of the log + decode':<34}{raw:>10,.0f} events/s")
    for name in ("audit", "snapshots"):
        runner = projection_runners(store, PlanService(store))[name]
        runner.batch = 2000  # as `mapstream rebuild`
        t0 = time.perf_counter()
        applied = await runner.rebuild()
        rate = applied / (time.perf_counter() - t0)
        print(f"{'rebuild ' + name:<34}{rate:>10,.0f} events/s ({applied:,} events)", flush=True)


async def run(args: argparse.Namespace) -> None:
    embedded = not os.environ.get("DATABASE_URL")
    admin = await asyncio.to_thread(admin_url)
    name = await create_database(admin)
    url = with_database(admin, name)
    try:
        async with asyncpg.create_pool(url, min_size=2, max_size=8) as pool:
            async with pool.acquire() as conn:
                await apply_schema(conn)
            where = "embedded" if embedded else "DATABASE_URL"
            print(f"{await server_info(pool)}, {where}, database {name}")
            print(f"code {code_version()}", flush=True)
            await time_travel(pool, args)
            if args.rebuild_events:
                await rebuild_throughput(pool, args)
    finally:
        await drop_database(admin, name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay",
        description=(
            "Time travel on a long plan (with and without snapshots) against a raw read of "
            "its events, and projection rebuild throughput, on a fresh database."
        ),
    )
    parser.add_argument("--events", type=int, default=10_000, help="events in the plan (10000)")
    parser.add_argument(
        "--rebuild-events",
        type=int,
        default=100_000,
        help="events in the global log for the rebuild timing (100000; 0 skips it)",
    )
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per case (median)")
    args = parser.parse_args(argv)
    if args.events < 1100:
        parser.error("--events must be at least 1100 (one case reads version 1,099)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
