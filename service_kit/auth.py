"""Tenant authentication for every service: credentials, scopes and the 5-minute cache.

A backend calls Keel with metadata ``x-client-id`` + ``x-client-secret`` (or
``authorization: Bearer <client_id>:<client_secret>``). The tenant service
checks the secret against a slow hash; everyone else asks it once and then
answers from :class:`Authenticator`'s cache, keyed by a keyed hash of the
credentials (never the plain secret), so an authenticated RPC costs a
dictionary lookup. The cache forgets a tenant as soon as the tenant service
announces a change on the bus (topic :data:`TENANT_CHANGED_TOPIC`).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NewType, Protocol

from service_kit.bus import EventBus, Subscription
from service_kit.errors import PermissionDenied, Unauthenticated

TenantId = NewType("TenantId", str)

#: Published (payload: the tenant id, UTF-8) whenever a tenant changes or is deleted.
TENANT_CHANGED_TOPIC = "tenants.changed"


@dataclass(frozen=True, slots=True)
class Credentials:
    """A tenant's client id and secret as presented by a caller."""

    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class TenantContext:
    """Who is calling and what they may do: the result of validating credentials."""

    tenant_id: TenantId
    name: str
    permissions: frozenset[str]
    rate_limit_rps: int = 0
    rate_limit_burst: int = 0
    allowed_origins: tuple[str, ...] = ()
    require_origin: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: When the tenant's client secret last changed (None when not known, e.g. from a
    #: credentials check); what a browser holds from before then is revoked.
    secret_rotated_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        """True when a granted scope covers ``scope`` (see :func:`scope_allows`)."""
        return scope_allows(self.permissions, scope)


def scope_allows(granted: Iterable[str], required: str) -> bool:
    """Whether the ``granted`` scopes cover ``required``.

    ``area:action`` is covered by itself, by ``area:*`` and by ``*``; so
    ``chat:*`` may read and write, ``chat:read`` may only read.
    """
    area = required.partition(":")[0]
    wildcard = f"{area}:*"
    return any(g == required or g == wildcard or g == "*" for g in granted)


def require_scope(tenant: TenantContext, scope: str) -> None:
    """Raise :class:`PermissionDenied` unless ``tenant`` holds ``scope``."""
    if not tenant.allows(scope):
        raise PermissionDenied(
            f"tenant {tenant.name!r} lacks the permission scope {scope!r}"
            f" (it has: {', '.join(sorted(tenant.permissions)) or 'none'})"
        )


_HOW_TO_AUTHENTICATE = (
    "send metadata x-client-id and x-client-secret,"
    " or authorization: Bearer <client_id>:<client_secret>"
)


MAX_CLIENT_ID_LENGTH = 128
MAX_CLIENT_SECRET_LENGTH = 256


def credentials_from_metadata(metadata: Mapping[str, str]) -> Credentials:
    """Read the caller's credentials from gRPC metadata (keys in lower case).

    Raises :class:`Unauthenticated` with a message saying what to send.
    """
    credentials = _read_credentials(metadata)
    if len(credentials.client_id) > MAX_CLIENT_ID_LENGTH:
        raise Unauthenticated(f"the client id is longer than {MAX_CLIENT_ID_LENGTH} characters")
    if len(credentials.client_secret) > MAX_CLIENT_SECRET_LENGTH:
        raise Unauthenticated(
            f"the client secret is longer than {MAX_CLIENT_SECRET_LENGTH} characters"
        )
    return credentials


