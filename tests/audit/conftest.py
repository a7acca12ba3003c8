"""Two private databases for the auditor tests, so their runners and tampering touch no one:

- `audit_db`: no server. Tests drive projection runners by hand (crash, race, rebuild).
- `app_db`: a server runs on it (`client`), with its own projection runners in the lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from server.plans import PlanService
from server.store import Store
from tests.support import (
    fresh_database,
    running_app,
    settings_for,
)


@pytest.fixture(scope="package")
async def audit_db() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
async def runner_db() -> AsyncIterator[str]:
    """A database of its own for the runner property test (see the note in test_runner.py)."""
    async with fresh_database() as url:
        yield url


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
    async with fresh_database() as url:
        yield url


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
