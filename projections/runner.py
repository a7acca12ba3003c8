"""Asynchronous projections: follow the gap-free global log, apply each event exactly once.

A runner reads a batch of events after its checkpoint, turns them into read-model rows and
hands rows and the batch's last cursor to its read model, which commits both in ONE
transaction that first moves the checkpoint from where the batch started (compare-and-set).
So:

- a crash (or cancellation) anywhere before that commit leaves rows and checkpoint as they
  were: the restarted runner reads the same batch again and applies it once;
- a second writer of the same read model (another instance, `mapstream rebuild`) that moved
  the checkpoint makes this runner's commit a no-op; it re-reads from the checkpoint.

Only one runner per projection works at a time across instances: `run` first takes the read
model's lease (a PostgreSQL advisory lock); the others stand by. The lease saves duplicate
work; correctness never depends on it, only on the compare-and-set.

This module knows no SQL: the log and the read model are passed in (`server/store.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

Cursor = tuple[int, int]  # (transaction_id, position): the global log's order
START: Cursor = (0, 0)

Row = TypeVar("Row")
Row_co = TypeVar("Row_co", covariant=True)
Row_contra = TypeVar("Row_contra", contravariant=True)

Hook = Callable[[], Awaitable[None]]


class LogEvent(Protocol):
    """What a projection reads of one stored event (`server.store.StoredEvent` is one)."""

    @property
    def plan_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def data(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def command_id(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def recorded_at(self) -> datetime: ...
    @property
    def audience(self) -> str | None: ...
    @property
    def hash(self) -> str: ...
    @property
    def cursor(self) -> Cursor: ...


class Log(Protocol):
    """The gap-free global log."""

    async def read_log(self, after: Cursor = START, limit: int = 1000) -> Sequence[LogEvent]: ...
    async def log_head(self) -> Cursor: ...
    async def log_count(self, upto: Cursor | None = None) -> int: ...


class Lease(Protocol):
    held: bool

    async def renew(self) -> None:
        """Raise when the lease is lost (its connection dropped)."""


class ReadModel(Protocol[Row_contra]):
    """Where a projection's rows go, with the checkpoint committed in the same transaction."""

    name: str

    async def checkpoint(self) -> Cursor: ...

    async def commit(
        self,
        expected: Cursor,
        cursor: Cursor,
        rows: Sequence[Row_contra],
        before_commit: Hook | None = None,
    ) -> bool:
        """Move the checkpoint from `expected` to `cursor` and write `rows`, atomically.

        False (and nothing written) when the checkpoint is no longer at `expected`."""
        ...

    async def clear(self) -> None:
        """Drop every row and put the checkpoint back to the start, atomically."""
        ...

    def lease(self) -> AbstractAsyncContextManager[Lease]: ...


class Projection(Protocol[Row_co]):
    """Turns log events into read-model rows. May keep in-memory state between batches."""

    async def project(self, events: Sequence[LogEvent]) -> Sequence[Row_co]: ...

    def reset(self) -> None:
        """Forget in-memory state: the next batch may not follow the last one."""
        ...


class Progress(Protocol):
    def __call__(self, done: int, total: int, rate: float) -> None: ...