def _read_credentials(metadata: Mapping[str, str]) -> Credentials:
    client_id = metadata.get("x-client-id", "").strip()
    client_secret = metadata.get("x-client-secret", "").strip()
    if client_id or client_secret:
        if not (client_id and client_secret):
            missing = "x-client-secret" if client_id else "x-client-id"
            raise Unauthenticated(f"missing {missing}: {_HOW_TO_AUTHENTICATE}")
        return Credentials(client_id, client_secret)
    authorization = metadata.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value:
        client_id, sep, client_secret = value.strip().partition(":")
        if sep and client_id and client_secret:
            return Credentials(client_id, client_secret)
        raise Unauthenticated(f"malformed authorization header: {_HOW_TO_AUTHENTICATE}")
    raise Unauthenticated(f"missing credentials: {_HOW_TO_AUTHENTICATE}")


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, if any."""
    scheme, _, value = metadata.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


class CredentialValidator(Protocol):
    """Checks credentials the slow way (a hash comparison, or a call to the tenant service)."""

    async def validate(self, credentials: Credentials) -> TenantContext:
        """The tenant the credentials belong to.

        Raises ``Unauthenticated`` for wrong credentials, ``ResourceExhausted``
        after too many failures, ``Unavailable`` when it cannot decide.
        """
        ...


class TenantLookup(Protocol):
    """Finds a tenant by id (for trusted callers that act for a tenant)."""

    async def lookup(self, tenant_id: str) -> TenantContext:
        """The tenant; raises ``NotFound`` when there is none."""
        ...


class Authenticator:
    """Validates credentials once, then answers from a cache for ``ttl`` seconds.

    Concurrent first calls with the same credentials share one validation.
    Failures are not cached (the tenant service rate-limits them).
    """

    def __init__(
        self,
        validator: CredentialValidator,
        *,
        lookup: TenantLookup | None = None,
        ttl: float = 300.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._validator = validator
        self._lookup = lookup
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, tuple[float, TenantContext]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[TenantContext]] = {}
        self._subscription: Subscription | None = None
        # Bumped by every forget_tenant: a validation that was under way when a
        # tenant changed may have seen the old state, so its result is not cached.
        self._generation = 0

    def _cache_key(self, credentials: Credentials) -> bytes:
        message = f"{len(credentials.client_id)}:{credentials.client_id}{credentials.client_secret}"
        return hmac.new(self._key, message.encode(), hashlib.sha256).digest()

    async def authenticate(self, credentials: Credentials) -> TenantContext:
        """The caller's tenant; see :meth:`CredentialValidator.validate` for errors."""
        return await self._cached(
            self._cache_key(credentials), lambda: self._validator.validate(credentials)
        )

    async def tenant_by_id(self, tenant_id: str) -> TenantContext:
        """The tenant with ``tenant_id``, for trusted callers acting for it (the bridge).

        Raises ``NotFound`` for an unknown tenant, ``Unavailable`` when it cannot tell.
        """
        if self._lookup is None:
            raise Unauthenticated("acting for a tenant is not possible in this process")
        lookup = self._lookup
        return await self._cached(b"id:" + tenant_id.encode(), lambda: lookup.lookup(tenant_id))

    async def _cached(
        self, key: bytes, load: Callable[[], Awaitable[TenantContext]]
    ) -> TenantContext:
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        pending = self._pending.get(key)
        if pending is None:
            # The load runs in a task of its own: a caller that gives up (its deadline
            # passed) cancels only its wait, never the others'.
            pending = asyncio.ensure_future(load())
            self._pending[key] = pending
            generation = self._generation

            def settle(task: asyncio.Future[TenantContext]) -> None:
                self._pending.pop(key, None)
                if task.cancelled() or task.exception() is not None:
                    return
                if generation == self._generation:
                    self._remember(key, task.result())

            pending.add_done_callback(settle)
        return await asyncio.shield(pending)

    def _remember(self, key: bytes, tenant: TenantContext) -> None:
        if self._ttl <= 0:
            return
        self._cache[key] = (self._clock() + self._ttl, tenant)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop every cached entry of ``tenant_id`` (its credentials or settings changed)."""
        self._generation += 1
        stale = [k for k, (_, t) in self._cache.items() if t.tenant_id == tenant_id]
        for key in stale:
            del self._cache[key]

    async def follow_changes(self, bus: EventBus) -> None:
        """Forget tenants as the tenant service announces changes on ``bus``."""
        self._subscription = await bus.subscribe(
            TENANT_CHANGED_TOPIC, lambda payload: self.forget_tenant(payload.decode())
        )
        # Announcements may have been missed while the bus was down: forget everything.
        bus.on_reconnect(self.forget_all)

    def forget_all(self) -> None:
        """Drop every cached entry."""
        self._generation += 1
        self._cache.clear()

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()


current_tenant_var: contextvars.ContextVar[TenantContext | None] = contextvars.ContextVar(
    "keel_current_tenant", default=None
)


def current_tenant() -> TenantContext:
    """The tenant of the RPC being served (set by the server's interceptor)."""
    tenant = current_tenant_var.get()
    if tenant is None:
        raise Unauthenticated("this call needs tenant credentials")
    return tenant
