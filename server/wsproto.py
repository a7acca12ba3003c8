"""The WebSocket protocol the server runs: uvicorn's `websockets-sansio`, plus direct frames.

Through ASGI, every message a socket is sent takes a task wake-up, a `websocket.send` dict,
Starlette's and uvicorn's send coroutines and the websockets library's framing, per socket:
bench/fanout.py measured that Python work (not the write itself) as most of the cost of a
delivery, and on the instance that also takes the appends it comes out of the append rate.
A hub event is the same bytes for every socket of a side, and a server frame is never masked,
so `DirectFrames` writes the text frame straight to the socket's transport: a header and the
payload, one `transport.write`, no task hop.

It is offered to the app as the ASGI scope extension `mapstream.direct_frames` only when no
WebSocket extension was negotiated (with permessage-deflate each socket compresses its own
way, so those sockets keep the ASGI path), and it writes only while the connection is open and
the transport is below its high-water mark; otherwise the caller queues and waits
(`Outbox` in server/hub.py). Any other server (or a test client) simply lacks the extension.
"""

from __future__ import annotations

import weakref
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

EXTENSION = "mapstream.direct_frames"


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 section 5.2) carrying `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def _closing(p: MapstreamWebSocketProtocol) -> bool:
    return (
        p.disconnected or p.close_sent or p.conn.state is not State.OPEN or p.transport.is_closing()
    )


class DirectFrames:
    """Write whole text messages to one socket's transport, bypassing the ASGI send path.

    Holds its protocol weakly: the protocol's scope holds this object, and a cycle would keep a
    closed connection alive until a full collection (see server/memory.py).
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: MapstreamWebSocketProtocol) -> None:
        self._protocol = weakref.ref(protocol)

    @property
    def gone(self) -> bool:
        """The connection is closing or closed: nothing more can be written."""
        p = self._protocol()
        return p is None or _closing(p)

    def write(self, payload: bytes) -> bool:
        """Write one text message now; False when the socket cannot take it now (the transport
        is above its high-water mark, or the connection is closing: see `gone`)."""
        p = self._protocol()
        if p is None or not p.writable.is_set() or _closing(p):
            return False
        p.transport.write(text_frame(payload))
        return True

    async def wait_writable(self) -> None:
        """Until the transport drains below its low-water mark (or the connection is lost)."""
        p = self._protocol()
        if p is not None:
            await p.writable.wait()


# What DirectFrames reads of uvicorn's protocol: if an upgrade renames any of it, sockets keep
# the ASGI path (slower, still correct) instead of failing mid-delivery
_NEEDED = ("transport", "writable", "close_sent", "disconnected", "conn")


class MapstreamWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol that offers `DirectFrames` to the app."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        # the app's task is only scheduled: it sees the extension when it starts
        if (
            scope is not None
            and all(hasattr(self, name) for name in _NEEDED)
            and not self.conn.extensions
        ):
            scope["extensions"][EXTENSION] = DirectFrames(self)


def uvicorn_ws_options(deflate: bool) -> dict[str, Any]:
    """The WebSocket options of every uvicorn that serves the app (`serve`, the tests)."""
    return {"ws": MapstreamWebSocketProtocol, "ws_per_message_deflate": deflate}
