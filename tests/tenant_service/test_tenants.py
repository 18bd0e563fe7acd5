"""TenantDirectory: the rules of tenants, on the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.auth import TENANT_CHANGED_TOPIC, Credentials, TenantId
from service_kit.bus import InProcessEventBus
from service_kit.ratelimit import InMemoryRateLimiter, RedisRateLimiter
from tenant_service import credentials as creds
from tenant_service import tenants as tenants_module
from tenant_service.errors import (
    InvalidCredentials,
    InvalidTenant,
    SlowChecksBusy,
    TenantConflict,
    TenantNotFound,
    TooManyFailedAttempts,
)
from tenant_service.store import SqlTenantStore
from tenant_service.tenants import (
    Tenant,
    TenantDirectory,
    TenantPolicy,
    check_tenant,
    tenant_from_seed,
)
from tests.conftest import free_port, unique

#: Cheap hashing and a low failure limit, for tests.
CHEAP = TenantPolicy(secret_hash_cost=10, validate_failures_per_minute=3)


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


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
    # A generated secret (256 random bits) is hashed fast: HMAC-SHA256 with a random salt.
    assert stored is not None and secret not in stored[1]
    assert stored[1].startswith("hmac-sha256$")


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
        ({"metadata": {"ratio": float("nan")}}, "tenant.metadata"),
        ({"metadata": {"when": datetime(2024, 1, 1, tzinfo=UTC)}}, "tenant.metadata"),
        ({"metadata": nested(40)}, "tenant.metadata"),
        ({"metadata": ["not", "an", "object"]}, "tenant.metadata"),
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


def test_a_metadata_of_the_deepest_nesting_allowed_is_accepted() -> None:
    check_tenant(new(metadata=nested(32)), fields=["metadata"])


async def test_one_rate_limit_changes_without_the_other(directory: TenantDirectory) -> None:
    tenant, _ = await directory.create(new(rate_limit_rps=5, rate_limit_burst=10))
    # The unmasked value is neither checked nor stored.
    changes = new(rate_limit_rps=-1, rate_limit_burst=20)
    updated = await directory.update(tenant.id, changes, ["rate_limits.burst"])
    assert (updated.rate_limit_rps, updated.rate_limit_burst) == (5, 20)
    updated = await directory.update(tenant.id, new(rate_limit_rps=7), ["rate_limits"])
    assert (updated.rate_limit_rps, updated.rate_limit_burst) == (7, 0)


# --- how secrets are hashed ----------------------------------------------------------------


async def stored_hash(engine: AsyncEngine, client_id: str) -> str:
    found = await SqlTenantStore(engine).get_with_secret_hash(client_id)
    assert found is not None
    return found[1]


def legacy_scrypt_hash(secret: str, cost: int = 10) -> str:
    """A hash as Keel stored every secret before the fast form existed."""
    salt = os.urandom(16)
    key = hashlib.scrypt(secret.encode(), salt=salt, n=1 << cost, r=8, p=1, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${cost}$8$1${b64(salt).decode()}${b64(key).decode()}"


async def test_a_chosen_secret_is_hashed_slowly_and_stays_so(
    directory: TenantDirectory, engine: AsyncEngine
) -> None:
    client_id = unique("chosen")
    await directory.create(new(client_id=client_id), client_secret="secret123")
    assert (await stored_hash(engine, client_id)).startswith("scrypt$10$")
    await directory.validate(Credentials(client_id, "secret123"))
    assert (await stored_hash(engine, client_id)).startswith("scrypt$10$")


async def test_a_chosen_secret_of_the_generated_form_is_hashed_fast(
    directory: TenantDirectory, engine: AsyncEngine
) -> None:
    client_id, secret = unique("copied"), creds.new_client_secret()
    await directory.create(new(client_id=client_id), client_secret=secret)
    assert (await stored_hash(engine, client_id)).startswith("hmac-sha256$")
    assert (await directory.validate(Credentials(client_id, secret))).name.startswith("dir-")


async def test_rotation_writes_the_fast_form(
    directory: TenantDirectory, engine: AsyncEngine
) -> None:
    client_id = unique("rotated")
    tenant, _ = await directory.create(new(client_id=client_id), client_secret="secret123")
    _, fresh = await directory.rotate_secret(tenant.id)
    assert (await stored_hash(engine, client_id)).startswith("hmac-sha256$")
    assert (await directory.validate(Credentials(client_id, fresh))).tenant_id == tenant.id


async def test_a_slow_hash_of_a_generated_secret_is_upgraded_by_its_next_success(
    directory: TenantDirectory, engine: AsyncEngine
) -> None:
    tenant, secret = await directory.create(new())
    store = SqlTenantStore(engine)
    legacy = legacy_scrypt_hash(secret)
    assert await store.replace_secret_hash(
        tenant.id, await stored_hash(engine, tenant.client_id), legacy
    )
    with pytest.raises(InvalidCredentials):
        await directory.validate(Credentials(tenant.client_id, creds.new_client_secret()))
    assert await stored_hash(engine, tenant.client_id) == legacy  # a failure changes nothing

    assert (await directory.validate(Credentials(tenant.client_id, secret))).tenant_id == tenant.id
    upgraded = await stored_hash(engine, tenant.client_id)
    assert upgraded.startswith("hmac-sha256$") and creds.verify_secret(secret, upgraded)
    assert (await directory.validate(Credentials(tenant.client_id, secret))).tenant_id == tenant.id
    assert await directory.get(tenant.id) == tenant  # no time changed: the secret did not


@dataclass
class HeldScrypt:
    """Every scrypt computation waits (in its thread) until ``release`` is set."""

    started: list[float] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    async def wait_until_running(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.started) < count:
            assert time.monotonic() < deadline, f"{len(self.started)} of {count} slow checks"
            await asyncio.sleep(0.01)


@pytest.fixture
def held_scrypt(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldScrypt]:
    held = HeldScrypt()
    real_scrypt = creds._scrypt

    def scrypt(secret: str, salt: bytes, cost: int, r: int, p: int) -> bytes:
        held.started.append(time.monotonic())
        held.release.wait(timeout=300)
        return real_scrypt(secret, salt, cost, r, p)

    monkeypatch.setattr(creds, "_scrypt", scrypt)
    try:
        yield held
    finally:
        held.release.set()


async def test_unknown_ids_and_generated_secrets_never_wait_for_slow_checks(
    directory: TenantDirectory, held_scrypt: HeldScrypt
) -> None:
    """While slow (scrypt) checks hold every slot of their budget, a flood of 2,000 made-up
    client ids and a tenant with a generated secret are all answered: none of them needs a
    slow check, so none waits for one or is refused for want of a slot."""
    tenant, secret = await directory.create(new())
    held_scrypt.release.set()  # creating tenants with chosen secrets hashes them
    chosen = [unique("chosen") for _ in range(tenants_module.MAX_CONCURRENT_SLOW_CHECKS)]
    for client_id in chosen:
        await directory.create(new(client_id=client_id), client_secret="secret123")
    held_scrypt.release.clear()
    held_scrypt.started.clear()
    slow = [asyncio.ensure_future(directory.validate(Credentials(c, "secret123"))) for c in chosen]
    await held_scrypt.wait_until_running(len(chosen))  # every slow slot is taken
    flood = [
        directory.validate(Credentials(f"kc_{uuid.uuid4().hex[:20]}", "ks_a-guess"))
        for _ in range(2000)
    ]
    *refused, valid = await asyncio.wait_for(
        asyncio.gather(
            *flood,
            directory.validate(Credentials(tenant.client_id, secret)),
            return_exceptions=True,
        ),
        timeout=120,
    )
    assert not any(check.done() for check in slow)  # all answered while they were held
    held_scrypt.release.set()
    assert {type(r) for r in refused} == {InvalidCredentials}
    assert not isinstance(valid, BaseException) and valid.tenant_id == tenant.id
    assert len(await asyncio.wait_for(asyncio.gather(*slow), timeout=60)) == len(chosen)


async def test_failed_attempts_stay_limited_while_redis_is_down(
    engine: AsyncEngine, bus: InProcessEventBus
) -> None:
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    directory = TenantDirectory(
        SqlTenantStore(engine),
        bus=bus,
        rate_limiter=RedisRateLimiter(down),
        policy=CHEAP,
    )
    try:
        tenant, secret = await directory.create(new())
        for _ in range(3):
            with pytest.raises(InvalidCredentials):
                await directory.validate(Credentials(tenant.client_id, "guess"))
        with pytest.raises(TooManyFailedAttempts):
            await directory.validate(Credentials(tenant.client_id, secret))
    finally:
        await down.aclose()


async def test_slow_checks_beyond_their_budget_are_refused_and_fast_ones_still_pass(
    engine: AsyncEngine,
    bus: InProcessEventBus,
    monkeypatch: pytest.MonkeyPatch,
    held_scrypt: HeldScrypt,
) -> None:
    monkeypatch.setattr(tenants_module, "MAX_CONCURRENT_SLOW_CHECKS", 1)
    monkeypatch.setattr(tenants_module, "MAX_WAITING_SLOW_CHECKS", 1)
    directory = TenantDirectory(
        SqlTenantStore(engine), bus=bus, rate_limiter=InMemoryRateLimiter(), policy=CHEAP
    )
    held_scrypt.release.set()  # creating tenants with chosen secrets hashes them
    first, second = unique("chosen"), unique("chosen")
    for client_id in (first, second):
        await directory.create(new(client_id=client_id), client_secret="secret123")
    tenant, secret = await directory.create(new())
    held_scrypt.release.clear()
    held_scrypt.started.clear()
    running = asyncio.ensure_future(directory.validate(Credentials(first, "secret123")))
    await held_scrypt.wait_until_running(1)  # the one slot is taken
    with pytest.raises(SlowChecksBusy) as caught:
        await directory.validate(Credentials(second, "secret123"))
    assert caught.value.retry_after == 1.0
    assert (await directory.validate(Credentials(tenant.client_id, secret))).tenant_id == tenant.id
    held_scrypt.release.set()
    assert (await asyncio.wait_for(running, timeout=60)).name


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [([1, 2], "must be a JSON object"), ({"since": date(2024, 1, 1)}, "holds a date")],
)
async def test_seed_metadata_that_is_not_a_json_object_is_refused(
    directory: TenantDirectory, metadata: object, problem: str
) -> None:
    tenant, secret = tenant_from_seed({"clientId": unique("seeded"), "metadata": metadata})
    before = await directory.count()
    with pytest.raises(InvalidTenant) as caught:
        await directory.create(tenant, client_secret=secret)
    assert [(v.field, problem in v.description) for v in caught.value.violations] == [
        ("tenant.metadata", True)
    ]
    assert await directory.count() == before
