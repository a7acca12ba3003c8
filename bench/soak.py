"""Soak: a bounded run of steady writes and hundreds of churning sockets; nothing may creep.

    .venv/bin/python -m bench.soak [--minutes 3] [--sockets 500] [--rate 20] [--churn 5]

On a fresh database (embedded PostgreSQL in .data/bench unless DATABASE_URL is set) it starts
one `mapstream serve` process and:

1. setup: `--plans` plans, each with a few buyer viewers and `--prefill` writes (so the
   hub's per-plan buffers and the server's caches are full before the soak: what grows
   after that is not a cache filling up); then the server's RSS, open file descriptors
   and threads before any socket: the baseline of the run.
2. `--sockets` WebSocket clients (in this process) subscribe to the plans (snapshot, then
   live), spread evenly.
3. soak, `--minutes` long: open-loop HTTP writes at `--rate` commands/s round-robin over the
   plans (`update_plan` with a new title: the plan state keeps its size, so a growing
   server is not a bigger plan), while `--churn` sockets a second are dropped (half
   with a close frame, half by cutting the TCP connection, as a phone losing signal does)
   and reconnect at once, resuming with `since`. Every `--sample` seconds a progress line:
   the server's RSS (/proc/PID/status VmRSS), open fds (/proc/PID/fd), threads, and, from
   its /metrics, asyncio tasks (`mapstream_asyncio_tasks`) and open sockets; the commands,
   deliveries, reconnects and fan-out lag of the interval.
4. drain: every socket closed; after a few seconds the fds (and tasks) are sampled again and
   compared with the baseline of step 1.

At the end it prints the least-squares slopes of RSS (KiB/min), fds and tasks (per minute)
over the soak after `--warmup` seconds, the RSS change of each whole minute (does the growth
level off?), the fan-out lag p50/p99 per minute of the soak (the client's receive time minus
the event's `recorded_at`, taken before the append commits, so an upper bound of commit ->
socket that includes this process's own loop), and the verdicts: flat memory (slope under 1%
of the baseline RSS a minute), flat fds, no task leak (slope, and the count once drained),
lag of the last minute within 2x the first minute's p99 (+ 20 ms), no gap or duplicate on
any socket. RSS counts what the C allocator keeps as well as live objects, so it also prints
how many full garbage collections ran (from /metrics): none means cyclic garbage is still
in the figure. It prints and never asserts; processes and the database are cleaned up even
on failure, Ctrl-C or SIGTERM. `--server-env NAME=VALUE` passes settings to the server, e.g.
`MAPSTREAM_MALLOC_MMAP_THRESHOLD=0` to see the heap creep that server/memory.py prevents.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from bench.common import admin_url, code_version, run_until_signal, say, verdict
from bench.fanout import (
    Http,
    percentile,
    print_log_tails,
    raise_fd_limit,
    rss_kib,
)
from tests.support import ServerProcess, create_database, drop_database, token, with_database

OWNER = "owner@seller.example"
VIEWERS_PER_PLAN = 5
# verdict thresholds (see the module docstring)
MEMORY_SLOPE_SHARE = 0.01  # of the baseline RSS, per minute
FD_SLOPE_MAX = 2.0  # fds per minute
# tasks per minute: 5 per socket come and go with the churn; a leak of one per reconnect
# would be 300/min at the default churn
TASK_SLOPE_MAX = 5.0
# fds other than client connections above the baseline once every socket is closed: the
# PostgreSQL pool grows under load (up to MAPSTREAM_POOL_MAX, 20) and keeps idle connections
FD_DRAIN_SLACK = 25
LAG_GROWTH_MAX = 2.0  # last minute's p99 vs the first minute's
LAG_SLACK_MS = 20.0
FULL_GCS = 'python_gc_collections_total{generation="2"}'


# -- the server as seen from outside ----------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def client_sockets(pid: int, port: int) -> int:
    """The server's fds that are TCP connections on its listening port (clients, not
    PostgreSQL): socket inodes of /proc/PID/fd matched against /proc/PID/net/tcp{,6}."""
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                local_port = int(cols[1].rsplit(":", 1)[1], 16)
                # state 0A is LISTEN: the listening socket itself is not a client
                if local_port == port and cols[3] != "0A" and cols[9] in inodes:
                    count += 1
    return count


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)\s*$")


async def scrape(base: str) -> dict[str, float] | None:
    """Unlabelled samples of GET /metrics, or None when the server has no /metrics.

    A connection of its own each time: no keep-alive connection of the bench stays open."""
    try:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{base}/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    values: dict[str, float] = {}
    for line in r.text.splitlines():
        m = _METRIC.match(line)
        if m:
            with contextlib.suppress(ValueError):
                values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return values


def task_metric(values: dict[str, float] | None) -> str | None:
    """The name of a gauge of the server's asyncio tasks in /metrics, if it has one."""
    if "mapstream_asyncio_tasks" in (values or {}):
        return "mapstream_asyncio_tasks"
    for name in sorted(values or {}):
        if "{" not in name and (name.endswith("_tasks") or "asyncio_task" in name):
            return name
    return None


