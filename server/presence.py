"""Presence across instances: who views each plan and which item, never an event.

Rows live in the UNLOGGED `presence` table with an expiry. The instance holding a socket
refreshes its rows; a dead instance's rows simply expire. A change sends a NOTIFY (outside any
append transaction) so every instance re-reads that plan's viewers and tells its own
subscribers, throttled per plan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
import msgspec

from server.database import listen_forever

log = logging.getLogger(__name__)

CHANNEL = "mapstream_presence"


class Viewer(msgspec.Struct, frozen=True, order=True):
    user: str
    side: str
    item_id: str | None = None
    # set when item_id is an internal item: only this side may see which item it is
    item_side: str | None = None

    def as_seen_by(self, side: str) -> dict[str, str | None]:
        shown = self.item_id if self.item_side in (None, side) else None
        return {"user": self.user, "side": self.side, "item_id": shown}


class Presence:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl: float = 30.0,
        throttle: float = 0.2,
        broadcast: Callable[[str, list[Viewer]], None],
    ) -> None:
        self.pool = pool
        self.ttl = ttl
        self.throttle = throttle
        self.broadcast = broadcast
        self.local: dict[tuple[str, str], tuple[str, str, str | None]] = {}
        self._dirty: set[str] = set()
        self._kick = asyncio.Event()
        self._last: dict[str, list[Viewer]] = {}

    async def set(
        self,
        plan_id: str,
        socket_id: str,
        user: str,
        side: str,
        item_id: str | None,
        item_side: str | None = None,
    ) -> None:
        self.local[(plan_id, socket_id)] = (user, side, item_id)
        await self.pool.execute(
            "INSERT INTO presence"
            " (plan_id, socket_id, user_email, side, item_id, item_side, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $7, now() + make_interval(secs => $6))"
            " ON CONFLICT (plan_id, socket_id) DO UPDATE SET item_id = EXCLUDED.item_id,"
            " item_side = EXCLUDED.item_side, expires_at = EXCLUDED.expires_at",
            plan_id,
            socket_id,
            user,
            side,
            item_id,
            self.ttl,
            item_side,
        )
        await self._notify(plan_id)

    async def drop(self, plan_id: str, socket_id: str) -> None:
        self.local.pop((plan_id, socket_id), None)
        await self.pool.execute(
            "DELETE FROM presence WHERE plan_id = $1 AND socket_id = $2", plan_id, socket_id
        )
        await self._notify(plan_id)

    async def _notify(self, plan_id: str) -> None:
        await self.pool.execute("SELECT pg_notify($1, $2)", CHANNEL, plan_id)

    def changed(self, plan_id: str) -> None:
        self._dirty.add(plan_id)
        self._kick.set()

    async def viewers(self, plan_id: str) -> list[Viewer]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT ON (user_email) user_email, side, item_id, item_side FROM presence"
            " WHERE plan_id = $1 AND expires_at > now() ORDER BY user_email, expires_at DESC",
            plan_id,
        )
        return sorted(
            Viewer(r["user_email"], r["side"], r["item_id"], r["item_side"]) for r in rows
        )

    async def run(self, database_url: str, interested: Callable[[str], bool]) -> None:
        """Listen for changes, refresh our rows, expire dead ones, broadcast (throttled)."""
        tasks = [
            asyncio.create_task(
                listen_forever(database_url, CHANNEL, self.changed, "presence listener")
            ),
            asyncio.create_task(self._heartbeat()),
        ]
        try:
            while True:
                await self._kick.wait()
                self._kick.clear()
                dirty, self._dirty = self._dirty, set()
                for plan_id in dirty:
                    if not interested(plan_id):
                        self._last.pop(plan_id, None)
                        continue
                    try:
                        viewers = await self.viewers(plan_id)
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                        log.warning("presence read failed: %s", exc)
                        continue
                    if viewers != self._last.get(plan_id):
                        self._last[plan_id] = viewers
                        self.broadcast(plan_id, viewers)
                await asyncio.sleep(self.throttle)
        finally:
            for t in tasks:
                t.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(min(self.ttl / 3, 10.0))
            try:
                keys = list(self.local)
                if keys:
                    await self.pool.execute(
                        "UPDATE presence SET expires_at = now() + make_interval(secs => $3)"
                        " WHERE (plan_id, socket_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                        [k[0] for k in keys],
                        [k[1] for k in keys],
                        self.ttl,
                    )
                expired = await self.pool.fetch(
                    "DELETE FROM presence WHERE expires_at <= now() RETURNING plan_id"
                )
                for plan_id in {r["plan_id"] for r in expired}:
                    await self._notify(plan_id)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("presence heartbeat failed: %s", exc)
