"""A small Python client for the live hub: subscribe, print, reconnect with backoff, resume.

    async for message in PlanFeed("ws://127.0.0.1:8000/ws", token, ["demo"]):
        print(message)            # {"op": "event", "plan_id": ..., "event": {...}} or a snapshot

The feed remembers the last version it yielded for each plan and, after any disconnect (1012
server restarting, 4008 too slow, a network error), reconnects and subscribes again with
`since` = that version, so the caller sees every version once, in order. 4001 and 4003 end
the feed: a new token or new access is needed.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

FATAL_CODES = {4001, 4003}
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class FeedClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason


class PlanFeed:
    def __init__(
        self,
        url: str,
        token: str,
        plan_ids: Iterable[str],
        *,
        since: dict[str, int] | None = None,
        max_backoff: float = 2.0,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        """`connect_options` go to `websockets.asyncio.client.connect` (e.g. `compression`,
        `open_timeout`, `ping_interval`)."""
        # several URLs (instances behind no load balancer): the next one is tried on failure
        self.urls = [u.strip() for u in url.split(",") if u.strip()]
        self.url = self.urls[0]
        self.token = token
        self.versions: dict[str, int | None] = {p: None for p in plan_ids}
        for plan_id, version in (since or {}).items():
            self.versions[plan_id] = version
        self.max_backoff = max_backoff
        self.connect_options = {"open_timeout": 5, "max_size": 2**24, **(connect_options or {})}
        self.reconnects = 0
        self.close_codes: list[int] = []
        self.ws: ClientConnection | None = None
        self._stop = False

    async def close(self) -> None:
        """Stop reconnecting and close the current connection; iteration then ends."""
        self._stop = True
        if self.ws is not None:
            await self.ws.close()

    async def send(self, message: dict[str, Any]) -> None:
        """Send a message (a command, presence) on the current connection."""
        assert self.ws is not None, "not connected"
        await self.ws.send(json.dumps(message))

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._run()

    async def _run(self) -> AsyncIterator[dict[str, Any]]:
        backoff = 0.05
        while not self._stop:
            try:
                async with connect(self.url, **self.connect_options) as ws:
                    self.ws = ws
                    await ws.send(json.dumps({"op": "auth", "token": self.token}))
                    ready = _decode(await ws.recv())
                    if ready.get("op") != "ready":
                        raise FeedClosed(4001, str(ready))
                    for plan_id, version in self.versions.items():
                        msg: dict[str, Any] = {"op": "subscribe", "plan_id": plan_id}
                        if version is not None:
                            msg["since"] = version
                        await ws.send(json.dumps(msg))
                    backoff = 0.05
                    async for raw in ws:
                        message = _decode(raw)
                        op = message.get("op")
                        if op == "snapshot":
                            self.versions[message["plan_id"]] = message["version"]
                        elif op == "event":
                            self.versions[message["plan_id"]] = message["event"]["version"]
                        yield message
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                self.close_codes.append(code)
                if code in FATAL_CODES:
                    raise FeedClosed(code, exc.rcvd.reason if exc.rcvd else "") from exc
            except (OSError, TimeoutError, websockets.exceptions.InvalidHandshake):
                self.close_codes.append(1006)
            finally:
                self.ws = None
            if self._stop:
                return
            self.reconnects += 1
            self.url = self.urls[self.reconnects % len(self.urls)]
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff)


async def watch(url: str, token: str, plan_id: str, since: int | None) -> None:
    """`mapstream watch`: print every message for one plan, one JSON line each."""
    feed = PlanFeed(url, token, [plan_id], since={plan_id: since} if since is not None else None)
    async for message in feed:
        print(json.dumps(message), flush=True)