def socket_metric(values: dict[str, float] | None) -> str | None:
    for name in ("mapstream_sockets", "mapstream_websockets", "mapstream_ws_connections"):
        if name in (values or {}):
            return name
    return None


async def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait until `condition()` holds or `timeout` seconds pass; whether it holds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return float("nan")
    return 60.0 * sum((t - mx) * (v - my) for t, v in points) / sxx


# -- the sockets ------------------------------------------------------------------------------


class _Event(msgspec.Struct):
    version: int
    recorded_at: datetime


class _Frame(msgspec.Struct):
    op: str
    plan_id: str | None = None
    version: int | None = None
    event: _Event | None = None
    code: str | None = None
    message: str | None = None


_frames = msgspec.json.Decoder(_Frame)


@dataclass
class Clients:
    """What every socket saw, shared: deliveries and their lag, violations, closes."""

    start: float = 0.0  # time.time() when the soak starts: lag is bucketed by its minute
    lag_ms: dict[int, array[float]] = field(default_factory=dict)
    interval_lag_ms: array[float] = field(default_factory=lambda: array("d"))
    delivered: int = 0
    duplicates: int = 0
    gaps: int = 0
    reconnects: int = 0
    live: int = 0
    server_closes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    stopping: bool = False


class Sock:
    def __init__(self, clients: Clients, url: str, tok: str, plan_id: str) -> None:
        self.clients = clients
        self.url = url
        self.token = tok
        self.plan_id = plan_id
        self.last: int | None = None
        self.ws: Any = None
        self.is_live = False
        self.dropping = False

    async def run(self, gate: asyncio.Semaphore) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        c = self.clients
        backoff = 0.05
        while not c.stopping:
            code: int | None = None
            try:
                async with gate:  # bounded concurrent handshakes
                    ws = await connect(
                        self.url, ping_interval=None, open_timeout=30, close_timeout=2
                    )
                    await ws.send(json.dumps({"op": "auth", "token": self.token}))
                    sub: dict[str, Any] = {"op": "subscribe", "plan_id": self.plan_id}
                    if self.last is not None:
                        sub["since"] = self.last
                    await ws.send(json.dumps(sub))
                self.ws = ws
                async with ws:
                    async for raw in ws:
                        f = _frames.decode(raw)
                        if f.op == "event" and f.event is not None:
                            v = f.event.version
                            if self.last is not None and v != self.last + 1:
                                if v <= self.last:
                                    c.duplicates += 1
                                    continue
                                c.gaps += 1
                            self.last = v
                            c.delivered += 1
                            at = f.event.recorded_at.timestamp()
                            if at >= c.start > 0:
                                lag = (time.time() - at) * 1000
                                minute = int((at - c.start) // 60)
                                c.lag_ms.setdefault(minute, array("d")).append(lag)
                                c.interval_lag_ms.append(lag)
                        elif f.op == "snapshot":
                            if self.last is None:
                                self.last = f.version
                        elif f.op == "live":
                            if not self.is_live:
                                self.is_live = True
                                c.live += 1
                            backoff = 0.05
                        elif f.op == "error":
                            c.errors[f"{f.code}: {f.message}"[:120]] += 1
                code = ws.close_code
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                c.errors[f"connect: {type(exc).__name__}: {exc}"[:120]] += 1
            finally:
                self.ws = None
            if c.stopping:
                return
            if self.dropping:  # our own churn: reconnect at once
                self.dropping = False
            else:
                if code is not None:
                    c.server_closes[code] += 1
                if code in (4001, 4003):
                    return
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 1.0)
            c.reconnects += 1

    async def drop(self, abrupt: bool) -> None:
        """Churn: close this socket (with a close frame, or by cutting TCP) so it resumes."""
        ws = self.ws
        if ws is None or self.dropping:
            return
        self.dropping = True
        if abrupt:
            ws.transport.abort()
        else:
            with contextlib.suppress(Exception):
                await ws.close()


