"""Keep the server's resident memory flat under connection churn.

bench/soak.py (500 sockets, 5 dropped and reconnected a second, 20 writes/s) showed the RSS
of `mapstream serve` growing ~7 MiB a minute without levelling off (5-minute run: +7.8,
+7.3, +7.0, +6.9 MiB in minutes 2-5), with no task or fd growth. Three causes, each fixed
here at its source; `start()` applies the fixes once per process, from the app's lifespan:

1. The C heap, ~6 MiB/min. asyncio's selector transport reads every socket (clients and
   PostgreSQL alike) with `sock.recv(256 KiB)`: a 256 KiB bytes object, then shrunk in place
   to the bytes actually read. glibc serves requests of 128 KiB and more with mmap at first,
   but its *dynamic* threshold rises above 256 KiB as soon as one such block is freed, so
   from then on every read carves 256 KiB out of the heap and leaves the small result
   behind; with other small blocks placed in the freed tail, no 256 KiB hole is ever free
   again and the heap grows at its top. mallinfo2 in the server showed it: in-use bytes flat
   at 15 MB, free bytes inside the heap 4 -> 19 MB in 2.5 minutes (tracemalloc, which sees
   only live blocks, stayed flat). A fixed `M_MMAP_THRESHOLD` (128 KiB, glibc's initial
   value, no longer adjusted) keeps these transient buffers out of the heap: the heap then
   stayed at 15.7 MB with ~0.6 MB free. Cost: an mmap/mremap/munmap and a page fault per
   read: a 700-byte send+recv pair went from ~2.3 to ~15 us on the (loaded) 2-core test
   machine, against the tens of microseconds of Python the server spends on each read. `MAPSTREAM_MALLOC_MMAP_THRESHOLD` (bytes;
   0 keeps glibc's dynamic threshold) changes it; a no-op where malloc is not glibc.

2. and 3. Python objects, ~1 MiB/min: every closed connection was a reference cycle, left
   to the cyclic garbage collector, and the server freezes its startup objects and makes
   full collections rare (server/cli.py: they pause thousands of sockets for ~100 ms), so
   closed connections piled up in the oldest generation (a forced full collection after
   2.5 minutes freed 55,000 blocks: ~900 transports with their sockets, buffers and `extra`
   dicts, and the sockets' WebSocket protocol state).
   - Python 3.11's socket transport keeps a bound method of itself (`_read_ready_cb`).
     CPython 3.12 releases it on close (gh-100348); `release_transport_cycle` backports
     that: on 3.11 it is dropped when the connection is lost.
   - uvicorn's `websockets-sansio` protocol never tells the websockets protocol that the
     stream ended, so its parser (a generator referencing the protocol) stays suspended,
     and a failed parse keeps an exception whose traceback holds the parser's frame.
     `release_websocket_parser` feeds the end of the stream when the connection is lost and
     drops both references.
   A closed connection is then freed at once by reference counting (tests/test_memory.py).

A periodic `malloc_trim(0)` was measured too: it hides the first cause rather than fixing it
(the pages of the holes go back to the kernel while the heap keeps growing) and measured
nothing more once the fixes are in (+859 vs +949 KiB/min in two 3-minute soaks side by
side, before the third fix), so there is no trim task.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
DEFAULT_MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value, fixed

_applied: dict[str, Any] = {}


def mmap_threshold_from_env() -> int:
    raw = os.environ.get("MAPSTREAM_MALLOC_MMAP_THRESHOLD", "").strip()
    if not raw:
        return DEFAULT_MMAP_THRESHOLD
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"MAPSTREAM_MALLOC_MMAP_THRESHOLD must be a number of bytes >= 0, not {raw!r}"
        )
    return value


def fix_mmap_threshold(threshold: int) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes (0: leave it dynamic); whether it did."""
    if threshold == 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt tuning)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def release_transport_cycle() -> bool:
    """Python 3.11: drop a socket transport's bound `_read_ready_cb` when its connection is
    lost (what 3.12 does in close(), gh-100348), so a closed transport is no reference cycle.
    Whether the patch is in place (False on 3.12+, where it is not needed)."""
    if sys.version_info >= (3, 12):
        return False
    from asyncio import selector_events

    cls: Any = getattr(selector_events, "_SelectorSocketTransport", None)
    if cls is None or not hasattr(cls, "_call_connection_lost"):
        return False
    if getattr(cls, "_mapstream_cycle_fix", False):
        return True
    original = cls._call_connection_lost

    def _call_connection_lost(self: Any, exc: BaseException | None) -> None:
        try:
            original(self, exc)
        finally:
            self._read_ready_cb = None

    cls._call_connection_lost = _call_connection_lost
    cls._mapstream_cycle_fix = True
    return True


def release_websocket_parser() -> bool:
    """uvicorn's `websockets-sansio` protocol: feed the end of the stream to the websockets
    protocol when the connection is lost, so its parser (a generator that references the
    protocol: a reference cycle) runs to its end; whether the patch is in place."""
    try:
        from uvicorn.protocols.websockets import websockets_sansio_impl
    except ImportError:
        return False
    cls: Any = getattr(websockets_sansio_impl, "WebSocketsSansIOProtocol", None)
    if cls is None or not hasattr(cls, "connection_lost"):
        return False
    if getattr(cls, "_mapstream_parser_fix", False):
        return True
    original = cls.connection_lost

    def connection_lost(self: Any, exc: Exception | None) -> None:
        try:
            original(self, exc)
        finally:
            conn = getattr(self, "conn", None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.receive_eof()  # public sans-I/O API, idempotent: the parser stops
                # the stopped parser (a generator) and its EOFError (whose traceback holds
                # the parser's frame) both reference the protocol; nothing reads either once
                # the connection is lost, as no more data can arrive
                conn.parser = None
                conn.parser_exc = None

    cls.connection_lost = connection_lost
    cls._mapstream_parser_fix = True
    return True


def start() -> dict[str, Any]:
    """Apply the fixes, once per process (no background task is needed); what was applied."""
    if not _applied:
        threshold = mmap_threshold_from_env()
        _applied["mmap_threshold"] = threshold if fix_mmap_threshold(threshold) else None
        _applied["transport_cycle"] = release_transport_cycle()
        _applied["websocket_parser"] = release_websocket_parser()
        log.debug("memory upkeep: %s", _applied)
    return dict(_applied)
