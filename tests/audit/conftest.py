"""Two private databases for the auditor tests, so their runners and tampering touch no one:

- `audit_db`: no server. Tests drive projection runners by hand (crash, race, rebuild).
- `app_db`: a server runs on it (`client`), with its own projection runners in the lifespan.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

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


async def _fresh_database() -> tuple[str, str, str]:
    admin = await asyncio.to_thread(admin_url)
    name = await create_database(admin)
    url = with_database(admin, name)
    conn = await asyncpg.connect(url)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
    return admin, name, url


@pytest.fixture(scope="package")
async def audit_db() -> AsyncIterator[str]:
    admin, name, url = await _fresh_database()
    yield url
    await drop_database(admin, name)


@pytest.fixture(scope="module")
async def runner_db() -> AsyncIterator[str]:
    """A database of its own for the runner property test (see the note in test_runner.py)."""
    admin, name, url = await _fresh_database()
    yield url
    await drop_database(admin, name)


@pytest.fixture(scope="package")
async def audit_pool(audit_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(audit_db, min_size=2, max_size=12)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
def audit_store(audit_pool: asyncpg.Pool) -> Store:
    return Store(audit_pool)


@pytest.fixture
def audit_service(audit_store: Store) -> PlanService:
    return PlanService(audit_store)


@pytest.fixture(scope="package")
async def app_db() -> AsyncIterator[str]:
    admin, name, url = await _fresh_database()
    yield url
    await drop_database(admin, name)


@pytest.fixture(scope="package")
def app_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit-app")


@pytest.fixture(scope="package")
async def app_url(app_db: str, app_data_dir: Path) -> AsyncIterator[str]:
    async with running_app(settings_for(app_db, app_data_dir)) as url:
        yield url


@pytest.fixture
async def client(app_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=app_url, timeout=10) as c:
        yield c


@pytest.fixture
async def app_pool(app_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(app_db, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()
