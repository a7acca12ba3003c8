"""Offline tools behind the CLI: they talk to the database directly, with progress."""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from domain import chain
from server.database import apply_schema, resolve_database_url, wait_for_database
from server.settings import Settings
from server.store import Store, StoredEvent


def link_of(e: StoredEvent) -> chain.Link:
    import msgspec

    return chain.Link(
        plan_id=e.plan_id,
        version=e.version,
        recorded_at=e.recorded_at,
        data_digest=e.data_digest,
        hash=e.hash,
        type=e.type,
        actor=e.actor,
        data=msgspec.Raw(e.data.encode()),
    )


async def verify_plan(store: Store, plan_id: str) -> chain.Verdict:
    """Recompute one plan's chain, reading it in pages so a long plan stays in bounded memory."""
    links: list[chain.Link] = []
    after = 0
    while True:
        page = await store.read_stream(plan_id, after=after, limit=5000)
        if not page:
            break
        links.extend(link_of(e) for e in page)
        after = page[-1].version
    return await asyncio.to_thread(chain.verify, links)


async def open_store(settings: Settings) -> tuple[Store, asyncpg.Pool]:
    url, _embedded = await asyncio.to_thread(
        resolve_database_url, settings.database_url, settings.data_dir
    )
    await wait_for_database(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert pool is not None
    async with pool.acquire() as conn:
        await apply_schema(conn)
    return Store(pool), pool


async def verify_plans(settings: Settings, plan_id: str | None) -> int:
    store, pool = await open_store(settings)
    try:
        ids = [plan_id] if plan_id else await store.plan_ids()
        broken = 0
        for n, pid in enumerate(ids, 1):
            verdict = await verify_plan(store, pid)
            if verdict.version == 0 and verdict.ok:
                print(f"{pid}: no such plan", file=sys.stderr)
                broken += 1
            elif verdict.ok:
                print(
                    f"[{n}/{len(ids)}] {pid}: ok, {verdict.version} events, head {verdict.head_hash}"
                )
            else:
                broken += 1
                print(
                    f"[{n}/{len(ids)}] {pid}: BROKEN at version {verdict.broken_at} "
                    f"({verdict.reason}); the chain is intact up to version {verdict.version}"
                )
        return 1 if broken else 0
    finally:
        await pool.close()
