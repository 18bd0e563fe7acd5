"""SqlTenantStore on SQLite and on PostgreSQL (the ``engine`` fixture runs each test on both)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.auth import TenantId
from service_kit.validation import new_id
from tenant_service.errors import TenantConflict
from tenant_service.store import SqlTenantStore
from tenant_service.tenants import Tenant
from tests.conftest import unique


def make_tenant(**changes: object) -> Tenant:
    now = datetime.now(UTC).replace(microsecond=0)
    tenant = Tenant(
        id=TenantId(new_id()),
        name=unique("store"),
        client_id=unique("cid"),
        permissions=("chat:*", "upload:*"),
        rate_limit_rps=5,
        rate_limit_burst=10,
        allowed_origins=("https://app.example.com",),
        require_origin=True,
        metadata={"plan": "pro", "nested": {"a": [1, 2]}},
        create_time=now,
        update_time=now,
        secret_rotate_time=now,
    )
    return replace(tenant, **changes)  # type: ignore[arg-type]


async def test_insert_then_read_back_every_field(engine: AsyncEngine) -> None:
    store = SqlTenantStore(engine)
    tenant = make_tenant()
    await store.insert(tenant, "hash-1", None)
    assert await store.get(tenant.id) == tenant
    found = await store.get_with_secret_hash(tenant.client_id)
    assert found == (tenant, "hash-1")


async def test_unknown_ids_read_as_none(engine: AsyncEngine) -> None:
    store = SqlTenantStore(engine)
    assert await store.get(new_id()) is None
    assert await store.get_with_secret_hash("nobody") is None
    assert await store.delete(new_id()) is False
    assert await store.set_secret(new_id(), "h", datetime.now(UTC)) is None


@pytest.mark.parametrize("field", ["name", "client_id", "request_id"])
async def test_unique_fields_conflict_and_store_nothing(engine: AsyncEngine, field: str) -> None:
    store = SqlTenantStore(engine)
    first = make_tenant()
    request_id = unique("req")
    await store.insert(first, "h", request_id)
    second = make_tenant()
    if field != "request_id":
        second = replace(second, **{field: getattr(first, field)})
    with pytest.raises(TenantConflict) as caught:
        await store.insert(second, "h", request_id if field == "request_id" else None)
    assert field.split("_")[0] in caught.value.message
    assert await store.get(second.id) is None


async def test_update_changes_only_the_given_fields(engine: AsyncEngine) -> None:
    store = SqlTenantStore(engine)
    tenant = make_tenant()
    await store.insert(tenant, "h", None)
    later = tenant.update_time + timedelta(1)
    # Two administrators change different fields; neither change is lost.
    await store.update(tenant.id, {"permissions": ("chat:read",)}, later)
    updated = await store.update(tenant.id, {"metadata": {}}, later)
    expected = replace(tenant, permissions=("chat:read",), metadata={}, update_time=later)
    assert updated == expected
    assert await store.get(tenant.id) == expected
    assert await store.update(new_id(), {"name": "nobody"}, later) is None


async def test_set_secret_replaces_the_hash(engine: AsyncEngine) -> None:
    store = SqlTenantStore(engine)
    tenant = make_tenant()
    await store.insert(tenant, "old", None)
    later = tenant.create_time + timedelta(hours=1)
    updated = await store.set_secret(tenant.id, "new", later)
    assert updated is not None and updated.secret_rotate_time == later
    assert (await store.get_with_secret_hash(tenant.client_id)) == (updated, "new")


async def test_replacing_a_hash_needs_the_current_one_and_changes_no_time(
    engine: AsyncEngine,
) -> None:
    store = SqlTenantStore(engine)
    tenant = make_tenant()
    await store.insert(tenant, "slow", None)
    # A rotation landed after the check that wants the upgrade: the upgrade must lose.
    assert not await store.replace_secret_hash(tenant.id, "stale", "fast")
    assert not await store.replace_secret_hash(new_id(), "slow", "fast")
    assert (await store.get_with_secret_hash(tenant.client_id)) == (tenant, "slow")
    assert await store.replace_secret_hash(tenant.id, "slow", "fast")
    assert (await store.get_with_secret_hash(tenant.client_id)) == (tenant, "fast")


async def test_list_pages_in_creation_order(engine: AsyncEngine) -> None:
    store = SqlTenantStore(engine)
    base = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=int(new_id()[:4], 16))
    made = [make_tenant(create_time=base + timedelta(seconds=i)) for i in range(5)]
    for tenant in reversed(made):
        await store.insert(tenant, "h", None)
    seen: list[Tenant] = []
    after = (base - timedelta(microseconds=1), "")
    while True:
        page = await store.list(limit=2, after=after)
        page = [t for t in page if t.create_time < base + timedelta(seconds=5)]
        if not page:
            break
        seen += page
        after = (page[-1].create_time, page[-1].id)
    assert [t.id for t in seen] == [t.id for t in made]


async def test_delete_removes_the_tenant(engine: AsyncEngine) -> None:
    store = SqlTenantStore(engine)
    tenant = make_tenant()
    await store.insert(tenant, "h", None)
    before = await store.count()
    assert await store.delete(tenant.id)
    assert await store.get(tenant.id) is None
    assert await store.count() == before - 1
