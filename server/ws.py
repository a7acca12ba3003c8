"""`GET /ws`: the hub protocol over one socket, many plans per socket.

`Connection.handle` turns one client message into replies (on the outbox) and subscription
changes; `Connection.run` is the pump: it authenticates, reads messages, and a sender task
moves the bounded outbox to the socket. Closing decisions (4001, 4003, 4008, and 1012 when
this instance has lost its database) are made by setting `outbox.close`, so the pump is the
one place that closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from domain.errors import Forbidden, Malformed, MapstreamError, NotFound
from domain.rules import item_audience
from domain.visibility import view_for
from server import wsproto
from server.closecodes import CloseCode
from server.codec import check_correlation_id, check_plan_id, decode_command_data
from server.hub import Hub, Subscription, event_frame
from server.limits import RateLimiter
from server.plans import PlanService
from server.presence import Presence, Viewer
from server.tokens import Identity, Unauthorized, verify

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
_message = msgspec.json.Decoder(dict[str, Any])
AUTH_TIMEOUT = 5.0


class WSSettings(msgspec.Struct, frozen=True):
    queue_limit: int = 1024
    max_subscriptions: int = 100
    max_message_bytes: int = 256 * 1024
    replay_page: int = 1000
    # test hook: widen the window between the database read and going live (race tests)
    subscribe_delay: float = 0.0


def _frame(**fields: Any) -> bytes:
    return _encoder.encode(fields)


class Connection:
    def __init__(
        self,
        websocket: WebSocket,
        *,
        hub: Hub,
        plans: PlanService,
        presence: Presence,
        secrets: tuple[str, ...],
        settings: WSSettings,
        registry: set[Connection],
        limiter: RateLimiter | None = None,
    ) -> None:
        from server.hub import Outbox

        self.ws = websocket
        self.hub = hub
        self.plans = plans
        self.presence = presence
        self.secrets = secrets
        self.settings = settings
        self.registry = registry
        self.limiter = limiter
        direct = websocket.scope.get("extensions", {}).get(wsproto.EXTENSION)
        self.outbox = Outbox(settings.queue_limit, direct)
        self.socket_id = uuid.uuid4().hex
        self.identity: Identity | None = None
        self.subs: dict[str, Subscription] = {}

    @property
    def user(self) -> str:
        assert self.identity is not None
        return self.identity.email

    def reply(self, **fields: Any) -> None:
        self.outbox.send(_frame(**fields))

    # -- the pump -------------------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        try:
            if not await self._authenticate():
                return
            self.registry.add(self)
            sender = asyncio.create_task(self._send_loop())
            reader = asyncio.create_task(self._read_loop())
            expiry = asyncio.create_task(self._lifetime_loop())
            closing = asyncio.create_task(self.outbox.closing.wait())
            await asyncio.wait({reader, closing, sender}, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, expiry, closing):
                task.cancel()
            if self.outbox.close_code is not None:
                # let frames queued before the close decision go first, unless the client is stuck
                if self.outbox.close_code != CloseCode.TOO_SLOW:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(2):
                            await self._drain()
                sender.cancel()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10):
                        await self.ws.close(int(self.outbox.close_code), self.outbox.close_reason)
            else:
                sender.cancel()
        finally:
            self.registry.discard(self)
            await self._cleanup()

    async def _drain(self) -> None:
        await self.outbox.queue.join()

    async def _authenticate(self) -> bool:
        try:
            async with asyncio.timeout(AUTH_TIMEOUT):
                raw = await self.ws.receive_text()
            msg = _message.decode(raw)
            if msg.get("op") != "auth":
                raise Unauthorized("the first message must be {op: 'auth', token}")
            self.identity = verify(str(msg.get("token", "")), self.secrets)
        except (TimeoutError, msgspec.DecodeError, MapstreamError, KeyError) as exc:
            reason = (
                exc.message
                if isinstance(exc, MapstreamError)
                else "send {op: 'auth', token} first, within 5 s"
            )
            with contextlib.suppress(Exception):
                await self.ws.close(CloseCode.UNAUTHORIZED, reason[:120])
            return False
        except WebSocketDisconnect:
            return False
        await self.ws.send_text(_frame(op="ready", user=self.user).decode())
        return True

    async def _send_loop(self) -> None:
        outbox = self.outbox
        queue = outbox.queue
        direct = outbox.direct
        while True:
            frame = await queue.get()
            if direct is None:
                await self.ws.send_text(frame.decode())
            else:
                outbox.writing = True
                try:
                    while not direct.write(frame):
                        if direct.gone:
                            return  # the reader sees the disconnect; the client resumes
                        await direct.wait_writable()
                finally:
                    outbox.writing = False
            del frame  # an idle socket keeps no reference to its last frame
            queue.task_done()

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text") or message.get("bytes") or b""
                if len(raw) > self.settings.max_message_bytes:
                    self.reply(op="error", code="payload_too_large", message="message too large")
                    continue
                await self.handle(raw)
        except WebSocketDisconnect:
            return

    async def _lifetime_loop(self) -> None:
        """Close with 4001 when the token expires, or with 1012 while this instance cannot
        read the global log (its database is down or unreachable): a socket kept open here
        would stay silent, so its client had better resume on another instance."""
        follower = getattr(self.ws.app.state, "follower", None)
        lost: asyncio.Event | None = getattr(follower, "lost", None)
        while True:
            assert self.identity is not None
            remaining = self.identity.expires_at - time.time()
            if remaining <= 0:
                self.outbox.close(
                    CloseCode.UNAUTHORIZED, "token expired: reconnect with a new token"
                )
                return
            if lost is None:
                await asyncio.sleep(min(remaining, 5.0))
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 5.0)):
                    await lost.wait()
            if lost.is_set():
                self.outbox.close(
                    CloseCode.SERVER_RESTARTING,
                    "this instance lost its database: reconnect (elsewhere) and resume",
                )
                return

    async def _cleanup(self) -> None:
        for sub in list(self.subs.values()):
            self.hub.remove(sub)
            with contextlib.suppress(Exception):
                await self.presence.drop(sub.plan_id, self.socket_id)
        self.subs.clear()

    # -- the protocol ---------------------------------------------------------------------

    async def handle(self, raw: str | bytes) -> None:
        try:
            msg = _message.decode(raw)
        except msgspec.DecodeError as exc:
            self.reply(op="error", code="malformed", message=f"not a JSON object: {exc}")
            return
        op = msg.get("op")
        try:
            match op:
                case "ping":
                    self.reply(op="pong")
                case "auth":
                    self._refresh(msg)
                case "subscribe":
                    await self._subscribe(msg)
                case "unsubscribe":
                    await self._unsubscribe(msg)
                case "command":
                    await self._command(msg)
                case "presence":
                    await self._presence(msg)
                case _:
                    raise Malformed(f"unknown op {op!r}", field="op")
        except MapstreamError as exc:
            if op == "command":
                self.reply(
                    op="reject",
                    command_id=msg.get("command_id"),
                    plan_id=msg.get("plan_id"),
                    **exc.body(),
                )
            else:
                self.reply(op="error", plan_id=msg.get("plan_id"), **exc.body())

    def _refresh(self, msg: dict[str, Any]) -> None:
        identity = verify(str(msg.get("token", "")), self.secrets)
        if identity.email != self.user:
            raise Unauthorized("a refreshed token must name the same user")
        self.identity = identity
        self.reply(op="ready", user=self.user)

    def _plan_id(self, msg: dict[str, Any]) -> str:
        plan_id = msg.get("plan_id")
        if not isinstance(plan_id, str):
            raise Malformed("`plan_id` is required", field="plan_id")
        return check_plan_id(plan_id)

    async def _subscribe(self, msg: dict[str, Any]) -> None:
        plan_id = self._plan_id(msg)
        since = msg.get("since")
        if since is not None and (
            not isinstance(since, int) or isinstance(since, bool) or since < 0
        ):
            raise Malformed("`since` must be a version number (0 or more)", field="since")
        old = self.subs.pop(plan_id, None)
        if old is not None:
            self.hub.remove(old)
        if len(self.subs) >= self.settings.max_subscriptions:
            raise Malformed(
                f"at most {self.settings.max_subscriptions} plans per socket", field="plan_id"
            )
        sub = Subscription(
            plan_id, self.user, "buyer", self.outbox, pending_limit=self.settings.queue_limit * 4
        )
        # Register the live listener BEFORE reading the database; go_live drops duplicates.
        self.hub.add(sub)
        self.subs[plan_id] = sub
        try:
            # access is checked on every (re)subscribe, against the state read after registering
            try:
                plan = await self.plans.current(plan_id)
            except NotFound:
                raise NotFound(f"no plan {plan_id!r} that you can see") from None
            member = plan.member(self.user)
            if member is None:
                raise Forbidden(f"you are not a member of plan {plan_id!r}")
            sub.side = member.side
            if since is None:
                await self.outbox.put(
                    _encoder.encode(
                        {
                            "op": "snapshot",
                            "plan_id": plan_id,
                            "version": plan.version,
                            "state": view_for(plan, sub.side),
                        }
                    )
                )
                sub.last_sent = plan.version
            else:
                await self._replay(sub, since)
        except BaseException:
            self.hub.remove(sub)
            self.subs.pop(plan_id, None)
            raise
        if self.settings.subscribe_delay:
            await asyncio.sleep(self.settings.subscribe_delay)
        sub.go_live(event_frame)
        self.reply(op="live", plan_id=plan_id, version=sub.last_sent)
        await self.presence.set(plan_id, self.socket_id, self.user, sub.side, None)

    async def _replay(self, sub: Subscription, since: int) -> None:
        sub.last_sent = since
        buffered = self.hub.recent_after(sub.plan_id, since)
        if buffered is not None:
            await sub.replay(buffered)
            return
        while self.outbox.close_code is None:
            page = await self.plans.store.read_stream(
                sub.plan_id, after=sub.last_sent, limit=self.settings.replay_page
            )
            await sub.replay(page)
            if len(page) < self.settings.replay_page:
                return

    async def _unsubscribe(self, msg: dict[str, Any]) -> None:
        plan_id = self._plan_id(msg)
        sub = self.subs.pop(plan_id, None)
        if sub is not None:
            self.hub.remove(sub)
            await self.presence.drop(plan_id, self.socket_id)
        self.reply(op="unsubscribed", plan_id=plan_id)

    async def _command(self, msg: dict[str, Any]) -> None:
        if self.limiter is not None:
            self.limiter.check(self.user)
        plan_id = self._plan_id(msg)
        command_id = msg.get("command_id")
        if not isinstance(command_id, str):
            raise Malformed("`command_id` is required", field="command_id")
        kind = msg.get("type")
        if not isinstance(kind, str):
            raise Malformed("`type` is required", field="type")
        expected = msg.get("expected_version")
        if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
            raise Malformed("`expected_version` must be a whole number", field="expected_version")
        command = decode_command_data(kind, command_id, _encoder.encode(msg.get("data", {})))
        answer = await self.plans.handle(
            plan_id,
            command,
            self.user,
            command_id=command_id,
            expected_version=expected,
            correlation_id=check_correlation_id(msg.get("correlation_id")),
        )
        self.reply(op="ack", command_id=command_id, plan_id=plan_id, version=answer.version)

    async def _presence(self, msg: dict[str, Any]) -> None:
        plan_id = self._plan_id(msg)
        sub = self.subs.get(plan_id)
        if sub is None:
            raise Malformed("subscribe to the plan before sending presence", field="plan_id")
        item_id = msg.get("item_id")
        if item_id is not None and (not isinstance(item_id, str) or len(item_id) > 200):
            raise Malformed("`item_id` must be a string (at most 200 characters)", field="item_id")
        item_side = None
        if item_id is not None:
            # which item the seller looks at is itself internal when the item is
            plan = await self.plans.current(plan_id)
            item_side = item_audience(plan, item_id)
            if item_side is not None and item_side != sub.side:
                raise NotFound(f"no item {item_id!r} in this plan", field="item_id")
        await self.presence.set(plan_id, self.socket_id, self.user, sub.side, item_id, item_side)


def presence_broadcaster(hub: Hub) -> Any:
    """Send a plan's viewers to its local subscribers (the other side's internal items hidden)."""

    def broadcast(plan_id: str, viewers: list[Viewer]) -> None:
        frames: dict[str, bytes] = {}  # encoded once per side, not once per socket
        for sub in list(hub.subscribers(plan_id)):
            if sub.live:
                frame = frames.get(sub.side)
                if frame is None:
                    shown = [v.as_seen_by(sub.side) for v in viewers]
                    frame = frames[sub.side] = _frame(op="presence", plan_id=plan_id, viewers=shown)
                sub.outbox.send(frame)

    return broadcast


async def shutdown_all(registry: set[Connection]) -> None:
    """Close every socket with 1012 so clients reconnect (elsewhere) and resume."""
    for conn in list(registry):
        conn.outbox.close(CloseCode.SERVER_RESTARTING, "server restarting: reconnect and resume")
    for _ in range(50):
        if not registry:
            return
        await asyncio.sleep(0.05)


def on_membership(hub: Hub, registry: set[Connection]) -> Any:
    """A revoked member's sockets are closed with 4003 at once."""

    def handle(e: Any) -> None:
        data = msgspec.json.decode(e.data)
        if e.type == "MemberRevoked":
            for conn in list(registry):
                if (
                    conn.identity is not None
                    and conn.user == data["email"]
                    and e.plan_id in conn.subs
                ):
                    conn.outbox.close(
                        CloseCode.FORBIDDEN, f"access to plan {e.plan_id} was revoked"
                    )

    return handle
