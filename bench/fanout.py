"""Live-hub fan-out: delivery latency, memory per socket and append cost of 1,000 subscribers.

    .venv/bin/python -m bench.fanout [--sockets 1000] [--rate 200] [--seconds 20]

On a fresh database (embedded PostgreSQL in .data/bench unless DATABASE_URL is set) it starts
TWO `mapstream serve` processes and runs five phases:

1. setup: `--plans` plans for the subscribers (each with one buyer viewer per socket) and as
   many for the baseline, created over HTTP. The default, 200 plans for 1,000 sockets, is 5
   people watching each deal room live (a champion, an account executive, a solutions
   engineer, procurement...); `--plans 20` (50 per plan) is the stress case. Each delivery
   costs a socket write, and on one machine the clients' loopback TCP receive path is
   charged to the same 2 cores as the writers, so the append ratio falls with viewers per
   plan (see the README's figures).
2. appends without subscribers: `--writers` closed-loop HTTP writers for `--append-seconds`
   against server A, on the baseline plans: appends/s with no socket connected.
3. `--sockets` WebSocket clients subscribe (snapshot, then live) to the subscriber plans,
   spread evenly over both servers, held by `--clients` client processes of their own (so the
   measuring loop is not the bottleneck). Each server's RSS (/proc/PID/status VmRSS) before
   and after, divided by its socket count: memory per idle socket. The clients offer
   permessage-deflate as browsers do (`--compression none` to compare).
4. appends with subscribers: the same closed loop as 2, on the subscribed plans, so every
   append is fanned out to the sockets while it runs (`--closed-on other`: on plans nobody
   subscribes to, the cost of connected sockets alone). Ratio with/without.
   Phases 2-4 run `--rounds` times, interleaved (default 3): before each later round every
   socket is closed, and after the round's baseline each connects again and resumes with
   `since`. The ratio is the mean rate with over the mean rate without, so a drift of the
   machine or the database during the run weighs on both sides; each round's ratio is shown.
5. fan-out: open-loop writers append at `--rate` events/s for `--seconds`, via HTTP to both
   servers in turn, round-robin over the plans. Each delivery's latency is the client's
   receive time minus the event's `recorded_at` (one clock: same machine). `recorded_at` is
   taken when the server decides the command, before the append transaction, so the figure
   includes the commit itself and is an upper bound of commit -> socket; the same deliveries
   are also shown measured from the HTTP answer of their append (after the commit).

Every client checks that each socket gets every version of its plan once, in order (a
duplicate, a gap or a missing tail is a violation; a 4008/1012 close is resumed with `since`
and counted as a reconnect). Then it prints the figures and the targets as PASS/MISS. Each
phase prints the cores used by the servers, the client processes, the bench, PostgreSQL and
other processes, and Linux CPU/IO pressure: on a shared machine the figures depend on what
else runs, and a warning says so. It prints and never asserts. Processes and the database
are cleaned up even on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from bench.common import admin_url, code_version, run_until_signal, say, verdict
from server.client import FeedClosed, PlanFeed
from tests.support import ROOT, ServerProcess, create_database, drop_database, token, with_database

OWNER = "owner@seller.example"
# A realistic comment (about 300 bytes of event JSON), as in bench.append.
TEXT = (
    "Legal reviewed the MSA redlines on Tuesday; two clauses remain open (liability cap and "
    "data residency). Procurement needs the updated security questionnaire before the "
    "steering committee, so we moved the sign-off milestone by a week. Next sync Thursday."
)
TARGET_P99_MS = 150.0
TARGET_RATIO = 0.8
TARGET_KIB_PER_SOCKET = 64.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_fd_limit(want: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


# ---------------------------------------------------------------------------------------------
# the socket clients: `python -m bench.fanout --worker`, driven by JSON lines on stdin/stdout
# ---------------------------------------------------------------------------------------------


@dataclass
class WorkerState:
    received_at: array[float] = field(default_factory=lambda: array("d"))
    recorded_at: array[float] = field(default_factory=lambda: array("d"))
    events: int = 0
    duplicates: int = 0
    gaps: int = 0
    live: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class Sock:
    def __init__(self, state: WorkerState, url: str, tok: str, plan_id: str) -> None:
        self.state = state
        self.url = url
        self.token = tok
        self.plan_id = plan_id
        self.last: int | None = None
        self.is_live = False
        self.fatal = False
        self.feed: PlanFeed | None = None
        self.done_reconnects = 0
        self.done_close_codes: list[int] = []

    async def run(self, gate: asyncio.Semaphore, compression: str | None) -> None:
        """Follow the plan with `server.client.PlanFeed` (the client users are shown), which
        reconnects with backoff and resumes with `since`; check every version it yields."""
        since = {self.plan_id: self.last} if self.last is not None else None
        feed = PlanFeed(
            self.url,
            self.token,
            [self.plan_id],
            since=since,
            max_backoff=1.0,
            connect_options={
                "compression": compression,
                "ping_interval": None,
                "open_timeout": 60,
                "close_timeout": 2,
            },
        )
        self.feed = feed
        try:
            messages = aiter(feed)
            async with gate:  # bounded concurrent handshakes when a round's sockets start
                while not self.is_live:
                    self.on_message(await anext(messages))
            async for message in messages:
                self.on_message(message)
        except FeedClosed:
            self.fatal = True
        except StopAsyncIteration:
            pass
        finally:
            self.feed = None
            self.done_reconnects += feed.reconnects
            self.done_close_codes.extend(feed.close_codes)

    @property
    def reconnects(self) -> int:
        return self.done_reconnects + (self.feed.reconnects if self.feed is not None else 0)

    def close_codes(self) -> list[int]:
        return self.done_close_codes + (self.feed.close_codes if self.feed is not None else [])

    def on_message(self, m: dict[str, Any]) -> None:
        st = self.state
        op = m["op"]
        if op == "event":
            now = time.time()
            event = m["event"]
            v = event["version"]
            last = self.last
            if last is not None and v != last + 1:
                if v <= last:
                    st.duplicates += 1
                    return
                st.gaps += 1
            self.last = v
            st.events += 1
            st.received_at.append(now)
            st.recorded_at.append(datetime.fromisoformat(event["recorded_at"]).timestamp())
        elif op == "snapshot":
            if self.last is None:
                self.last = m["version"]
        elif op == "live":
            if not self.is_live:
                self.is_live = True
                st.live += 1
        elif op == "error":
            st.errors[f"{m.get('code')}: {m.get('message')}"] += 1


def behind(socks: list[Sock], expected: dict[str, int]) -> int:
    """Sockets (not closed for good) that have not yet received their plan's last version."""
    return sum(1 for s in socks if not s.fatal and (s.last or 0) < expected.get(s.plan_id, 0))


