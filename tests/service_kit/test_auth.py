from __future__ import annotations

import asyncio

import pytest

from service_kit.auth import (
    TENANT_CHANGED_TOPIC,
    Authenticator,
    Credentials,
    TenantContext,
    TenantId,
    credentials_from_metadata,
    scope_allows,
)
from service_kit.bus import InProcessEventBus
from service_kit.errors import Unauthenticated


def test_credentials_from_client_headers() -> None:
    creds = credentials_from_metadata({"x-client-id": "app", "x-client-secret": "s3cret"})
    assert creds == Credentials("app", "s3cret")


def test_credentials_from_bearer() -> None:
    creds = credentials_from_metadata({"authorization": "Bearer app:s3:cret"})
    assert creds == Credentials("app", "s3:cret")


@pytest.mark.parametrize(
    ("metadata", "hint"),
    [
        ({}, "missing credentials"),
        ({"x-client-id": "app"}, "missing x-client-secret"),
        ({"x-client-secret": "x"}, "missing x-client-id"),
        ({"authorization": "Bearer onlyonepart"}, "malformed authorization"),
        ({"x-client-id": "a" * 129, "x-client-secret": "s"}, "longer than 128"),
        ({"x-client-id": "a", "x-client-secret": "s" * 257}, "longer than 256"),
    ],
)
def test_missing_or_malformed_credentials_say_what_to_send(
    metadata: dict[str, str], hint: str
) -> None:
    with pytest.raises(Unauthenticated) as caught:
        credentials_from_metadata(metadata)
    assert hint in caught.value.message


def test_secret_is_not_in_repr() -> None:
    assert "s3cret" not in repr(Credentials("app", "s3cret"))


@pytest.mark.parametrize(
    ("granted", "required", "allowed"),
    [
        (["chat:*"], "chat:read", True),
        (["chat:*"], "chat:write", True),
        (["chat:read"], "chat:read", True),
        (["chat:read"], "chat:write", False),
        (["presence:*"], "chat:read", False),
        (["*"], "upload:*", True),
        (["send:basic"], "send:*", False),
        ([], "chat:read", False),
    ],
)
def test_scope_matching(granted: list[str], required: str, allowed: bool) -> None:
    assert scope_allows(granted, required) is allowed


class CountingValidator:
    def __init__(self) -> None:
        self.calls = 0
        self.secret = "right"

    async def validate(self, credentials: Credentials) -> TenantContext:
        self.calls += 1
        await asyncio.sleep(0.01)
        if credentials.client_secret != self.secret:
            raise Unauthenticated("invalid client id or client secret")
        return TenantContext(TenantId("t1"), "one", frozenset({"chat:*"}))


async def test_cache_validates_once_then_answers_from_memory() -> None:
    validator = CountingValidator()
    auth = Authenticator(validator, ttl=300)
    for _ in range(5):
        tenant = await auth.authenticate(Credentials("app", "right"))
    assert tenant.tenant_id == "t1"
    assert validator.calls == 1


async def test_concurrent_first_calls_share_one_validation() -> None:
    validator = CountingValidator()
    auth = Authenticator(validator, ttl=300)
    results = await asyncio.gather(
        *(auth.authenticate(Credentials("app", "right")) for _ in range(20))
    )
    assert {r.tenant_id for r in results} == {"t1"}
    assert validator.calls == 1


async def test_failures_are_not_cached() -> None:
    validator = CountingValidator()
    auth = Authenticator(validator, ttl=300)
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(Credentials("app", "wrong"))
    assert validator.calls == 3


async def test_cache_entries_expire() -> None:
    now = [0.0]
    validator = CountingValidator()
    auth = Authenticator(validator, ttl=300, clock=lambda: now[0])
    await auth.authenticate(Credentials("app", "right"))
    now[0] = 301.0
    await auth.authenticate(Credentials("app", "right"))
    assert validator.calls == 2


async def test_a_tenant_change_on_the_bus_empties_its_cache_entries() -> None:
    bus = InProcessEventBus()
    validator = CountingValidator()
    auth = Authenticator(validator, ttl=300)
    await auth.follow_changes(bus)
    await auth.authenticate(Credentials("app", "right"))
    validator.secret = "rotated"
    await bus.publish(TENANT_CHANGED_TOPIC, b"t1")
    with pytest.raises(Unauthenticated):
        await auth.authenticate(Credentials("app", "right"))
    await auth.close()


def test_cache_key_does_not_hold_the_secret() -> None:
    auth = Authenticator(CountingValidator())
    key = auth._cache_key(Credentials("app", "right"))
    assert b"right" not in key
    assert key != Authenticator(CountingValidator())._cache_key(Credentials("app", "right"))


async def test_a_change_during_validation_keeps_the_stale_answer_out_of_the_cache() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    class SlowValidator(CountingValidator):
        async def validate(self, credentials: Credentials) -> TenantContext:
            self.calls += 1
            started.set()
            await release.wait()
            return TenantContext(TenantId("t1"), "one", frozenset({"chat:*"}))

    validator = SlowValidator()
    auth = Authenticator(validator, ttl=300)
    first = asyncio.create_task(auth.authenticate(Credentials("app", "old")))
    await started.wait()
    auth.forget_tenant("t1")  # the tenant changed while its old state was being read
    release.set()
    await first
    await auth.authenticate(Credentials("app", "old"))
    assert validator.calls == 2
