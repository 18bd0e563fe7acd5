"""TenantDirectory: the rules of tenants, on the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.auth import TENANT_CHANGED_TOPIC, Credentials, TenantId
from service_kit.bus import InProcessEventBus
from service_kit.ratelimit import InMemoryRateLimiter
from tenant_service.errors import (
    InvalidCredentials,
    InvalidTenant,
    TenantConflict,
    TenantNotFound,
    TooManyFailedAttempts,
)
from tenant_service.store import SqlTenantStore
from tenant_service.tenants import Tenant, TenantDirectory, TenantPolicy, tenant_from_seed
from tests.conftest import unique


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


def new(**fields: object) -> Tenant:
    values: dict[str, object] = {"id": TenantId(""), "name": unique("dir"), "client_id": ""}
    values.update(fields)
    return Tenant(**values)  # type: ignore[arg-type]


async def test_created_secret_validates_and_is_not_stored_plain(
    directory: TenantDirectory, engine: AsyncEngine
) -> None:
    tenant, secret = await directory.create(new(permissions=("chat:*",)))
    assert tenant.client_id.startswith("kc_") and secret.startswith("ks_")
    context = await directory.validate(Credentials(tenant.client_id, secret))
    assert context.tenant_id == tenant.id and context.allows("chat:write")
    stored = await SqlTenantStore(engine).get_with_secret_hash(tenant.client_id)
    assert stored is not None and secret not in stored[1] and stored[1].startswith("scrypt$")


async def test_a_chosen_secret_works(directory: TenantDirectory) -> None:
    client_id = unique("reddit-clone")
    tenant, secret = await directory.create(new(client_id=client_id), client_secret="secret123")
    assert secret == "secret123"
    assert (await directory.validate(Credentials(client_id, "secret123"))).tenant_id == tenant.id


async def test_wrong_secret_and_unknown_client_look_the_same(directory: TenantDirectory) -> None:
    tenant, _ = await directory.create(new())
    with pytest.raises(InvalidCredentials) as wrong:
        await directory.validate(Credentials(tenant.client_id, "not-the-secret"))
    with pytest.raises(InvalidCredentials) as unknown:
        await directory.validate(Credentials(unique("nobody"), "whatever"))
    assert wrong.value.message == unknown.value.message


async def test_failed_attempts_are_limited_per_client_id(directory: TenantDirectory) -> None:
    tenant, secret = await directory.create(new())
    other, other_secret = await directory.create(new())
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            await directory.validate(Credentials(tenant.client_id, "guess"))
    with pytest.raises(TooManyFailedAttempts) as caught:
        await directory.validate(Credentials(tenant.client_id, secret))
    assert caught.value.retry_after > 0
    assert (await directory.validate(Credentials(other.client_id, other_secret))).name == other.name


async def test_rotation_replaces_the_secret_and_announces_it(
    directory: TenantDirectory, bus: InProcessEventBus
) -> None:
    announced: list[bytes] = []
    await bus.subscribe(TENANT_CHANGED_TOPIC, announced.append)
    tenant, old = await directory.create(new())
    _, fresh = await directory.rotate_secret(tenant.id)
    assert fresh != old
    with pytest.raises(InvalidCredentials):
        await directory.validate(Credentials(tenant.client_id, old))
    assert (await directory.validate(Credentials(tenant.client_id, fresh))).tenant_id == tenant.id
    assert announced == [tenant.id.encode()]


async def test_update_touches_only_masked_fields(directory: TenantDirectory) -> None:
    tenant, _ = await directory.create(new(permissions=("chat:*",), metadata={"a": 1}))
    changes = new(name="ignored", permissions=("chat:read",), rate_limit_rps=7, rate_limit_burst=9)
    updated = await directory.update(tenant.id, changes, ["permissions", "rate_limits"])
    assert updated.name == tenant.name and updated.metadata == {"a": 1}
    assert updated.permissions == ("chat:read",)
    assert (updated.rate_limit_rps, updated.rate_limit_burst) == (7, 9)
    assert await directory.get(tenant.id) == updated


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"name": "x" * 201}, "tenant.name"),
        ({"name": "  "}, "tenant.name"),
        ({"permissions": ("chat:*", "bad scope")}, "tenant.permissions[1]"),
        ({"allowed_origins": ("https://ok.example", "ftp://no")}, "tenant.allowed_origins[1]"),
        ({"rate_limit_rps": -1}, "tenant.rate_limits.requests_per_second"),
        ({"client_id": "a"}, "tenant.client_id"),
        ({"metadata": {"blob": "x" * 20000}}, "tenant.metadata"),
    ],
)
async def test_malformed_tenants_are_refused_and_not_stored(
    directory: TenantDirectory, fields: dict[str, object], bad_field: str
) -> None:
    before = await directory.count()
    with pytest.raises(InvalidTenant) as caught:
        await directory.create(new(**fields))
    assert bad_field in [v.field for v in caught.value.violations]
    assert await directory.count() == before


async def test_update_mask_must_name_known_fields(directory: TenantDirectory) -> None:
    tenant, _ = await directory.create(new())
    for mask in ([], ["client_id"], ["nonsense"]):
        with pytest.raises(InvalidTenant):
            await directory.update(tenant.id, new(), mask)


async def test_names_are_unique(directory: TenantDirectory) -> None:
    tenant, _ = await directory.create(new())
    with pytest.raises(TenantConflict):
        await directory.create(new(name=tenant.name))


async def test_deleted_tenants_are_gone(directory: TenantDirectory) -> None:
    tenant, secret = await directory.create(new())
    await directory.delete(tenant.id)
    with pytest.raises(TenantNotFound):
        await directory.get(tenant.id)
    with pytest.raises(InvalidCredentials):
        await directory.validate(Credentials(tenant.client_id, secret))
    with pytest.raises(TenantNotFound):
        await directory.delete(tenant.id)


def test_seed_entries_in_the_seed_document_shape() -> None:
    tenant, secret = tenant_from_seed(
        {
            "clientId": "reddit-clone",
            "clientSecret": "secret123",
            "permissions": {
                "websocket": ["chat:*", "presence:*"],
                "notification": ["send:*"],
                "files": ["upload:*"],
            },
        }
    )
    assert (tenant.client_id, tenant.name, secret) == ("reddit-clone", "reddit-clone", "secret123")
    assert tenant.permissions == ("chat:*", "presence:*", "send:*", "upload:*")
