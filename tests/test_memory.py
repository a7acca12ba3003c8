"""server/memory.py: closed socket transports are freed without the cyclic GC, and glibc's
mmap threshold stays fixed (256 KiB socket reads never land in the heap)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import socket
import subprocess
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import connect

from server import memory
from server.wsproto import uvicorn_ws_options
from tests.support import asgi_server


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Keep(asyncio.Protocol):
    def __init__(self, seen: list[weakref.ref[Any]], lost: asyncio.Event) -> None:
        self.seen = seen
        self.lost = lost

    def connection_made(self, transport: Any) -> None:
        self.seen.append(weakref.ref(transport))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


@pytest.mark.parametrize("how", ["close", "abort", "peer"])
async def test_a_closed_socket_transport_is_freed_without_the_cyclic_collector(how: str):
    assert memory.release_transport_cycle() == (sys.version_info < (3, 12))
    loop = asyncio.get_running_loop()
    seen: list[weakref.ref[Any]] = []
    lost = asyncio.Event()
    server = await loop.create_server(lambda: _Keep(seen, lost), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with no_cyclic_gc():
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(b"hello")
            async with asyncio.timeout(10):
                while not seen:
                    await asyncio.sleep(0.01)
            transport = seen[0]()
            assert transport is not None
            if how == "close":
                transport.close()
            elif how == "abort":
                transport.abort()
            else:
                client.close()
            del transport
            async with asyncio.timeout(10):
                await lost.wait()
            await asyncio.sleep(0)  # let the loop drop its handles
            client.close()
            # freed by reference counting alone: no cycle keeps it (or its socket) alive
            assert seen[0]() is None
    finally:
        server.close()
        await server.wait_closed()


async def _echo_until_closed(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


@pytest.mark.parametrize("abrupt", [True, False])
async def test_a_cut_websocket_leaves_no_cycle_behind(abrupt: bool):
    assert memory.release_websocket_parser()
    async with asgi_server(
        _echo_until_closed, lifespan="off", **uvicorn_ws_options(deflate=False)
    ) as server:
        port = server.config.port
        with no_cyclic_gc():
            ws = await connect(f"ws://127.0.0.1:{port}/")
            (protocol,) = server.server_state.connections
            assert isinstance(protocol, WebSocketsSansIOProtocol)
            parser = weakref.ref(protocol.conn)  # the websockets sans-I/O protocol
            del protocol
            if abrupt:
                ws.transport.abort()  # a phone losing signal: no close frame
            else:
                await ws.close()
            async with asyncio.timeout(10):
                while server.server_state.connections:
                    await asyncio.sleep(0.01)
                while parser() is not None:  # freed by reference counting alone
                    await asyncio.sleep(0.01)


# What asyncio's selector transport does at every read: sock.recv(256 KiB), a bytes object
# shrunk in place to the bytes read, some of which outlive the next reads (as buffered frames
# and parsed messages do), among other small blocks. Prints the growth of glibc's heap.
_READS = """
import ctypes, socket, sys
from server import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert memory.fix_mmap_threshold(memory.DEFAULT_MMAP_THRESHOLD)
big = bytearray(1024 * 1024)
del big  # a freed mmapped block: glibc raises a dynamic threshold to its size
a, b = socket.socketpair()
kept = []
start = libc.mallinfo2().arena
for i in range(3000):
    a.send(b"x" * 700)
    data = b.recv(256 * 1024)
    if i % 4 == 0:
        kept.append(data)
    if i % 3 == 0:
        kept.append(bytes(900))
    if len(kept) > 500:
        del kept[:250]
print(libc.mallinfo2().arena - start)
"""


def _heap_growth(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _READS, mode],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout.split()[-1])


def test_socket_reads_do_not_grow_the_heap_once_the_mmap_threshold_is_fixed():
    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc 2.33+ (mallinfo2)")
    dynamic = _heap_growth("dynamic")
    fixed = _heap_growth("fixed")
    # at most one read's worth (the heap's top may serve one before it is trimmed)
    assert fixed <= 512 * 1024, f"heap grew {fixed} bytes with the threshold fixed"
    # the scenario does reproduce the creep under glibc's default, dynamic threshold
    assert dynamic > 1024 * 1024, f"heap grew only {dynamic} bytes with the default"


def test_threshold_setting_must_be_a_number_of_bytes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MAPSTREAM_MALLOC_MMAP_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="MAPSTREAM_MALLOC_MMAP_THRESHOLD"):
        memory.mmap_threshold_from_env()
    monkeypatch.setenv("MAPSTREAM_MALLOC_MMAP_THRESHOLD", "-1")
    with pytest.raises(ValueError, match="bytes >= 0"):
        memory.mmap_threshold_from_env()
    monkeypatch.setenv("MAPSTREAM_MALLOC_MMAP_THRESHOLD", "0")
    assert memory.mmap_threshold_from_env() == 0
    assert not memory.fix_mmap_threshold(0)
    monkeypatch.delenv("MAPSTREAM_MALLOC_MMAP_THRESHOLD")
    assert memory.mmap_threshold_from_env() == memory.DEFAULT_MMAP_THRESHOLD