def stopping() -> bool:
    """Whether the current task is being cancelled (shutdown), even if a cleanup step raised
    another error in the meantime: a restart loop must then end, not restart."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ProjectionRunner(Generic[Row]):
    """Keeps one read model up to date with the log. `run` forever, or `catch_up` once."""

    def __init__(
        self,
        projection: Projection[Row],
        model: ReadModel[Row],
        log_: Log,
        *,
        batch: int = 500,
        poll_interval: float = 0.2,
        standby_interval: float = 2.0,
        rest: float = 1.0,
    ) -> None:
        self.projection = projection
        self.model = model
        self.log = log_
        self.batch = batch
        self.poll_interval = poll_interval
        self.standby_interval = standby_interval
        self.rest = rest  # while following: seconds of rest per second of work
        self.cursor: Cursor | None = None  # None: read the checkpoint before the next batch
        self.applied = 0  # events this runner committed
        self.conflicts = 0  # batches someone else committed first
        self.leading = False
        # Test seam: awaited inside the commit transaction, after the rows are written and
        # before the transaction commits (raise or hang here to simulate a crash).
        self.before_commit: Hook | None = None
        self._wake = asyncio.Event()
        self._stepping: asyncio.Task[object] | None = None

    @property
    def name(self) -> str:
        return self.model.name

    def wake(self) -> None:
        """New events may be there: look now rather than at the next poll."""
        self._wake.set()

    async def step(self) -> int:
        """Apply the next batch. Returns how many events this call committed."""
        if self._stepping is not None:
            raise RuntimeError(
                f"projection {self.name}: step() called while {self._stepping} is in one; "
                "a runner is not re-entrant"
            )
        self._stepping = asyncio.current_task()
        try:
            return await self._step()
        finally:
            self._stepping = None

    async def _step(self) -> int:
        if self.cursor is None:
            self.cursor = await self.model.checkpoint()
        start = self.cursor
        events = await self.log.read_log(start, self.batch)
        if not events:
            return 0
        end = events[-1].cursor
        if end <= start:
            raise RuntimeError(f"projection {self.name}: the log went back from {start} to {end}")
        try:
            rows = await self.projection.project(events)
            committed = await self.model.commit(start, end, rows, self.before_commit)
        except BaseException:
            # the transaction rolled back: nothing of this batch is applied
            self._forget()
            raise
        if not committed:
            self.conflicts += 1
            log.info("projection %s: checkpoint moved under us, re-reading it", self.name)
            self._forget()
            return 0
        self.cursor = end
        self.applied += len(events)
        return len(events)

    def _forget(self) -> None:
        self.cursor = None
        self.projection.reset()

    async def catch_up(self, progress: Progress | None = None) -> int:
        """Apply everything up to the log's head as of now; returns events committed here."""
        head = await self.log.log_head()
        if self.cursor is None:
            self.cursor = await self.model.checkpoint()
        total = done = 0
        if progress is not None:
            total = await self.log.log_count(head)
            done = await self.log.log_count(self.cursor)
        started = time.monotonic()
        applied_before = self.applied
        idle = 0
        while True:
            if self.cursor is None:
                self.cursor = await self.model.checkpoint()
            if self.cursor >= head:
                break
            n = await self.step()
            idle = idle + 1 if n == 0 else 0
            if idle > 100:  # the checkpoint keeps moving under us: someone else is applying
                await asyncio.sleep(0.05)
            if idle > 700:  # ~30 s without progress: say so instead of spinning forever
                raise RuntimeError(
                    f"projection {self.name}: no progress for 30 s at {self.cursor} "
                    f"(log head {head}); another runner may hold the checkpoint"
                )
            if progress is not None and n:
                done += n
                elapsed = max(time.monotonic() - started, 1e-9)
                progress(min(done, total), total, (self.applied - applied_before) / elapsed)
        return self.applied - applied_before

    async def rebuild(self, progress: Progress | None = None) -> int:
        """Drop the read model and apply the whole log again from position 0."""
        await self.model.clear()
        self._forget()
        return await self.catch_up(progress)

    async def run(self) -> None:
        """Follow the log forever while holding the lease; stand by while another holds it."""
        while True:
            try:
                async with self.model.lease() as lease:
                    if not lease.held:
                        await self._sleep(self.standby_interval)
                        continue
                    self.leading = True
                    self._forget()
                    await self._follow(lease)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stopping():
                    raise  # an error raised while cancelling must not keep the task alive
                log.warning("projection %s stopped (%s); restarting", self.name, exc)
                self._forget()
                await asyncio.sleep(1.0)
            finally:
                self.leading = False

    async def _follow(self, lease: Lease) -> None:
        renew_at, recheck_at = time.monotonic() + 5.0, 0.0
        while True:
            self._wake.clear()  # a wake() from now on is not lost while we step
            started = time.monotonic()
            n = await self.step()
            now = time.monotonic()
            if now > renew_at:
                await lease.renew()
                renew_at = now + 5.0
            if n:
                # Live sockets share this process: rest as long as the batch took, so a
                # projection uses at most about half of it and lags a little under bursts.
                await asyncio.sleep(min(now - started, 1.0) * self.rest)
            if n >= self.batch:
                continue
            if n == 0 and now > recheck_at:
                # idle: a reset (`mapstream rebuild`) shows only in the checkpoint itself
                recheck_at = now + 1.0
                if self.cursor is not None and await self.model.checkpoint() != self.cursor:
                    log.info(
                        "projection %s: checkpoint moved (a rebuild?), following it", self.name
                    )
                    self._forget()
                    continue
            await self._sleep(self.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass
