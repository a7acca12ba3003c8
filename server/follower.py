"""Every instance follows the one global log and hands new events to its hub.

Wake-ups never sit on the commit path: after an append commits, the writing instance pokes
a `Waker` that sends one coalesced `NOTIFY mapstream_log` from its own connection. Followers
LISTEN for it, and also poll on a short interval as a safety net (a lost notification, a
dropped LISTEN connection, or events that were not yet below the xmin horizon when woken).

An instance that cannot read the log (PostgreSQL down, or a network partition between this
instance and PostgreSQL, where queries hang rather than fail) has nothing to send its
sockets: after `stall_after` seconds without a successful read the follower sets `lost`, and
the hub closes its sockets with 1012 so clients resume on another instance (server/ws.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg

from server.database import listen_forever
from server.store import LOG_START, LogCursor, Store, StoredEvent

log = logging.getLogger(__name__)

CHANNEL = "mapstream_log"
# Seconds without a successful read of the log before an instance counts as cut off from
# its database. The follower reads every 100 ms when healthy, so this never fires on load.
STALL_AFTER = 5.0


class Waker:
    """Coalesced NOTIFY after commit: many appends in a burst cost one or two notifications."""

    def __init__(self, pool: asyncpg.Pool, channel: str = CHANNEL) -> None:
        self.pool = pool
        self.channel = channel
        self._dirty = asyncio.Event()
        self.sent = 0

    def poke(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.pool.execute("SELECT pg_notify($1, '')", self.channel)
                self.sent += 1
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("could not notify followers (they will poll): %s", exc)
                await asyncio.sleep(0.5)


class LogFollower:
    """Reads the gap-free log from where this instance started and publishes it in order."""

    def __init__(
        self,
        store: Store,
        publish: Callable[[list[StoredEvent]], None],
        *,
        database_url: str,
        poll_interval: float = 0.1,
        batch: int = 500,
        stall_after: float = STALL_AFTER,
    ) -> None:
        self.store = store
        self.publish = publish
        self.database_url = database_url
        self.poll_interval = poll_interval
        self.batch = batch
        self.cursor: LogCursor = LOG_START
        self.started = asyncio.Event()
        self._wake = asyncio.Event()
        self.last_event_at: float | None = None
        self._conn: asyncpg.Connection | None = None
        self.lag_seconds = 0.0
        self.delivered = 0
        self.stall_after = stall_after
        self.last_read = time.monotonic()
        # set while the log has not been read for `stall_after` s: sockets here get nothing
        self.lost = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def _read_ok(self) -> None:
        self.last_read = time.monotonic()
        if self.lost.is_set():
            self.lost.clear()
            log.warning("log follower reads the database again")

    async def _watch(self) -> None:
        """Set `lost` when reads stop succeeding (a partitioned query hangs, it does not fail)."""
        while True:
            await asyncio.sleep(min(1.0, self.stall_after / 4))
            stalled = time.monotonic() - self.last_read
            if stalled > self.stall_after and not self.lost.is_set():
                log.warning(
                    "log follower has not read the database for %.0f s: closing sockets so "
                    "their clients resume on another instance",
                    stalled,
                )
                self.lost.set()

    async def run(self) -> None:
        """Follow forever; survives database restarts by retrying with backoff."""
        listener = asyncio.create_task(
            listen_forever(self.database_url, CHANNEL, lambda _: self._wake.set(), "log listener"),
            name="log-listener",
        )
        watchdog: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    self.cursor = await self.store.log_head()
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("log follower cannot read the log head yet: %s", exc)
                    await asyncio.sleep(0.5)
            self._read_ok()
            self.started.set()
            watchdog = asyncio.create_task(self._watch(), name="log-watchdog")
            while True:
                try:
                    events = await self._read()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("log follower lost the database, retrying: %s", exc)
                    await self._drop_connection()
                    await asyncio.sleep(0.5)
                    continue
                self._read_ok()
                if events:
                    self.cursor = events[-1].cursor
                    self.delivered += len(events)
                    newest = events[-1].recorded_at.timestamp()
                    self.lag_seconds = max(0.0, time.time() - newest)
                    self.publish(events)
                    if len(events) == self.batch:
                        continue
                else:
                    self.lag_seconds = 0.0
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            listener.cancel()
            if watchdog is not None:
                watchdog.cancel()
            await self._drop_connection()

    async def _read(self) -> list[StoredEvent]:
        """The next batch, on a connection of the follower's own: reads many times a second
        under load, so it skips the pool's wait and its reset round trip on every release,
        and a busy pool never looks like a lost database to the watchdog."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.database_url,
                timeout=10,
                command_timeout=30,
                server_settings={"application_name": "mapstream-follower"},
            )
        return await self.store.read_log(self.cursor, limit=self.batch, conn=self._conn)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # no goodbye: it may be the connection that hangs
