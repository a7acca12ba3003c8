"""The global log is gap-free for readers, even when commits land out of position order."""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg

from server.store import LOG_START, LogCursor, Store
from tests.support import fresh_database

_INSERT = """
INSERT INTO events (plan_id, version, type, data, actor, recorded_at, data_digest, hash)
VALUES ($1, 1, 'Probe', '{}', 'test', now(), 'd', 'h') RETURNING position
"""


async def slow_writer(pool: asyncpg.Pool, delay: float) -> int:
    """Insert one event, then hold the transaction open for `delay` before committing."""
    async with pool.acquire() as conn, conn.transaction():
        position: int = await conn.fetchval(_INSERT, f"log-{uuid.uuid4().hex}")
        await asyncio.sleep(delay)
    return position


async def test_reader_does_not_skip_an_event_committed_after_a_later_position(
    store: Store, pool: asyncpg.Pool
):
    head = await store.log_head()
    last = await pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
    slow = asyncio.create_task(slow_writer(pool, 0.6))
    await asyncio.sleep(0.1)  # the slow transaction has taken its position
    fast = await slow_writer(pool, 0)
    naive_seen = await pool.fetch(
        "SELECT position FROM events WHERE position > $1 ORDER BY position", last
    )
    # A plain bigserial reader sees the later position now and would checkpoint past the
    # earlier one, skipping it forever: that is the bug the xid8 horizon prevents.
    assert [r["position"] for r in naive_seen] == [fast]
    assert fast not in [e.position for e in await store.read_log(head, limit=100_000)]
    slow_position = await slow
    assert slow_position < fast
    ours = {slow_position, fast}

    async def seen() -> list[int]:
        return [e.position for e in await store.read_log(head, limit=100_000) if e.position in ours]

    after = await seen()
    for _ in range(1200):  # an unrelated open transaction elsewhere only delays visibility
        if len(after) == 2:
            break
        await asyncio.sleep(0.05)
        after = await seen()
    assert after == [slow_position, fast]


async def test_polling_reader_sees_every_event_once_with_concurrent_delayed_commits(
    store: Store, pool: asyncpg.Pool
):
    rng = random.Random(7)
    start = await store.log_head()
    floor = await pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
    written: list[int] = []
    done = asyncio.Event()

    async def writers() -> None:
        async def one(delay: float) -> None:
            written.append(await slow_writer(pool, delay))

        await asyncio.gather(
            *(one(rng.random() * 0.05 if rng.random() < 0.7 else 0.2) for _ in range(150))
        )
        done.set()

    seen: list[int] = []
    cursor: LogCursor = start

    async def reader() -> None:
        nonlocal cursor
        async with asyncio.timeout(90):
            # after the writers finish, keep polling until the horizon passes them all (an
            # unrelated open transaction elsewhere in the cluster may hold it back a while)
            while not (done.is_set() and len(seen) >= len(written)):
                batch = await store.read_log(cursor, limit=17)
                for e in batch:
                    assert e.cursor > cursor, "the log cursor went backwards"
                    cursor = e.cursor
                    if e.type == "Probe" and e.position > floor:
                        seen.append(e.position)
                await asyncio.sleep(0.003)

    await asyncio.gather(writers(), reader())
    assert sorted(seen) == sorted(written)
    assert len(seen) == len(set(seen))


async def test_log_start_reads_from_the_beginning(store: Store):
    first = await store.read_log(LOG_START, limit=1)
    assert first, "earlier tests appended events"


async def test_the_log_is_ordered_by_transaction_number_not_by_its_digits():
    """Regression: the log's cursor columns are read as text (xid8 has no binary codec);
    ordering by that text put transaction 999 after 1001 and stalled every projection the
    first time a brand-new cluster crossed a power of ten."""
    async with fresh_database() as url:
        conn = await asyncpg.connect(url)
        try:
            for xid in (9, 10, 99, 100, 999, 1001):  # long committed: below every horizon
                await conn.execute(
                    "INSERT INTO events (plan_id, version, transaction_id, type, data, actor,"
                    " recorded_at, data_digest, hash) VALUES"
                    " ('digits', $1, $2::text::xid8, 'Probe', '{}', 'test', now(), 'd', 'h')",
                    xid,
                    str(xid),
                )
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            store = Store(pool)
            log = await store.read_log(LOG_START, limit=100)
            assert [e.transaction_id for e in log] == [9, 10, 99, 100, 999, 1001]
            assert (await store.log_head())[0] == 1001
            assert [e.transaction_id for e in await store.read_log(log[1].cursor, 2)] == [99, 100]
        finally:
            await pool.close()
