"""Append throughput of the event store against a raw INSERT baseline, measured in one run.

    .venv/bin/python -m bench.append [--seconds 5] [--writers 1,4,16]

For each writer count, concurrent asyncio tasks loop for a fixed time on three cases:

- raw:  a plain single-row INSERT into a copy of `events` (same columns, indexes and a JSON
        body of the same size), autocommit. What PostgreSQL gives with no store at all.
- many: `PlanService.handle(AddComment)`, each writer on its own plan.
- hot:  the same command, all writers on ONE plan (group commit batches them).

It prints events/s, p50/p99 latency and the ratio store/raw per writer count, then the
targets of the issue (ratio >= 0.6 at 16 writers on many plans, >= 0.5 on one hot plan) as
PASS/MISS. It runs on a fresh database (embedded PostgreSQL in .data/bench unless
DATABASE_URL is set) and drops it at the end. It prints and never asserts: numbers depend on
the machine, and on a shared machine on what else runs, so compare ratios from one run.

Every case starts on fresh plans, and each comment stays in the plan state, so plans grow
during a case (longer --seconds, bigger plans); each progress line reports the events per
append (group commit at work) and the largest plan state at the end of the case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import msgspec

from bench.common import admin_url, code_version
from domain.comments import AddComment, CommentAdded
from domain.plans import CreatePlan
from server.database import apply_schema
from server.plans import PlanService
from server.store import Store
from tests.support import create_database, drop_database, with_database

OWNER = "owner@seller.example"
# A realistic comment: a few sentences, no mentions (about 300 bytes of event JSON).
TEXT = (
    "Legal reviewed the MSA redlines on Tuesday; two clauses remain open (liability cap and "
    "data residency). Procurement needs the updated security questionnaire before the "
    "steering committee, so we moved the sign-off milestone by a week. Next sync Thursday."
)
# store/raw at 16 writers, from the issue
TARGETS = {"many": ("many plans", 0.6), "hot": ("one hot plan", 0.5)}
TARGET_WRITERS = 16

# The baseline table is `events` copied by LIKE: same columns, identity, defaults
# (transaction_id = pg_current_xact_id()) and indexes, without the immutability triggers
# (they fire on UPDATE/DELETE only, so inserts would not pay for them anyway).
_RAW_TABLE = "CREATE TABLE bench_raw_events (LIKE events INCLUDING ALL)"
_RAW_INSERT = """
INSERT INTO bench_raw_events (plan_id, version, type, schema_version, data, actor, command_id,
                              correlation_id, recorded_at, audience, data_digest, hash)
VALUES ($1, $2, $3, $4, $5::json, $6, $7, $8, $9, $10, $11, $12)
"""
_FAKE_SHA = "ab" * 32  # 64 hex characters, like data_digest and hash


@dataclass
class Result:
    case: str
    writers: int
    events: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, p: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1000


async def run_writers(
    case: str,
    writers: int,
    seconds: float,
    warmup: float,
    op: Callable[[int, int], Awaitable[object]],
) -> Result:
    """`writers` tasks call op(writer, i) in a loop; only ops started after warmup count."""
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    latencies: list[float] = []
    last_done = measure_from

    async def writer(w: int) -> None:
        nonlocal last_done
        i = 0
        while (t0 := time.perf_counter()) < stop_at:
            await op(w, i)
            i += 1
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append(t1 - t0)
                last_done = max(last_done, t1)

    async with asyncio.timeout(warmup + seconds + 60):
        async with asyncio.TaskGroup() as tg:
            for w in range(writers):
                tg.create_task(writer(w))
    return Result(case, writers, len(latencies), last_done - measure_from, latencies)


async def bench_raw(
    pool: asyncpg.Pool, writers: int, seconds: float, warmup: float, run: str = ""
) -> Result:
    data = msgspec.json.encode(CommentAdded(id="c-00-000000", item_id="plan", text=TEXT)).decode()
    now = datetime.now(UTC)

    async def op(w: int, i: int) -> None:
        await pool.execute(
            _RAW_INSERT,
            f"raw{run}-{writers}-{w}",
            i + 1,
            "CommentAdded",
            1,
            data,
            OWNER,
            f"cmd-{w}-{i}",
            None,
            now,
            None,
            _FAKE_SHA,
            _FAKE_SHA,
        )

    return await run_writers("raw", writers, seconds, warmup, op)


async def create_plans(service: PlanService, plan_ids: list[str]) -> None:
    for plan_id in plan_ids:
        await service.handle(
            plan_id,
            CreatePlan(title="Bench plan", buyer_org="Buyer", seller_org="Seller", side="seller"),
            OWNER,
            command_id=f"create-{plan_id}",
        )


async def bench_store(
    pool: asyncpg.Pool, case: str, writers: int, seconds: float, warmup: float, run: str = ""
) -> Result:
    """A fresh service and fresh plans per case, so every case starts from a small plan."""
    service = PlanService(Store(pool))
    plans = writers if case == "many" else 1
    plan_ids = [f"{case}{run}-{writers}-{w}" for w in range(plans)]
    await create_plans(service, plan_ids)

    async def op(w: int, i: int) -> None:
        plan_id = plan_ids[w % len(plan_ids)]
        await service.handle(
            plan_id,
            AddComment(item_id="plan", text=TEXT, id=f"c-{w:02}-{i:06}"),
            OWNER,
            command_id=f"cmd-{w}-{i}",
        )

    result = await run_writers(case, writers, seconds, warmup, op)
    row = await pool.fetchrow(
        "SELECT count(*) AS events, count(DISTINCT transaction_id) AS appends,"
        " (SELECT max(length(state::text)) FROM plans WHERE plan_id = ANY($1)) AS state"
        " FROM events WHERE plan_id = ANY($1) AND version > 2",
        plan_ids,
    )
    assert row is not None
    per_append = row["events"] / max(row["appends"], 1)
    state_kib = (row["state"] or 0) / 1024
    result.note = f"{per_append:.1f} events/append, stored plan state {state_kib:.0f} KiB"
    return result


async def server_info(pool: asyncpg.Pool) -> str:
    row = await pool.fetchrow(
        "SELECT current_setting('server_version') AS version,"
        " current_setting('synchronous_commit') AS sync,"
        " current_setting('fsync') AS fsync"
    )
    assert row is not None
    return f"PostgreSQL {row['version']} (synchronous_commit={row['sync']}, fsync={row['fsync']})"


def print_table(results: list[Result]) -> None:
    raw = {r.writers: r.rate for r in results if r.case == "raw"}
    print()
    print(f"{'case':<6}{'writers':>8}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'store/raw':>11}")
    for r in sorted(results, key=lambda r: (r.writers, ["raw", "many", "hot"].index(r.case))):
        ratio = "" if r.case == "raw" or r.writers not in raw else f"{r.rate / raw[r.writers]:.2f}"
        print(
            f"{r.case:<6}{r.writers:>8}{r.rate:>11,.0f}{r.percentile_ms(50):>9.2f}"
            f"{r.percentile_ms(99):>9.2f}{ratio:>11}"
        )
    print()
    for case, (what, target) in TARGETS.items():
        store = next((r for r in results if r.case == case and r.writers == TARGET_WRITERS), None)
        base = raw.get(TARGET_WRITERS)
        label = f"target: {what}, {TARGET_WRITERS} writers, store/raw >= {target}"
        if store is None or not base:
            print(f"{label}: not measured (run with {TARGET_WRITERS} writers and raw)")
            continue
        achieved = store.rate / base
        print(f"{label}: {achieved:.2f} {'PASS' if achieved >= target else 'MISS'}")


async def run(args: argparse.Namespace) -> None:
    embedded = not os.environ.get("DATABASE_URL")
    admin = await asyncio.to_thread(admin_url)
    name = await create_database(admin)
    url = with_database(admin, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await apply_schema(conn)
            await conn.execute(_RAW_TABLE)
        finally:
            await conn.close()
        results: list[Result] = []
        for writers in args.writers:
            # one connection per writer, plus room for the service's occasional reads
            async with asyncpg.create_pool(url, min_size=writers + 2, max_size=writers + 2) as pool:
                if not results:
                    where = "embedded" if embedded else "DATABASE_URL"
                    print(f"{await server_info(pool)}, {where}, database {name}", flush=True)
                    print(f"code {code_version()}", flush=True)
                    print(
                        f"{args.seconds:g} s per case after {args.warmup:g} s warm-up,"
                        f" writers {','.join(map(str, args.writers))}, cases {','.join(args.cases)}",
                        flush=True,
                    )
                for case in args.cases:
                    if case == "raw":
                        result = await bench_raw(pool, writers, args.seconds, args.warmup)
                    else:
                        result = await bench_store(pool, case, writers, args.seconds, args.warmup)
                    results.append(result)
                    note = f"  ({result.note})" if result.note else ""
                    print(
                        f"  {case:<5}{writers:>3} writers: {result.rate:>8,.0f} events/s,"
                        f" p50 {result.percentile_ms(50):.2f} ms,"
                        f" p99 {result.percentile_ms(99):.2f} ms{note}",
                        flush=True,
                    )
        print_table(results)
    finally:
        await drop_database(admin, name)


def writer_counts(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def case_names(text: str) -> list[str]:
    return text.split(",")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.append",
        description=(
            "Append throughput of the event store (PlanService.handle) against raw single-row "
            "INSERTs, on a fresh database (embedded PostgreSQL unless DATABASE_URL is set)."
        ),
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measured seconds per case (default 5)"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="unmeasured seconds before each case (0.5)"
    )
    parser.add_argument(
        "--writers",
        type=writer_counts,
        default=[1, 4, 16],
        help="comma-separated concurrent writer counts (default 1,4,16)",
    )
    parser.add_argument(
        "--cases",
        type=case_names,
        default=["raw", "many", "hot"],
        help="comma-separated subset of raw,many,hot (default all)",
    )
    args = parser.parse_args(argv)
    if unknown := set(args.cases) - {"raw", "many", "hot"}:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if any(n < 1 for n in args.writers):
        parser.error("writer counts must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