async def caught_up(socks: list[Sock], expected: dict[str, int], timeout: float) -> int:
    """Wait until every socket has its plan's `expected` version; the sockets still behind."""
    deadline = time.monotonic() + timeout
    while True:
        n = behind(socks, expected)
        if not n or time.monotonic() >= deadline:
            return n
        await asyncio.sleep(0.05)


def _emit(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


async def worker_main() -> None:
    # the bench stops its clients (a "stop" line, or end of stdin): a Ctrl-C meant for the
    # bench must not kill them before it has collected their report
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    cfg = json.loads(await stdin.readline())
    st = WorkerState()
    socks = [Sock(st, url, tok, plan_id) for url, tok, plan_id in cfg["sockets"]]
    gate = asyncio.Semaphore(cfg["connect_concurrency"])
    tasks = [asyncio.create_task(s.run(gate, cfg["compression"])) for s in socks]

    async def stats() -> None:
        frozen = False
        while True:
            if not frozen and st.live == len(socks):
                # long-lived connection objects out of the collector's way: no gen2 pauses
                gc.collect()
                gc.freeze()
                frozen = True
            _emit(
                {
                    "type": "stats",
                    "live": st.live,
                    "events": st.events,
                    "reconnects": sum(s.reconnects for s in socks),
                    "violations": st.duplicates + st.gaps,
                    "fatal": sum(s.fatal for s in socks),
                }
            )
            await asyncio.sleep(0.5)

    ticker = asyncio.create_task(stats())
    try:
        while line := await stdin.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "sync":
                n = await caught_up(socks, cmd["expected"], cmd["timeout"])
                _emit({"type": "synced", "id": cmd["id"], "behind": n})
            elif cmd["cmd"] == "report":
                expected = cmd["expected"]
                windows = {}
                for name, (t0, t1) in cmd["windows"].items():
                    # the deliveries of the events recorded in the window
                    pick = [i for i, c in enumerate(st.recorded_at) if t0 <= c < t1]
                    windows[name] = [
                        base64.b64encode(array("d", (col[i] for i in pick)).tobytes()).decode()
                        for col in (st.recorded_at, st.received_at)
                    ]
                missing = sum(max(0, expected.get(s.plan_id, 0) - (s.last or 0)) for s in socks)
                _emit(
                    {
                        "type": "report",
                        "windows": windows,
                        "duplicates": st.duplicates,
                        "gaps": st.gaps,
                        "missing": missing,
                        "behind_sockets": sum(
                            1 for s in socks if (s.last or 0) < expected.get(s.plan_id, 0)
                        ),
                        "never_live": sum(1 for s in socks if not s.is_live),
                        "reconnects": sum(s.reconnects for s in socks),
                        "close_codes": {
                            str(k): v
                            for k, v in Counter(c for s in socks for c in s.close_codes()).items()
                        },
                        "errors": dict(st.errors.most_common(5)),
                    }
                )
            elif cmd["cmd"] == "disconnect":
                # close every socket (a normal close); each keeps the last version it got
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for s in socks:
                    s.is_live = False
                st.live = 0
                _emit({"type": "disconnected", "id": cmd["id"]})
            elif cmd["cmd"] == "connect":
                # connect again and resume with `since` = the last version each socket got
                tasks = [asyncio.create_task(s.run(gate, cfg["compression"])) for s in socks]
            elif cmd["cmd"] == "stop":
                break
    finally:
        ticker.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, ticker, return_exceptions=True)


# ---------------------------------------------------------------------------------------------
# the bench: servers, HTTP writers, the client processes, the phases
# ---------------------------------------------------------------------------------------------


class Http:
    """A minimal HTTP/1.1 keep-alive client for JSON POSTs.

    Much cheaper per request than httpx, so the bench's own CPU stays small next to the
    servers' on a 2-core machine.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, bearer: str) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.reader, self.writer
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n"
                f"authorization: Bearer {bearer}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            keep = True
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep = False
            data = await reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        if not keep:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class _Recorded(msgspec.Struct):
    recorded_at: datetime


class _Answer(msgspec.Struct):
    version: int
    events: list[_Recorded] = []


_answer = msgspec.json.Decoder(_Answer)


@dataclass
class Writes:
    """Appends done in one phase: per plan the last version acked, latencies, errors."""

    versions: dict[str, int] = field(default_factory=dict)
    per_plan: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    # recorded_at of the events appended -> when the HTTP answer was read (commit is before)
    acked_at: dict[float, float] = field(default_factory=dict)
    done: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.owner = token(OWNER, ttl=7200)
        self.versions: dict[str, int] = {}  # last acked version of every plan
        self.seq = 0
        self.free: dict[int, list[Http]] = {}

    async def command(
        self, port: int, plan_id: str, kind: str, data: dict[str, Any], writes: Writes | None
    ) -> None:
        self.seq += 1
        command_id = f"b-{self.seq}"
        body = msgspec.json.encode({"type": kind, "data": data, "command_id": command_id})
        pool = self.free.setdefault(port, [])
        conn = pool.pop() if pool else Http(port)
        t0 = time.perf_counter()
        try:
            for attempt in range(20):
                try:
                    status, raw = await conn.post(f"/plans/{plan_id}/commands", body, self.owner)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    status, raw = 599, str(exc).encode()
                if status == 200:
                    break
                if writes is not None:
                    writes.errors[f"{status} {raw[:120].decode(errors='replace')}"] += 1
                if status not in (503, 599) or attempt == 19:
                    raise RuntimeError(f"{kind} on {plan_id}: {status} {raw[:300]!r}")
                await asyncio.sleep(0.05)  # retry, same command_id
        finally:
            pool.append(conn)
        acked = time.time()
        answer = _answer.decode(raw)
        version = answer.version
        if version > self.versions.get(plan_id, 0):
            self.versions[plan_id] = version
        if writes is not None:
            writes.latencies.append(time.perf_counter() - t0)
            for e in answer.events:
                at = e.recorded_at.timestamp()
                writes.acked_at[at] = min(writes.acked_at.get(at, acked), acked)
            writes.done += 1
            writes.per_plan[plan_id] += 1
            if version > writes.versions.get(plan_id, 0):
                writes.versions[plan_id] = version

    async def create_plan(self, port: int, plan_id: str) -> None:
        body = msgspec.json.encode(
            {
                "plan_id": plan_id,
                "title": f"Fan-out {plan_id}",
                "buyer_org": "Contoso",
                "seller_org": "Northwind",
                "side": "seller",
            }
        )
        status, raw = await Http(port).post("/plans", body, self.owner)
        if status != 201:
            raise RuntimeError(f"create {plan_id}: {status} {raw[:300]!r}")
        self.versions[plan_id] = _answer.decode(raw).version

    async def comment(self, port: int, plan_id: str, writes: Writes) -> None:
        await self.command(port, plan_id, "add_comment", {"item_id": "plan", "text": TEXT}, writes)

    async def closed_loop(
        self, port: int, plan_ids: list[str], progress: Any
    ) -> tuple[float, Writes]:
        """`--writers` writers loop for `--append-seconds` (after 0.5 s warm-up): appends/s."""
        args = self.args
        writes = Writes()
        start = time.perf_counter()
        measure_from = start + 0.5
        stop_at = measure_from + args.append_seconds
        counted = 0
        last_done = measure_from

        async def writer(w: int) -> None:
            nonlocal counted, last_done
            i = 0
            while (t0 := time.perf_counter()) < stop_at:
                await self.comment(port, plan_ids[(i * args.writers + w) % len(plan_ids)], writes)
                i += 1
                if t0 >= measure_from:
                    counted += 1
                    last_done = max(last_done, time.perf_counter())

        async with asyncio.TaskGroup() as tg:
            for w in range(args.writers):
                tg.create_task(writer(w))
            tg.create_task(progress(lambda: writes.done, stop_at))
        return counted / (last_done - measure_from), writes

    async def paced(
        self, ports: list[int], plan_ids: list[str], progress: Any
    ) -> tuple[float, float, Writes, float]:
        """Open loop: command k is sent at start + k/rate, whatever the earlier ones do."""
        args = self.args
        writes = Writes()
        tasks: set[asyncio.Task[None]] = set()
        start = time.time()
        t0 = time.perf_counter()
        end = t0 + args.seconds
        total = int(args.rate * args.seconds)
        max_lag = 0.0
        ticker = asyncio.create_task(progress(lambda: writes.done, end))
        for k in range(total):
            due = t0 + k / args.rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                max_lag = max(max_lag, now - due)
            task = asyncio.create_task(
                self.comment(ports[k % len(ports)], plan_ids[k % len(plan_ids)], writes)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent_by = time.time()
        if tasks:
            await asyncio.gather(*tasks)
        await ticker
        return start, sent_by, writes, max_lag


class Worker:
    """One client process holding a share of the sockets."""

    def __init__(self, index: int, sockets: list[tuple[str, str, str]], log: Path) -> None:
        self.index = index
        self.sockets = sockets
        self.log_path = log
        self.proc: asyncio.subprocess.Process | None = None
        self.stats: dict[str, int] = {"live": 0, "events": 0, "reconnects": 0, "violations": 0}
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, compression: str | None) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.fanout",
                "--worker",
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=2**28,
            )
        self._reader = asyncio.create_task(self._read())
        await self.send(
            {"sockets": self.sockets, "compression": compression, "connect_concurrency": 50}
        )

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if msg["type"] == "stats":
                self.stats = msg
            else:
                await self.replies.put(msg)

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        await self.proc.stdin.drain()

    async def reply(self, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                get = asyncio.create_task(self.replies.get())
                assert self._reader is not None
                done, _ = await asyncio.wait(
                    {get, self._reader}, return_when=asyncio.FIRST_COMPLETED
                )
                if get in done:
                    return get.result()
                get.cancel()
                raise RuntimeError(
                    f"client process {self.index} exited; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            await self.send({"cmd": "stop"})
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


# -- process accounting -----------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def parent_pid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def postmaster_of(backend_pid: int) -> int:
    """The local postmaster serving a backend, or 0 when PostgreSQL runs elsewhere."""
    parent = parent_pid(backend_pid)
    with contextlib.suppress(OSError):
        if Path(f"/proc/{parent}/comm").read_text().strip() == "postgres":
            return parent
    return 0


def children_of(parent: int) -> list[int]:
    """`parent` and its child processes (a postmaster's backends and workers)."""
    if not parent:
        return []
    return [parent] + [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and parent_pid(int(e.name)) == parent
    ]


def pressure(kind: str) -> float:
    """Microseconds some task waited for `kind` (cpu, io: Linux PSI), or -1 without PSI."""
    try:
        some = Path(f"/proc/pressure/{kind}").read_text().split("\n", 1)[0]
    except OSError:
        return -1.0
    return float(some.rsplit("total=", 1)[1])


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine so far, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / CLK_TCK, sum(parts) / CLK_TCK


class CpuMeter:
    """Cores used per process group between `start()` and `stop()`."""

    # the most cores used by processes other than the bench's in any phase: a shared machine
    worst_other = 0.0

    def __init__(self, groups: dict[str, list[int]], postmaster: int) -> None:
        self.groups = groups
        self.postmaster = postmaster

    def snapshot(self) -> dict[str, float]:
        pids = {**self.groups, "postgres": children_of(self.postmaster)}
        self.per_pid = {name: {p: cpu_seconds(p) for p in ps} for name, ps in pids.items()}
        snap: dict[str, float] = {}
        snap["_busy"], snap["_total"] = machine_busy()
        snap["_wall"] = time.perf_counter()
        snap["_pressure"] = pressure("cpu")
        snap["_io"] = pressure("io")
        return snap

    def start(self) -> None:
        self.begin = self.snapshot()
        self.begin_pids = self.per_pid

    def stop(self) -> str:
        """One line: cores used per group, by other processes, and CPU pressure."""
        end = self.snapshot()
        wall = end["_wall"] - self.begin["_wall"]
        cores = os.cpu_count() or 1
        # per process, so that one exiting (a PostgreSQL backend) does not count negative;
        # one started during the phase counts from zero
        used = {
            name: sum(t - self.begin_pids[name].get(p, 0.0) for p, t in times.items()) / wall
            for name, times in self.per_pid.items()
        }
        if not self.postmaster:
            del used["postgres"]  # not on this machine
        busy = (
            cores
            * (end["_busy"] - self.begin["_busy"])
            / max(end["_total"] - self.begin["_total"], 1e-9)
        )
        self.used = used
        parts = ", ".join(f"{name} {v:.2f}" for name, v in used.items())
        other = max(0.0, busy - sum(used.values()))
        CpuMeter.worst_other = max(CpuMeter.worst_other, other)
        line = (
            f"CPU cores used: {parts}; other processes {other:.2f}; machine {busy:.2f} of {cores}"
        )
        if end["_pressure"] >= 0:
            waited = (end["_pressure"] - self.begin["_pressure"]) / 1e6 / wall
            line += f"; some task waited for a CPU {waited:.0%} of the time"
        if end["_io"] >= 0:
            waited = (end["_io"] - self.begin["_io"]) / 1e6 / wall
            line += f", for I/O {waited:.0%}"
        return line


# -- running it -------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    fd_limit = raise_fd_limit()
    where = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"
    admin = await asyncio.to_thread(admin_url)
    name = await create_database(admin)
    url = with_database(admin, name)
    tmp = Path(tempfile.mkdtemp(prefix="mapstream-fanout-"))
    env = {"MAPSTREAM_LOG_LEVEL": "warning"}
    if args.ws_queue:
        env["MAPSTREAM_WS_QUEUE"] = str(args.ws_queue)
    servers = [ServerProcess(url, tmp, env=env), ServerProcess(url, tmp, env=env)]
    workers: list[Worker] = []
    ok = False
    try:
        conn = await asyncpg.connect(url)
        try:
            pg = await conn.fetchval("SHOW server_version")
            postmaster = postmaster_of(await conn.fetchval("SELECT pg_backend_pid()"))
        finally:
            await conn.close()
        say(
            f"PostgreSQL {pg} ({where}), database {name}; code {code_version()};"
            f" {os.cpu_count()} cores; fd limit {fd_limit}"
        )
        await asyncio.gather(*(s.start() for s in servers))
        pids = [s.proc.pid for s in servers if s.proc is not None]
        labels = ["A", "B"]
        say(
            "servers: "
            + ", ".join(f"{labels[i]} {s.url} (pid {pids[i]})" for i, s in enumerate(servers))
        )
        ports = [s.port for s in servers]
        bench = Bench(args)
        fan_plans = [f"fan-{p:03}" for p in range(args.plans)]
        base_plans = [f"base-{p:03}" for p in range(args.plans)]
        # --closed-on other: the loop with sockets connected writes to plans nobody watches
        other_plans = [f"other-{p:03}" for p in range(args.plans)]
        closed_plans = fan_plans if args.closed_on == "subscribed" else other_plans
        per_plan = -(-args.sockets // args.plans)
        viewers = [f"viewer{u:03}@buyer.example" for u in range(per_plan)]

        # 1. setup ------------------------------------------------------------------------
        t = time.perf_counter()
        for plan_id in fan_plans + base_plans + (other_plans if args.closed_on == "other" else []):
            await bench.create_plan(ports[0], plan_id)

        async def add_viewers(plan_id: str) -> None:
            for email in viewers:
                await bench.command(
                    ports[0],
                    plan_id,
                    "add_member",
                    {"email": email, "side": "buyer", "role": "viewer"},
                    None,
                )

        await asyncio.gather(*(add_viewers(p) for p in fan_plans))
        gc.collect()
        gc.freeze()  # the bench's own long-lived objects: keep its GC pauses short
        say(
            f"[1/5] setup: {len(fan_plans)} subscriber plans with {len(viewers)} buyer viewers"
            f" each, {len(base_plans)} baseline plans ({time.perf_counter() - t:.1f} s)"
        )

        def progress_printer(label: str, delivered: bool) -> Any:
            async def progress(done: Any, until: float) -> None:
                t0 = time.perf_counter()
                ev0 = sum(w.stats["events"] for w in workers)
                while (now := time.perf_counter()) < until + 0.05:
                    await asyncio.sleep(min(2.0, max(0.05, until - now)))
                    el = time.perf_counter() - t0
                    line = f"      {label} {el:5.1f} s: {done():,} appended ({done() / el:,.0f}/s)"
                    if delivered:
                        ev = sum(w.stats["events"] for w in workers) - ev0
                        rc = sum(w.stats["reconnects"] for w in workers)
                        vi = sum(w.stats["violations"] for w in workers)
                        line += (
                            f", delivered {ev:,} ({ev / el:,.0f}/s), reconnects {rc},"
                            f" violations {vi}"
                        )
                    say(line)

            return progress

        # 3. (prepared once) which sockets go where ---------------------------------------
        sockets: list[list[tuple[str, str, str]]] = [[] for _ in range(args.clients)]
        split: list[Counter[str]] = [Counter() for _ in range(args.clients)]
        per_server = Counter[int]()
        subscribers = Counter[str]()
        tokens = {v: token(v, ttl=7200) for v in viewers}
        for i in range(args.sockets):
            plan_id = fan_plans[i % args.plans]
            viewer = viewers[i // args.plans]
            # a plan's viewers alternate between the servers, starting with A for one plan and
            # B for the next, so an odd number per plan still splits the sockets evenly
            server = (i // args.plans + i % args.plans) % 2
            sockets[i % args.clients].append((servers[server].ws_url, tokens[viewer], plan_id))
            split[i % args.clients][labels[server]] += 1
            per_server[server] += 1
            subscribers[plan_id] += 1

        async def all_live() -> None:
            t = time.perf_counter()
            next_print = 0.0
            while (live := sum(w.stats["live"] for w in workers)) < args.sockets:
                for w in workers:
                    if w._reader is not None and w._reader.done():
                        await w.reply(1)  # raises with the client's log
                if time.perf_counter() - t > args.connect_timeout:
                    raise RuntimeError(f"only {live}/{args.sockets} sockets live after the timeout")
                if time.perf_counter() >= next_print:
                    say(f"      {live}/{args.sockets} live ({time.perf_counter() - t:.1f} s)")
                    next_print = time.perf_counter() + 2.0
                await asyncio.sleep(0.1)
            say(f"      {args.sockets}/{args.sockets} live in {time.perf_counter() - t:.1f} s")

        async def sync(expected: dict[str, int], timeout: float) -> int:
            for w in workers:
                await w.send({"cmd": "sync", "id": 0, "expected": expected, "timeout": timeout})
            return sum([(await w.reply(timeout + 30))["behind"] for w in workers])

        # 2.-4. without and with subscribers, interleaved `--rounds` times: the ratio pools
        # the rounds, so a drift of the machine or the database over the run counts on both
        # sides instead of on one
        rates: list[tuple[float, float]] = []  # (without, with) appends/s per round
        closed_windows: dict[str, list[float]] = {}
        closed_used: Counter[str] = Counter()
        per_socket = [0.0, 0.0]
        for rnd in range(args.rounds):
            of = f", round {rnd + 1} of {args.rounds}" if args.rounds > 1 else ""
            if rnd:
                t = time.perf_counter()
                for w in workers:
                    await w.send({"cmd": "disconnect", "id": rnd})
                for w in workers:
                    await w.reply(60)
                await asyncio.sleep(3.0)  # the servers drop the sockets' presence rows
                say(
                    f"      {args.sockets} sockets disconnected for the next round"
                    f" ({time.perf_counter() - t:.1f} s)"
                )

            # 2. appends without subscribers ----------------------------------------------
            say(
                f"[2/5] appends without subscribers{of}: {args.writers} closed-loop writers,"
                f" {args.append_seconds:g} s, HTTP to server A, on {len(base_plans)} plans"
            )
            meter = CpuMeter(
                {"server A": pids[:1], "server B": pids[1:], "bench": [os.getpid()]}, postmaster
            )
            meter.start()
            rate_without, w_without = await bench.closed_loop(
                ports[0], base_plans, progress_printer("no sockets", False)
            )
            lat = sorted(w_without.latencies)
            say(
                f"      {rate_without:,.0f} appends/s (p50 {percentile(lat, 50) * 1000:.1f} ms,"
                f" p99 {percentile(lat, 99) * 1000:.1f} ms per request)"
            )
            say(f"      {meter.stop()}")

            # 3. connect the sockets ------------------------------------------------------
            if rnd == 0:
                await asyncio.sleep(1.0)
                rss_before = [rss_kib(p) for p in pids]
                say(
                    f"[3/5] connecting {args.sockets} sockets to {args.plans} plans"
                    f" ({per_plan} per plan, each plan's viewers alternating between A and B),"
                    f" compression {args.compression}, from {args.clients} client processes:"
                )
                for k in range(args.clients):
                    say(
                        f"      client process {k + 1}: {len(sockets[k])} sockets ("
                        + ", ".join(f"{n} to server {s}" for s, n in sorted(split[k].items()))
                        + ")"
                    )
                workers.extend(
                    Worker(k, sockets[k], tmp / f"client-{k}.log") for k in range(args.clients)
                )
                for w in workers:
                    await w.start(None if args.compression == "none" else args.compression)
                await all_live()
                await asyncio.sleep(3.0)  # presence broadcasts settle; the sockets are idle now
                rss_after = [rss_kib(p) for p in pids]
                per_socket = [
                    (rss_after[i] - rss_before[i]) / per_server[i] if per_server[i] else 0.0
                    for i in range(2)
                ]
                for i in range(2):
                    say(
                        f"      server {labels[i]}: RSS {rss_before[i] / 1024:.1f} -> "
                        f"{rss_after[i] / 1024:.1f} MiB with {per_server[i]} idle sockets:"
                        f" {per_socket[i]:.1f} KiB per socket"
                    )
            else:
                say(
                    f"[3/5] connecting the {args.sockets} sockets again{of}; each resumes with"
                    " `since` = the last version it got"
                )
                for w in workers:
                    await w.send({"cmd": "connect"})
                await all_live()
                await asyncio.sleep(3.0)  # presence broadcasts settle
            meter = CpuMeter(
                {
                    "server A": pids[:1],
                    "server B": pids[1:],
                    "clients": [w.proc.pid for w in workers if w.proc is not None],
                    "bench": [os.getpid()],
                },
                postmaster,
            )

            # 4. appends with subscribers -------------------------------------------------
            if args.closed_on == "subscribed":
                say(
                    f"[4/5] appends with {args.sockets} subscribers{of}: the same closed loop on"
                    f" the {len(fan_plans)} subscribed plans (every append fanned out to"
                    f" {per_plan} sockets)"
                )
            else:
                say(
                    f"[4/5] appends with {args.sockets} sockets connected{of}: the same closed"
                    f" loop on {len(other_plans)} other plans that no socket subscribes to"
                    " (--closed-on other)"
                )
            meter.start()
            closed_start = time.time()
            rate_with, w_with = await bench.closed_loop(
                ports[0], closed_plans, progress_printer("sockets", True)
            )
            closed_windows[f"closed-{rnd}"] = [closed_start, time.time()]
            cpu_closed = meter.stop()
            closed_used.update({k: v / args.rounds for k, v in meter.used.items()})
            lat = sorted(w_with.latencies)
            say(
                f"      {rate_with:,.0f} appends/s (p50 {percentile(lat, 50) * 1000:.1f} ms,"
                f" p99 {percentile(lat, 99) * 1000:.1f} ms per request);"
                f" ratio to the round's appends without subscribers"
                f" {rate_with / rate_without:.2f}"
            )
            say(f"      {cpu_closed}")
            rates.append((rate_without, rate_with))
            t = time.perf_counter()
            behind = await sync(dict(bench.versions), args.drain)
            say(
                f"      clients caught up in {time.perf_counter() - t:.1f} s"
                + (f" ({behind} sockets still behind)" if behind else "")
            )
        rate_without = sum(r[0] for r in rates) / len(rates)
        rate_with = sum(r[1] for r in rates) / len(rates)

        # 5. fan-out at a fixed rate ------------------------------------------------------
        say(
            f"[5/5] fan-out: {args.rate:g} events/s for {args.seconds:g} s, HTTP to A and B in"
            f" turn, round-robin over {len(fan_plans)} plans -> {args.sockets} sockets"
            + (" (each plan written through one server)" if len(fan_plans) % 2 == 0 else "")
        )
        meter.start()
        fan_start, fan_sent, w_fan, max_lag = await bench.paced(
            ports, fan_plans, progress_printer("fan-out", True)
        )
        fan_cpu = meter.stop()
        fan_used = meter.used
        fan_end = time.time()
        t = time.perf_counter()
        behind = await sync(dict(bench.versions), args.drain)
        say(
            f"      {w_fan.done:,} appended in {fan_sent - fan_start:.1f} s"
            f" (sender at most {max_lag * 1000:.0f} ms behind schedule);"
            f" clients caught up {time.perf_counter() - t:.1f} s after the last ack"
            + (f" ({behind} sockets still behind)" if behind else "")
        )
        say(f"      {fan_cpu}")

        reports = []
        for w in workers:
            await w.send(
                {
                    "cmd": "report",
                    "expected": dict(bench.versions),
                    "windows": {"fanout": [fan_start, fan_end], **closed_windows},
                }
            )
            reports.append(await w.reply(60))

        def merged(*windows: str) -> tuple[array[float], array[float]]:
            recorded, received = array("d"), array("d")
            for r in reports:
                for window in windows:
                    rec, recv = r["windows"][window]
                    recorded.frombytes(base64.b64decode(rec))
                    received.frombytes(base64.b64decode(recv))
            return recorded, received

        fan_rec, fan_recv = merged("fanout")
        fan_lat = sorted(b - a for a, b in zip(fan_rec, fan_recv, strict=True))
        # the same deliveries measured from the HTTP answer of their append (after the commit)
        after_ack = sorted(
            b - w_fan.acked_at[a]
            for a, b in zip(fan_rec, fan_recv, strict=True)
            if a in w_fan.acked_at
        )
        worst_per_second: dict[int, float] = {}
        for a, b in zip(fan_rec, fan_recv, strict=True):
            sec = int(a - fan_start)
            worst_per_second[sec] = max(worst_per_second.get(sec, 0.0), b - a)
        closed_lat = sorted(b - a for a, b in zip(*merged(*closed_windows), strict=True))
        expected_deliveries = sum(n * subscribers[p] for p, n in w_fan.per_plan.items())
        duplicates = sum(r["duplicates"] for r in reports)
        gaps = sum(r["gaps"] for r in reports)
        missing = sum(r["missing"] for r in reports)
        violations = duplicates + gaps + missing
        reconnects = sum(r["reconnects"] for r in reports)
        codes: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for r in reports:
            codes.update(r["close_codes"])
            errors.update(r["errors"])
        fan_seconds = fan_sent - fan_start
        app_lat = sorted(w_fan.latencies)
        p50, p99, pmax = (percentile(fan_lat, q) * 1000 for q in (50, 99, 100))
        ratio = rate_with / rate_without if rate_without else float("nan")
        worst_kib = max(per_socket)

        say("")
        say("results")
        say(
            f"  fan-out at {w_fan.done / fan_seconds:,.0f} events/s to {args.sockets} sockets:"
            f" recorded_at -> socket p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {pmax:.1f} ms"
            f" over {len(fan_lat):,} deliveries"
        )
        say(
            f"    the append request itself (HTTP round trip, includes the commit): p50"
            f" {percentile(app_lat, 50) * 1000:.1f} ms, p99 {percentile(app_lat, 99) * 1000:.1f} ms"
        )
        say(
            f"    measured from the HTTP answer of the append instead (the commit is before it):"
            f" p50 {percentile(after_ack, 50) * 1000:.1f} ms,"
            f" p99 {percentile(after_ack, 99) * 1000:.1f} ms"
        )
        say(
            "    worst recorded_at -> socket per second of the run, ms: "
            + " ".join(f"{worst_per_second[k] * 1000:.0f}" for k in sorted(worst_per_second))
        )
        say(
            f"  delivered {len(fan_lat) / fan_seconds:,.0f} events/s summed over sockets"
            f" ({len(fan_lat):,} of {expected_deliveries:,} expected)"
        )
        say(
            f"  order check: {violations} violations ({duplicates} duplicates, {gaps} gaps,"
            f" {missing} missing at the end) over the whole run, across"
            f" {args.sockets * (args.rounds - 1):,} resumes between rounds; {reconnects}"
            " unplanned reconnects" + (f", close codes {dict(codes)}" if codes else "")
        )
        never_live = sum(r["never_live"] for r in reports)
        behind_end = sum(r["behind_sockets"] for r in reports)
        if never_live or behind_end:
            say(f"  sockets never live: {never_live}; sockets behind at the end: {behind_end}")
        if errors:
            say(f"  client errors: {dict(errors)}")
        delivered_rate = len(fan_lat) / fan_seconds
        if delivered_rate:
            server_us = (fan_used["server A"] + fan_used["server B"]) / delivered_rate * 1e6
            client_us = fan_used["clients"] / delivered_rate * 1e6
            say(
                f"  CPU per delivered event in the fan-out (appends included): servers"
                f" {server_us:.0f} us, client processes {client_us:.0f} us"
            )
        if closed_lat:
            say(
                f"  during the closed loop with subscribers: recorded_at -> socket p50"
                f" {percentile(closed_lat, 50) * 1000:.0f} ms, p99"
                f" {percentile(closed_lat, 99) * 1000:.0f} ms over {len(closed_lat):,} deliveries"
            )
        what = "subscribers" if args.closed_on == "subscribed" else "sockets on other plans"
        say(
            f"  appends/s (closed loop, {args.writers} writers, HTTP to A"
            + (f", mean of {args.rounds} interleaved rounds" if args.rounds > 1 else "")
            + f"): without sockets {rate_without:,.0f}, with {args.sockets} {what}"
            f" {rate_with:,.0f}: ratio {ratio:.2f}"
            + (
                " (rounds: " + ", ".join(f"{w / wo:.2f}" for wo, w in rates) + ")"
                if args.rounds > 1
                else ""
            )
        )
        fanout_cores = closed_used["server B"] + closed_used["clients"]
        say(
            f"    during the loop with sockets, server B and the client processes (fan-out only)"
            f" used {fanout_cores:.2f} cores; server A {closed_used['server A']:.2f}"
        )
        say(
            f"  memory per idle socket: server A {per_socket[0]:.1f} KiB, server B"
            f" {per_socket[1]:.1f} KiB"
        )
        say("")
        say("targets")
        say(
            f"  p99 < {TARGET_P99_MS:g} ms at {args.rate:g} events/s to {args.sockets} sockets,"
            f" 0 violations: {p99:.1f} ms, {violations} violations"
            f" {verdict(p99 < TARGET_P99_MS and violations == 0)}"
        )
        say(
            f"  appends/s with {what} >= {TARGET_RATIO}x without: {ratio:.2f}x"
            f" {verdict(ratio >= TARGET_RATIO)}"
        )
        say(
            f"  <= {TARGET_KIB_PER_SOCKET:g} KiB per idle socket: {worst_kib:.1f} KiB (worst"
            f" server) {verdict(worst_kib <= TARGET_KIB_PER_SOCKET)}"
        )
        if CpuMeter.worst_other > 0.25:
            say(
                f"  WARNING: other processes used up to {CpuMeter.worst_other:.2f} cores during"
                " a phase: the machine was shared, so these figures understate what it can do"
            )
        ok = True
        return 0
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                await w.stop()
        for s in servers:
            with contextlib.suppress(Exception):
                await s.stop()
        with contextlib.suppress(Exception):
            await drop_database(admin, name)
        if ok or args.keep_logs is False:
            if not ok:
                print_log_tails(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)


def print_log_tails(folder: Path) -> None:
    for log in sorted(folder.glob("*.log")):
        tail = log.read_text(errors="replace")[-1500:]
        if tail.strip():
            print(f"--- {log.name} (tail) ---\n{tail}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description=(
            "Live-hub fan-out on two server processes: delivery latency at a fixed append "
            "rate, memory per idle socket, and appends/s with and without subscribers. "
            "Fresh database (embedded PostgreSQL unless DATABASE_URL is set), dropped at the end."
        ),
    )
    parser.add_argument("--sockets", type=int, default=1000, help="WebSockets (default 1000)")
    parser.add_argument(
        "--plans",
        type=int,
        default=200,
        help="plans the sockets subscribe to (default 200: 5 live viewers per deal room;"
        " --plans 20 is the 50-viewers-per-plan stress case)",
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="fan-out append rate, events/s (default 200)"
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="fan-out phase length (default 20)"
    )
    parser.add_argument(
        "--writers", type=int, default=8, help="closed-loop writers for appends/s (default 8)"
    )
    parser.add_argument(
        "--append-seconds",
        type=float,
        default=8.0,
        help="each closed-loop append run, after 0.5 s warm-up (default 8)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="closed-loop runs without and with subscribers, interleaved (default 3)",
    )
    parser.add_argument(
        "--clients", type=int, default=2, help="client processes holding the sockets (default 2)"
    )
    parser.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="permessage-deflate offered by the clients, as browsers do (default deflate)",
    )
    parser.add_argument(
        "--closed-on",
        choices=["subscribed", "other"],
        default="subscribed",
        help="plans of the closed loop with sockets connected: the subscribed ones (every"
        " append fanned out; default) or other plans (the cost of idle sockets alone)",
    )
    parser.add_argument(
        "--ws-queue",
        type=int,
        default=0,
        help="MAPSTREAM_WS_QUEUE for the servers (default: theirs)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=20.0,
        help="seconds to wait for clients to catch up after a phase (default 20)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        help="seconds for all sockets to go live (default 60)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep server and client logs after a failure"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker:
        for name in ("sockets", "plans", "writers", "clients", "rounds"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be positive")
        if args.rate <= 0 or args.seconds <= 0 or args.append_seconds <= 0:
            parser.error("--rate, --seconds and --append-seconds must be positive")
        if args.plans > args.sockets:
            parser.error("--plans cannot exceed --sockets")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.worker:
            asyncio.run(worker_main())
            return
        sys.exit(asyncio.run(run_until_signal(run, args, "servers, clients and database")))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
