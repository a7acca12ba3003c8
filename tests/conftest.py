"""Fixtures: one fresh PostgreSQL database per test session (embedded unless DATABASE_URL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, settings

from server.database import apply_schema
from server.plans import PlanService
from server.store import Store
from tests.support import (
    admin_url,
    create_database,
    drop_database,
    running_app,
    settings_for,
    with_database,
)

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    max_examples=40,
)
settings.load_profile("ci")


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    admin = await asyncio.to_thread(admin_url)
    name = await create_database(admin)
    url = with_database(admin, name)
    conn = await asyncpg.connect(url)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
    yield url
    await drop_database(admin, name)


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_url, min_size=2, max_size=30)
    assert p is not None
    yield p
    await p.close()


@pytest.fixture(scope="session")
def store(pool: asyncpg.Pool) -> Store:
    return Store(pool)


@pytest.fixture
def service(store: Store) -> PlanService:
    return PlanService(store)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
async def base_url(database_url: str, data_dir: Path) -> AsyncIterator[str]:
    async with running_app(settings_for(database_url, data_dir)) as url:
        yield url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield client
