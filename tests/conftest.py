"""Shared fixtures: real databases (SQLite and PostgreSQL), Redis, and a real Keel server.

The PostgreSQL database is created fresh for the test session and dropped at
the end; tests share it and use random names, so they never depend on order.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.ports import free_port
from service_kit.config import Settings, load_settings
from service_kit.db import create_engine, migrate

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("KEEL_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("KEEL_TEST_REDIS", "redis://127.0.0.1:6379/0")


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    """The URL of a PostgreSQL database made for this test session."""
    name = f"keel_test_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'keel.db'}"


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated engine on the session's database (SQLite or PostgreSQL)."""
    settings = load_settings({"DATABASE_URL": database_url})
    engine = create_engine(settings.database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - the machine runs Redis
        pytest.fail(f"Redis is not answering at {REDIS_URL}: {exc}")
    yield client
    await client.aclose()


def settings_for(database_url: str, tmp_path: Path, **changes: object) -> Settings:
    """Settings for an in-test server: port 0, no metrics port, cheap hashing, a known token."""
    env = {
        "DATABASE_URL": database_url,
        "KEEL_DATA_DIR": str(tmp_path / "var"),
        "KEEL_GRPC_ADDR": "127.0.0.1:0",
        "KEEL_FILES_HTTP_ADDR": "127.0.0.1:0",
        "KEEL_METRICS_ADDR": "off",
        "KEEL_ADMIN_TOKEN": ADMIN_TOKEN,
        "KEEL_SECRET_HASH_COST": "10",
        "KEEL_SHUTDOWN_GRACE_SECONDS": "2",
        "KEEL_TOKEN_SECRET": "test-client-token-secret-0123456789abcdef",
    }
    return replace(load_settings(env), **changes)  # type: ignore[arg-type]


ADMIN_TOKEN = "test-operator-token-0123456789"


@pytest.fixture
def keel_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for running the ``keel`` command as a subprocess on a fresh SQLite file."""
    env = {
        k: v for k, v in os.environ.items() if not (k.startswith("KEEL_") or k == "DATABASE_URL")
    }
    env.update(
        KEEL_DATA_DIR=str(tmp_path / "var"),
        KEEL_GRPC_ADDR=f"127.0.0.1:{free_port()}",
        KEEL_METRICS_ADDR=f"127.0.0.1:{free_port()}",
        KEEL_WS_ADDR=f"127.0.0.1:{free_port()}",
        KEEL_FILES_HTTP_ADDR=f"127.0.0.1:{free_port()}",
        KEEL_SECRET_HASH_COST="10",
        PYTHONUNBUFFERED="1",
    )
    yield env