# -- the run ----------------------------------------------------------------------------------


class _Answer(msgspec.Struct):
    version: int


_answer = msgspec.json.Decoder(_Answer)


@dataclass
class Sample:
    t: float  # seconds since the soak started
    rss_kib: int
    fds: int
    client_fds: int  # of which TCP connections of clients (sockets, the bench's HTTP)
    threads: int
    tasks: float | None = None
    sockets: float | None = None
    full_gcs: float | None = None  # full (generation 2) garbage collections so far


async def run(args: argparse.Namespace) -> int:
    fd_limit = raise_fd_limit()
    where = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"
    admin = await asyncio.to_thread(admin_url)
    name = await create_database(admin)
    url = with_database(admin, name)
    tmp = Path(tempfile.mkdtemp(prefix="mapstream-soak-"))
    server = ServerProcess(url, tmp, env={"MAPSTREAM_LOG_LEVEL": "warning", **args.server_env})
    clients = Clients()
    socks: list[Sock] = []
    tasks: list[asyncio.Task[None]] = []
    ok = False
    try:
        conn = await asyncpg.connect(url)
        try:
            pg = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        say(
            f"PostgreSQL {pg} ({where}), database {name}; code {code_version()};"
            f" {os.cpu_count()} cores; fd limit {fd_limit}"
        )
        await server.start()
        assert server.proc is not None
        pid = server.proc.pid
        say(f"server {server.url} (pid {pid})")
        owner = token(OWNER, ttl=4 * 3600 + int(args.minutes * 60))
        http = Http(server.port)
        idle: list[Http] = []  # keep-alive connections: one per write in flight
        versions: dict[str, int] = {}

        async def command(plan_id: str, kind: str, data: dict[str, Any], cid: str) -> int:
            body = msgspec.json.encode({"type": kind, "data": data, "command_id": cid})
            conn = idle.pop() if idle else Http(server.port)
            try:
                for _ in range(50):
                    try:
                        status, raw = await conn.post(f"/plans/{plan_id}/commands", body, owner)
                    except (OSError, asyncio.IncompleteReadError) as exc:
                        status, raw = 599, str(exc).encode()
                    if status == 200:
                        version = _answer.decode(raw).version
                        versions[plan_id] = max(versions.get(plan_id, 0), version)
                        return version
                    if status not in (503, 599):
                        raise RuntimeError(f"{kind} on {plan_id}: {status} {raw[:300]!r}")
                    await asyncio.sleep(0.05)
                raise RuntimeError(f"{kind} on {plan_id}: still {status} after 50 tries")
            finally:
                idle.append(conn)

        # 1. setup -----------------------------------------------------------------------
        t = time.perf_counter()
        plan_ids = [f"soak-{p:03}" for p in range(args.plans)]
        for plan_id in plan_ids:
            body = msgspec.json.encode(
                {
                    "plan_id": plan_id,
                    "title": f"Soak {plan_id}",
                    "buyer_org": "Contoso",
                    "seller_org": "Northwind",
                    "side": "seller",
                }
            )
            status, raw = await http.post("/plans", body, owner)
            if status != 201:
                raise RuntimeError(f"create {plan_id}: {status} {raw[:300]!r}")
            for v in range(VIEWERS_PER_PLAN):
                await command(
                    plan_id,
                    "add_member",
                    {"email": f"viewer{v}@buyer.example", "side": "buyer", "role": "viewer"},
                    f"member-{v}",
                )

        async def prefill(plan_id: str) -> None:
            for i in range(args.prefill):
                title = f"Soak {plan_id} warm-up {i}"
                await command(plan_id, "update_plan", {"title": title}, f"warm-{i}")

        await asyncio.gather(*(prefill(p) for p in plan_ids))
        first = await scrape(server.url)
        tasks_name, sockets_name = task_metric(first), socket_metric(first)
        for keep_alive in [http, *idle]:  # the baseline counts no connection of the bench
            keep_alive.close()
        idle.clear()
        await asyncio.sleep(1.0)

        async def sample(t: float, scraped: bool = True) -> Sample:
            """The server now: /proc first, then /metrics (its connection is not counted)."""
            s = Sample(
                t, rss_kib(pid), open_fds(pid), client_sockets(pid, server.port), threads(pid)
            )
            values = await scrape(server.url) if scraped and first is not None else None
            if values is not None:
                s.tasks = values.get(tasks_name) if tasks_name else None
                s.sockets = values.get(sockets_name) if sockets_name else None
                s.full_gcs = values.get(FULL_GCS)
            return s

        base = await sample(0.0)
        say(
            f"[1/4] setup: {args.plans} plans with {VIEWERS_PER_PLAN} buyer viewers and"
            f" {args.prefill} warm-up writes each ({time.perf_counter() - t:.1f} s); baseline: RSS {base.rss_kib:,} KiB,"
            f" {base.fds} fds, {base.threads} threads"
            + (f", {base.tasks:,.0f} tasks ({tasks_name})" if base.tasks is not None else "")
        )
        if first is None:
            say("      the server has no /metrics: sampling RSS, fds and threads only")
        elif tasks_name is None:
            say(
                "      /metrics has no asyncio task gauge: task leaks are not measured"
                " (RSS, fds and threads are)"
            )

        # 2. sockets ---------------------------------------------------------------------
        t = time.perf_counter()
        viewer_tokens = [
            token(f"viewer{v}@buyer.example", ttl=4 * 3600 + int(args.minutes * 60))
            for v in range(VIEWERS_PER_PLAN)
        ]
        socks = [
            Sock(
                clients,
                server.ws_url,
                viewer_tokens[i % VIEWERS_PER_PLAN],
                plan_ids[i % args.plans],
            )
            for i in range(args.sockets)
        ]
        gate = asyncio.Semaphore(50)
        tasks = [asyncio.create_task(s.run(gate)) for s in socks]
        await wait_for(lambda: clients.live >= len(socks), 60)
        say(
            f"[2/4] sockets: {clients.live}/{len(socks)} live in"
            f" {time.perf_counter() - t:.1f} s; RSS {rss_kib(pid):,} KiB, {open_fds(pid)} fds"
        )
        if clients.live < len(socks):
            raise RuntimeError(f"only {clients.live} of {len(socks)} sockets went live in 60 s")

        # 3. soak ------------------------------------------------------------------------
        say(
            f"[3/4] soak: {args.minutes:g} min, {args.rate:g} writes/s, {args.churn:g} socket"
            f" drops/s, a sample every {args.sample:g} s"
        )
        samples: list[Sample] = []
        write_errors: Counter[str] = Counter()
        written = 0
        inflight: set[asyncio.Task[None]] = set()
        seq = 0

        async def write(plan_id: str, n: int) -> None:
            nonlocal written
            try:
                await command(plan_id, "update_plan", {"title": f"Soak {plan_id} #{n}"}, f"t-{n}")
                written += 1
            except Exception as exc:
                write_errors[str(exc)[:120]] += 1

        async def writer(until: float) -> None:
            nonlocal seq
            t0 = time.perf_counter()
            k = 0
            while (due := t0 + k / args.rate) < until:
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                seq += 1
                task = asyncio.create_task(write(plan_ids[k % len(plan_ids)], seq))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                k += 1

        async def churner(until: float) -> None:
            t0 = time.perf_counter()
            k = 0
            while (due := t0 + k / args.churn) < until:
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                await random.choice(socks).drop(abrupt=k % 2 == 1)
                k += 1

        clients.start = time.time()
        t0 = time.perf_counter()
        end = t0 + args.minutes * 60
        background = [
            asyncio.create_task(writer(end)),
            asyncio.create_task(churner(end) if args.churn > 0 else asyncio.sleep(0)),
        ]
        last = (0.0, 0, 0, 0)  # t, written, delivered, reconnects
        while (now := time.perf_counter()) < end + 0.01:
            await asyncio.sleep(min(args.sample, max(0.0, end - now)) or 0.01)
            el = time.perf_counter() - t0
            s = await sample(el)
            samples.append(s)
            dt = max(el - last[0], 1e-9)
            lags = sorted(clients.interval_lag_ms)
            clients.interval_lag_ms = array("d")
            line = (
                f"      {el:6.1f} s: RSS {s.rss_kib:,} KiB, {s.fds} fds ({s.client_fds} clients),"
                f" {s.threads} threads"
                + (f", {s.tasks:,.0f} tasks" if s.tasks is not None else "")
                + (f", {s.sockets:,.0f} sockets" if s.sockets is not None else "")
                + f"; {(written - last[1]) / dt:,.0f} writes/s,"
                f" {(clients.delivered - last[2]) / dt:,.0f} deliveries/s,"
                f" {(clients.reconnects - last[3]) / dt:,.1f} reconnects/s;"
                f" lag p50 {percentile(lags, 50):.0f} ms p99 {percentile(lags, 99):.0f} ms;"
                f" violations {clients.duplicates + clients.gaps}"
            )
            say(line)
            last = (el, written, clients.delivered, clients.reconnects)
        await asyncio.gather(*background)
        if inflight:
            await asyncio.wait(inflight, timeout=30)

        # every socket reaches its plan's last version (nothing lost at the end)
        await wait_for(lambda: all((k.last or 0) >= versions[k.plan_id] for k in socks), 30)
        behind = sum(1 for k in socks if (k.last or 0) < versions[k.plan_id])

        # 4. drain -----------------------------------------------------------------------
        clients.stopping = True
        for k in socks:
            if k.ws is not None:
                with contextlib.suppress(Exception):
                    await k.ws.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks = []
        for keep_alive in idle:
            keep_alive.close()
        await asyncio.sleep(args.settle)
        drained = await sample(0.0)
        say(
            f"[4/4] drain: every socket closed, {args.settle:g} s later: RSS"
            f" {drained.rss_kib:,} KiB, {drained.fds} fds of which {drained.client_fds} client"
            f" connections (baseline {base.fds}, {base.client_fds}),"
            f" {drained.threads} threads (baseline {base.threads})"
            + (
                f", {drained.tasks:,.0f} tasks (baseline {base.tasks:,.0f})"
                if drained.tasks is not None and base.tasks is not None
                else ""
            )
            + (f", {drained.sockets:,.0f} sockets" if drained.sockets is not None else "")
        )

        # results ------------------------------------------------------------------------
        steady = [s for s in samples if s.t >= args.warmup] or samples
        rss_slope = slope_per_minute([(s.t, s.rss_kib) for s in steady])
        fd_slope = slope_per_minute([(s.t, s.fds) for s in steady])
        thread_slope = slope_per_minute([(s.t, s.threads) for s in steady])
        task_points = [(s.t, s.tasks) for s in steady if s.tasks is not None]
        task_slope = slope_per_minute(task_points) if task_points else None
        say("")
        say(
            f"results (slopes over {len(steady)} samples after {args.warmup:g} s of warm-up;"
            f" {written:,} writes, {clients.delivered:,} deliveries, {clients.reconnects:,}"
            f" reconnects)"
        )
        say(f"  RSS     {rss_slope:+,.0f} KiB/min (baseline {base.rss_kib:,} KiB)")
        say(f"          by minute of the soak: {rss_by_minute(samples)}")
        say(f"  fds     {fd_slope:+,.2f} /min")
        say(f"  threads {thread_slope:+,.2f} /min")
        gcs = [s.full_gcs for s in (steady[0], samples[-1]) if s.full_gcs is not None]
        if len(gcs) == 2:
            say(
                f"  full garbage collections in the server over the slope's samples:"
                f" {gcs[1] - gcs[0]:.0f} (python_gc_collections_total, generation 2)"
                + (
                    "; none ran, so the RSS slope includes cyclic garbage not yet collected"
                    if gcs[1] == gcs[0]
                    else ""
                )
            )
        if task_slope is not None:
            say(f"  tasks   {task_slope:+,.1f} /min")
        else:
            say("  tasks   not measured (the server exposes no asyncio task gauge)")
        say("  fan-out lag by minute of the soak (receive time - recorded_at):")
        minutes = sorted(clients.lag_ms)
        for m in minutes:
            lags = sorted(clients.lag_ms[m])
            say(
                f"    minute {m + 1}: {len(lags):,} deliveries, p50 {percentile(lags, 50):.0f} ms,"
                f" p99 {percentile(lags, 99):.0f} ms, max {lags[-1]:.0f} ms"
            )
        if write_errors:
            say(f"  write errors: {dict(write_errors.most_common(5))}")
        if clients.server_closes:
            say(f"  closes by the server: {dict(clients.server_closes)}")
        if clients.errors:
            say(f"  client errors: {dict(clients.errors.most_common(5))}")

        say("targets:")
        memory_ok = rss_slope <= MEMORY_SLOPE_SHARE * base.rss_kib
        say(
            f"  memory flat (slope <= {MEMORY_SLOPE_SHARE:.0%} of the baseline RSS a minute,"
            f" {MEMORY_SLOPE_SHARE * base.rss_kib:,.0f} KiB/min): {rss_slope:+,.0f} KiB/min"
            f" {verdict(memory_ok)}"
        )
        other_fds = drained.fds - drained.client_fds
        fds_ok = (
            fd_slope <= FD_SLOPE_MAX
            and drained.client_fds == 0
            and other_fds <= base.fds - base.client_fds + FD_DRAIN_SLACK
        )
        say(
            f"  fds flat (slope <= {FD_SLOPE_MAX:g}/min; once the sockets are closed no client"
            f" connection left and other fds within {FD_DRAIN_SLACK} of the baseline, for the"
            f" database pool): {fd_slope:+.2f}/min, {drained.client_fds} client connections,"
            f" {other_fds} other fds vs {base.fds - base.client_fds} {verdict(fds_ok)}"
        )
        if drained.tasks is not None and base.tasks is not None and task_slope is not None:
            tasks_ok = drained.tasks <= base.tasks + 10 and task_slope <= TASK_SLOPE_MAX
            say(
                f"  no task leak (slope <= {TASK_SLOPE_MAX:g}/min; once the sockets are closed"
                f" within 10 of the baseline): {task_slope:+.1f}/min, {drained.tasks:,.0f} vs"
                f" {base.tasks:,.0f} {verdict(tasks_ok)}"
            )
        else:
            say("  no task leak: not measured (no asyncio task gauge in /metrics)")
        if len(minutes) >= 2:
            p99_first = percentile(sorted(clients.lag_ms[minutes[0]]), 99)
            p99_last = percentile(sorted(clients.lag_ms[minutes[-1]]), 99)
            bound = LAG_GROWTH_MAX * p99_first + LAG_SLACK_MS
            say(
                f"  lag bounded (last minute's p99 <= {LAG_GROWTH_MAX:g}x the first's +"
                f" {LAG_SLACK_MS:g} ms = {bound:.0f} ms): {p99_last:.0f} ms, ratio"
                f" {p99_last / max(p99_first, 1e-9):.2f}x {verdict(p99_last <= bound)}"
            )
        else:
            say("  lag bounded: run at least 2 minutes to compare the last minute with the first")
        violations = clients.duplicates + clients.gaps
        say(
            f"  every socket got every version once, in order: {violations} duplicates/gaps,"
            f" {behind} sockets behind at the end {verdict(violations == 0 and behind == 0)}"
        )
        ok = True
        return 0
    finally:
        clients.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.stop()
        with contextlib.suppress(Exception):
            await drop_database(admin, name)
        if not ok:
            print_log_tails(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def rss_by_minute(samples: list[Sample]) -> str:
    """The RSS change over each whole minute of the soak (the first minute from the first
    sample, once every socket is open), to see whether the growth levels off."""
    deltas: list[str] = []
    if not samples:
        return "(no sample)"
    start = samples[0].rss_kib
    minute = 1
    for s in samples:
        if s.t >= 60 * minute - 0.5:
            deltas.append(f"{s.rss_kib - start:+,} KiB")
            start = s.rss_kib
            minute += 1
    return ", ".join(deltas) or "(under a minute)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=(
            "Soak one server process with steady writes and churning sockets; print the slopes"
            " of its memory, fds and tasks and the fan-out lag per minute. Fresh database"
            " (embedded PostgreSQL unless DATABASE_URL is set), dropped at the end."
        ),
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="soak length (default 3)")
    parser.add_argument("--sockets", type=int, default=500, help="WebSockets (default 500)")
    parser.add_argument("--plans", type=int, default=20, help="plans (default 20)")
    parser.add_argument("--rate", type=float, default=20.0, help="writes/s (default 20)")
    parser.add_argument(
        "--churn", type=float, default=5.0, help="socket drops a second (default 5; 0: none)"
    )
    parser.add_argument(
        "--sample", type=float, default=5.0, help="seconds between samples (default 5)"
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=300,
        help="writes per plan before the baseline, so the hub's per-plan buffers (256 events)"
        " are full when the soak starts (default 300)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=20.0,
        help="seconds of the soak left out of the slopes (caches filling; default 20)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds after closing every socket before the drain sample (default 5)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the server process (repeatable), e.g."
        " MAPSTREAM_MALLOC_MMAP_THRESHOLD=0 for glibc's default allocator settings",
    )
    args = parser.parse_args(argv)
    server_env: dict[str, str] = {}
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--server-env takes NAME=VALUE, not {item!r}")
        server_env[name] = value
    args.server_env = server_env
    for name in ("sockets", "plans"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")
    if args.minutes <= 0 or args.rate <= 0 or args.sample <= 0 or args.churn < 0:
        parser.error("--minutes, --rate and --sample must be positive, --churn not negative")
    if args.plans > args.sockets:
        parser.error("--plans cannot exceed --sockets")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        sys.exit(asyncio.run(run_until_signal(run, args, "server and database")))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
