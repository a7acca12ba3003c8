"""Direct frames (server/wsproto.py): hub messages written straight to the socket's transport.

The frames are checked against the websockets library's own parser, and over real sockets:
which sockets take the direct path (none that negotiated permessage-deflate), and that a
client which stops reading still gets every message in order once it reads again, through
the queue the direct path falls back to.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from server.wsproto import DirectFrames, text_frame
from tests.support import serving, settings_for, token
from tests.test_hub import (
    BUYER,
    SELLER,
    collect_versions,
    comment,
    new_plan,
    post,
    recv_until,
    ws_url,
)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_text_frame_is_what_a_client_parses(size: int) -> None:
    payload = json.dumps({"op": "event", "pad": "é" * (size // 2)}).encode()[:size]
    reader = StreamReader()
    reader.feed_data(text_frame(payload))
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame: Frame = done.value.value
    assert (frame.opcode, frame.fin, frame.rsv1) == (Opcode.TEXT, True, False)
    assert frame.data == payload
    assert reader.at_eof()  # nothing before or after the one frame


async def _outboxes(app: object, count: int) -> list[DirectFrames | None]:
    """The `direct` writer of each of the app's `count` authenticated sockets."""
    connections = app.state.connections  # type: ignore[attr-defined]
    async with asyncio.timeout(5):
        while len(connections) < count:
            await asyncio.sleep(0.02)
    return [c.outbox.direct for c in connections]


async def test_sockets_without_deflate_take_the_direct_path(database_url: str, tmp_path: Path):
    async with serving(settings_for(database_url, tmp_path)) as (app, base):
        plan_id = await new_plan(base)
        # the server declines permessage-deflate by default, so even a client offering it
        # gets plain frames, written directly
        async with connect(ws_url(base)) as ws:
            assert ws.protocol.extensions == []
            await ws.send(json.dumps({"op": "auth", "token": token(BUYER)}))
            await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
            await recv_until(ws, "live")
            [direct] = await _outboxes(app, 1)
            assert isinstance(direct, DirectFrames) and not direct.gone
            async with httpx.AsyncClient(base_url=base) as http:
                version = await comment(http, plan_id, 1)
            event = await recv_until(ws, "event")
            assert event["event"]["version"] == version
        async with asyncio.timeout(5):
            while app.state.connections:
                await asyncio.sleep(0.02)
        assert direct.gone  # the connection is gone: nothing more can be written


async def test_deflate_sockets_keep_the_asgi_path(database_url: str, tmp_path: Path):
    settings = settings_for(database_url, tmp_path, ws_deflate=True)
    async with serving(settings) as (app, base):
        plan_id = await new_plan(base)
        async with (
            connect(ws_url(base)) as deflated,
            connect(ws_url(base), compression=None) as plain,
        ):
            assert [e.name for e in deflated.protocol.extensions] == ["permessage-deflate"]
            assert plain.protocol.extensions == []
            for ws, who in ((deflated, SELLER), (plain, BUYER)):
                await ws.send(json.dumps({"op": "auth", "token": token(who)}))
                await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
                await recv_until(ws, "live")
            assert len(await _outboxes(app, 2)) == 2
            paths = {c.user: c.outbox.direct for c in app.state.connections}  # type: ignore[attr-defined]
            assert paths[SELLER] is None and isinstance(paths[BUYER], DirectFrames)
            async with httpx.AsyncClient(base_url=base) as http:
                versions = [await comment(http, plan_id, n) for n in range(3)]
            for ws in (deflated, plain):
                got = [(await recv_until(ws, "event"))["event"]["version"] for _ in versions]
                assert got == versions


async def test_a_paused_reader_gets_everything_in_order_through_the_queue(
    database_url: str, tmp_path: Path
):
    """While the transport is above its high-water mark, frames wait in the socket's queue and
    later ones never overtake them: when the client reads again it gets every version once."""
    async with serving(settings_for(database_url, tmp_path)) as (app, base):
        plan_id = await new_plan(base)
        port = int(base.rsplit(":", 1)[1])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        async with connect(ws_url(base), sock=sock, max_queue=1, compression=None) as ws:
            await ws.send(json.dumps({"op": "auth", "token": token(BUYER)}))
            await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
            live = await recv_until(ws, "live")
            [direct] = await _outboxes(app, 1)
            assert direct is not None
            [conn] = app.state.connections  # type: ignore[attr-defined]
            ws.transport.pause_reading()
            most_queued = 0
            text = "x" * 9_500
            async with httpx.AsyncClient(base_url=base) as http:
                for n in range(300):
                    r = await post(
                        http, plan_id, "add_comment", {"item_id": "plan", "text": f"{n} {text}"}
                    )
                    assert r.status_code == 200, r.text
                    most_queued = max(most_queued, conn.outbox.queue.qsize())
                last = r.json()["version"]
            assert most_queued > 0  # the transport was full: the queue was used
            assert conn.outbox.close_code is None  # well within the queue's limit
            # read again while more events come: while the queue drains, new ones wait behind
            ws.transport.resume_reading()
            reader = asyncio.create_task(collect_versions(ws, plan_id, last + 150, timeout=60))
            async with httpx.AsyncClient(base_url=base) as http:
                for n in range(150):
                    await comment(http, plan_id, n)
            assert await reader == list(range(live["version"] + 1, last + 151))


async def test_without_what_it_needs_of_uvicorn_a_socket_keeps_the_asgi_path(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An uvicorn that renamed what DirectFrames reads: sockets still work, the slower way."""
    import server.wsproto

    monkeypatch.setattr(server.wsproto, "_NEEDED", ("writable", "renamed_in_a_future_uvicorn"))
    async with serving(settings_for(database_url, tmp_path)) as (app, base):
        plan_id = await new_plan(base)
        async with connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"op": "auth", "token": token(BUYER)}))
            await ws.send(json.dumps({"op": "subscribe", "plan_id": plan_id}))
            await recv_until(ws, "live")
            assert await _outboxes(app, 1) == [None]
            async with httpx.AsyncClient(base_url=base) as http:
                version = await comment(http, plan_id, 1)
            assert (await recv_until(ws, "event"))["event"]["version"] == version
