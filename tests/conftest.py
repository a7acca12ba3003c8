"""Fixtures: one fresh PostgreSQL database per test session (embedded unless DATABASE_URL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, settings

from server.plans import PlanService
from server.store import Store
from tests.support import (
    fresh_database,
    running_app,
    settings_for,
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
    async with fresh_database() as url:
        yield url


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
