"""Fixtures of the tenant service's tests: a directory on the real store (SQLite and
PostgreSQL, through the ``engine`` fixture) with an in-process bus and cheap hashing."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.bus import InProcessEventBus
from service_kit.ratelimit import InMemoryRateLimiter
from tenant_service.store import SqlTenantStore
from tenant_service.tenants import TenantDirectory, TenantPolicy


@pytest.fixture
def bus() -> InProcessEventBus:
    return InProcessEventBus()


@pytest.fixture
def directory(engine: AsyncEngine, bus: InProcessEventBus) -> TenantDirectory:
    return TenantDirectory(
        SqlTenantStore(engine),
        bus=bus,
        rate_limiter=InMemoryRateLimiter(),
        policy=TenantPolicy(secret_hash_cost=10, validate_failures_per_minute=3),
    )
