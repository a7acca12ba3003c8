"""The live hub: per plan, events reach each client in version order, no gap, no duplicate.

The follower publishes the global log in order; `Hub.publish` hands each event to the local
subscriptions of its plan. A subscription registers *before* it reads the database and
buffers live events while it catches up; then it drops anything at or below the version it
already sent (the classic race where an event committed between read and listen is lost is
thereby impossible). Each socket has one bounded send queue: overflow closes it with 4008
so a slow client never slows the others and never silently misses an event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from domain.model import Side
from server.closecodes import CloseCode
from server.plans import event_out
from server.store import StoredEvent

if TYPE_CHECKING:
    from server.wsproto import DirectFrames

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()


class EventFrame(msgspec.Struct, frozen=True):
    plan_id: str
    event: Any
    op: str = "event"


def event_frame(e: StoredEvent, side: Side | None) -> bytes:
    return _encoder.encode(EventFrame(e.plan_id, event_out(e, side)))


class Outbox:
    """One socket's bounded send queue. `close` asks the pump to close with a code.

    With `direct` (server/wsproto.py), a frame goes straight to the socket when nothing is
    queued or being written before it and the transport takes it now; otherwise it waits in
    the queue for the socket's sender task, in order.
    """

    def __init__(self, limit: int, direct: DirectFrames | None = None) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=limit)
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.closing = asyncio.Event()
        self.direct = direct
        self.writing = False  # the sender holds a frame taken from the queue

    def send(self, frame: bytes) -> bool:
        if self.close_code is not None:
            return False
        direct = self.direct
        if direct is not None and not self.writing and self.queue.empty():
            if direct.write(frame):
                return True
            if direct.gone:
                return False  # the socket is closing: its client resumes from what it got
        try:
            self.queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            self.close(CloseCode.TOO_SLOW, "too slow: reconnect and resume with since")
            return False

    async def put(self, frame: bytes) -> bool:
        """Queue `frame`, waiting for room: for replays, which the socket's own reader drives."""
        if self.close_code is not None:
            return False
        await self.queue.put(frame)
        return True

    def close(self, code: CloseCode, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.closing.set()


class Subscription:
    """One socket's view of one plan: what it was sent, and what waits while it catches up."""

    def __init__(
        self, plan_id: str, user: str, side: Side, outbox: Outbox, pending_limit: int
    ) -> None:
        self.plan_id = plan_id
        self.user = user
        self.side = side
        self.outbox = outbox
        self.last_sent = 0
        self.live = False
        self.pending: list[StoredEvent] = []
        self.pending_limit = pending_limit

    def offer(self, e: StoredEvent, frame: Callable[[StoredEvent, Side], bytes]) -> None:
        if not self.live:
            if len(self.pending) >= self.pending_limit:
                self.outbox.close(
                    CloseCode.TOO_SLOW, "too far behind while catching up: resume with since"
                )
                return
            self.pending.append(e)
            return
        self.deliver(e, frame)

    def deliver(self, e: StoredEvent, frame: Callable[[StoredEvent, Side], bytes]) -> None:
        if self.outbox.close_code is not None:
            return  # the socket is being closed; the client resumes from last_sent
        if e.version <= self.last_sent:
            return  # already sent (read from the database before going live)
        if e.version != self.last_sent + 1:
            # Cannot happen with an in-order log; if it ever does, never skip silently.
            log.error(
                "gap in plan %s: sent %s, got %s; closing so the client resumes",
                self.plan_id,
                self.last_sent,
                e.version,
                extra={"plan_id": self.plan_id},
            )
            self.outbox.close(CloseCode.TOO_SLOW, "resume from your last version")
            return
        if self.outbox.send(frame(e, self.side)):
            self.last_sent = e.version

    async def replay(self, events: list[StoredEvent]) -> None:
        """Send stored events before going live, at the pace the client reads them."""
        for e in events:
            if e.version <= self.last_sent:
                continue
            if e.version != self.last_sent + 1 or not await self.outbox.put(
                event_frame(e, self.side)
            ):
                self.outbox.close(CloseCode.TOO_SLOW, "resume from your last version")
                return
            self.last_sent = e.version

    def go_live(self, frame: Callable[[StoredEvent, Side], bytes]) -> None:
        pending, self.pending = self.pending, []
        self.live = True
        for e in pending:
            self.deliver(e, frame)


class _FrameCache:
    """Encode an event once per side, however many sockets of that side receive it."""

    def __init__(self, event: StoredEvent) -> None:
        self.event = event
        self.frames: dict[Side, bytes] = {}

    def __call__(self, e: StoredEvent, side: Side) -> bytes:
        if e is not self.event:
            return event_frame(e, side)
        cached = self.frames.get(side)
        if cached is None:
            cached = self.frames[side] = event_frame(e, side)
        return cached


class Hub:
    """This instance's subscriptions by plan, plus a short per-plan buffer of recent events."""

    def __init__(self, *, buffer_events: int = 256, buffer_plans: int = 2000) -> None:
        self.subscriptions: dict[str, set[Subscription]] = {}
        self.recent: OrderedDict[str, deque[StoredEvent]] = OrderedDict()
        self.buffer_events = buffer_events
        self.buffer_plans = buffer_plans
        self.on_membership: Callable[[StoredEvent], None] | None = None
        self.published = 0

    def add(self, sub: Subscription) -> None:
        self.subscriptions.setdefault(sub.plan_id, set()).add(sub)

    def remove(self, sub: Subscription) -> None:
        subs = self.subscriptions.get(sub.plan_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscriptions[sub.plan_id]

    def recent_after(self, plan_id: str, since: int) -> list[StoredEvent] | None:
        """Buffered events after `since` when the buffer reaches back that far, else None."""
        buf = self.recent.get(plan_id)
        if not buf or buf[0].version > since + 1:
            return None
        return [e for e in buf if e.version > since]

    def publish(self, events: list[StoredEvent]) -> None:
        """Called by the follower with the next slice of the global log, in order."""
        for e in events:
            self.published += 1
            buf = self.recent.get(e.plan_id)
            if buf is None:
                buf = self.recent[e.plan_id] = deque(maxlen=self.buffer_events)
                while len(self.recent) > self.buffer_plans:
                    self.recent.popitem(last=False)
            else:
                self.recent.move_to_end(e.plan_id)
            if buf and buf[-1].version + 1 != e.version:
                buf.clear()  # keep the buffer contiguous
            buf.append(e)
            subs = self.subscriptions.get(e.plan_id)
            if subs:
                frame = _FrameCache(e)
                for sub in list(subs):
                    sub.offer(e, frame)
            if e.type in ("MemberRevoked", "MemberRoleChanged") and self.on_membership is not None:
                self.on_membership(e)

    def subscribers(self, plan_id: str) -> set[Subscription]:
        return self.subscriptions.get(plan_id, set())
