"""Tenants: the rules about them, and the operations the service offers.

This module imports neither grpc nor SQLAlchemy. :class:`TenantDirectory`
is the service layer: the servicer, the ``keel tenants`` command and (in one
process) the other services' authentication all call it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from service_kit.auth import (
    TENANT_CHANGED_TOPIC,
    Credentials,
    TenantContext,
    TenantId,
)
from service_kit.bounds import MAX_JSON_DEPTH
from service_kit.bus import EventBus
from service_kit.ratelimit import RateLimiter
from service_kit.validation import Violations, new_id
from tenant_service import credentials as creds
from tenant_service.errors import (
    DeletionNotFound,
    InvalidCredentials,
    InvalidTenant,
    SlowChecksBusy,
    TenantNotFound,
    TooManyFailedAttempts,
)

if TYPE_CHECKING:
    from tenant_service.store import TenantStore

log = logging.getLogger(__name__)

MAX_NAME = 200
MAX_CLIENT_ID = 128
MIN_SECRET, MAX_SECRET = 8, 256
MAX_PERMISSIONS = 64
MAX_ORIGINS = 100
MAX_METADATA_BYTES = 16 * 1024
MAX_RATE = 1_000_000
#: Nesting depth of metadata (objects and lists within each other): the kit's JSON rule.
MAX_METADATA_DEPTH = MAX_JSON_DEPTH
#: Slow (scrypt) checks run at once (each takes ~32 MiB and tens of ms of CPU). Only
#: tenants with a chosen secret (or a hash not yet upgraded) need one; fast checks and
#: unknown client ids never wait for these slots.
MAX_CONCURRENT_SLOW_CHECKS = 4
#: Slow checks allowed to wait for a slot before new ones are refused (RESOURCE_EXHAUSTED).
MAX_WAITING_SLOW_CHECKS = 256

_SCOPE = re.compile(r"^(\*|[a-z][a-z0-9_-]{0,31}:(\*|[a-z][a-z0-9_-]{0,31}))$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,127}$")
_ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9a-fA-F:]+\](:[0-9]{1,5})?$"
)

#: The paths an update mask may name, and the ``Tenant`` attributes each one changes.
UPDATE_PATHS: Mapping[str, tuple[str, ...]] = {
    "name": ("name",),
    "permissions": ("permissions",),
    "rate_limits": ("rate_limit_rps", "rate_limit_burst"),
    "rate_limits.requests_per_second": ("rate_limit_rps",),
    "rate_limits.burst": ("rate_limit_burst",),
    "allowed_origins": ("allowed_origins",),
    "require_origin": ("require_origin",),
    "metadata": ("metadata",),
}
#: Fields an update may change, as named in the API's update mask.
UPDATABLE_FIELDS = frozenset(UPDATE_PATHS)

#: The scopes of the seed's services; the demo tenant gets all of them.
ALL_SCOPES = ("chat:*", "presence:*", "send:*", "upload:*")


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant as stored (without its secret hash)."""

    id: TenantId
    name: str
    client_id: str
    permissions: tuple[str, ...] = ()
    rate_limit_rps: int = 0
    rate_limit_burst: int = 0
    allowed_origins: tuple[str, ...] = ()
    require_origin: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)
    create_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    update_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    secret_rotate_time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def context(self) -> TenantContext:
        """What other services need to know about this tenant to serve its calls."""
        return TenantContext(
            tenant_id=self.id,
            name=self.name,
            permissions=frozenset(self.permissions),
            rate_limit_rps=self.rate_limit_rps,
            rate_limit_burst=self.rate_limit_burst,
            allowed_origins=self.allowed_origins,
            require_origin=self.require_origin,
            metadata=self.metadata,
            secret_rotated_at=self.secret_rotate_time,
        )


class DeletionState(Enum):
    """How far the deletion of a tenant has come."""

    #: The tenant is gone (credentials, lookups, listings); its data is being purged.
    DELETING = "deleting"
    #: Every row of the tenant's data is gone.
    PURGED = "purged"


@dataclass(frozen=True, slots=True)
class TenantDeletion:
    """The record of a tenant's deletion, kept after its data is purged."""

    tenant_id: TenantId
    name: str
    state: DeletionState
    #: Rows purged so far, by table name (tables with none purged yet are absent).
    purged_rows: Mapping[str, int]
    start_time: datetime
    update_time: datetime
    finish_time: datetime | None = None


def check_tenant(tenant: Tenant, *, fields: Collection[str] | None = None) -> None:
    """Raise :class:`InvalidTenant` naming every malformed field (all, or only ``fields``)."""
    v = Violations()
    wanted = set(fields) if fields is not None else UPDATABLE_FIELDS | {"client_id"}
    if "name" in wanted:
        v.text("tenant.name", tenant.name, max_length=MAX_NAME)
        if tenant.name.strip():
            v.check(tenant.name == tenant.name.strip(), "tenant.name", "has surrounding spaces")
    if "client_id" in wanted:
        v.check(
            bool(_CLIENT_ID.fullmatch(tenant.client_id)),
            "tenant.client_id",
            "must be 3 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    if "permissions" in wanted:
        v.check(
            len(tenant.permissions) <= MAX_PERMISSIONS,
            "tenant.permissions",
            f"at most {MAX_PERMISSIONS} scopes",
        )
        for i, scope in enumerate(tenant.permissions):
            v.check(
                bool(_SCOPE.fullmatch(scope)),
                f"tenant.permissions[{i}]",
                f"{scope[:40]!r} is not a scope like 'chat:*', 'chat:read' or '*'",
            )
    for name, value in (
        ("requests_per_second", tenant.rate_limit_rps),
        ("burst", tenant.rate_limit_burst),
    ):
        if "rate_limits" in wanted or f"rate_limits.{name}" in wanted:
            v.check(
                0 <= value <= MAX_RATE,
                f"tenant.rate_limits.{name}",
                f"must be between 0 and {MAX_RATE}",
            )
    if "allowed_origins" in wanted:
        v.check(
            len(tenant.allowed_origins) <= MAX_ORIGINS,
            "tenant.allowed_origins",
            f"at most {MAX_ORIGINS} origins",
        )
        for i, origin in enumerate(tenant.allowed_origins):
            v.check(
                bool(_ORIGIN.match(origin)),
                f"tenant.allowed_origins[{i}]",
                f"{origin[:60]!r} is not an origin like 'https://app.example.com'",
            )
    if "metadata" in wanted:
        problem = (
            _not_json(tenant.metadata, depth=1)
            if isinstance(tenant.metadata, Mapping)
            else "must be a JSON object"
        )
        if problem is None:
            size = len(json.dumps(tenant.metadata))
            if size > MAX_METADATA_BYTES:
                problem = f"is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
        v.check(problem is None, "tenant.metadata", problem or "")
    v.raise_if_any(InvalidTenant)


def _not_json(value: object, *, depth: int) -> str | None:
    """What keeps ``value`` from being stored as metadata (a JSON object within the
    depth limit, with finite numbers), or None when nothing does."""
    if depth > MAX_METADATA_DEPTH:
        return f"is nested deeper than {MAX_METADATA_DEPTH} levels"
    if isinstance(value, Mapping):
        items: Collection[object] = value.values()
        if not all(isinstance(key, str) for key in value):
            return "has a key that is not a string"
    elif isinstance(value, list | tuple):
        items = value
    elif isinstance(value, float):
        return None if math.isfinite(value) else "holds NaN or Infinity, which JSON cannot"
    elif value is None or isinstance(value, str | int):
        return None
    else:
        return f"holds a {type(value).__name__}, not a JSON value"
    return next(
        (p for p in (_not_json(item, depth=depth + 1) for item in items) if p is not None), None
    )


def check_secret(secret: str) -> None:
    """Raise :class:`InvalidTenant` unless ``secret`` is acceptable as a chosen client secret."""
    if not MIN_SECRET <= len(secret) <= MAX_SECRET or not secret.isprintable() or " " in secret:
        raise InvalidTenant(
            f"client_secret: must be {MIN_SECRET} to {MAX_SECRET} printable characters"
            " without spaces",
        )


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """Operator settings of the tenant service."""

    secret_hash_cost: int = 15
    validate_failures_per_minute: int = 10


class TenantDirectory:
    """Create, read, change and delete tenants; validate their credentials.

    Every change is announced on the bus (:data:`TENANT_CHANGED_TOPIC`) so
    caches of validated credentials forget the tenant at once.
    """

    def __init__(
        self,
        store: TenantStore,
        *,
        bus: EventBus,
        rate_limiter: RateLimiter,
        policy: TenantPolicy = TenantPolicy(),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._bus = bus
        self._rate_limiter = rate_limiter
        self._policy = policy
        self._clock = clock
        self._dummy_hash = creds.dummy_hash()
        self._checking: dict[str, tuple[asyncio.Lock, int]] = {}
        # The slow checks' own budget: fast checks never wait for it.
        self._slow_slots = asyncio.Semaphore(MAX_CONCURRENT_SLOW_CHECKS)
        self._slow_waiting = 0

    async def _hash(self, secret: str) -> str:
        """The storable hash of ``secret`` (fast or slow by its form; see credentials)."""
        hash_it = functools.partial(creds.hash_secret, secret, cost=self._policy.secret_hash_cost)
        return hash_it() if creds.has_generated_form(secret) else await asyncio.to_thread(hash_it)

    async def create(
        self, tenant: Tenant, *, client_secret: str = "", request_id: str = ""
    ) -> tuple[Tenant, str]:
        """Store a new tenant; returns it and its client secret (chosen or generated).

        Raises ``InvalidTenant`` for malformed fields and ``TenantConflict``
        when the name, client id or request id is taken.
        """
        now = self._clock()
        tenant = replace(
            tenant,
            id=TenantId(new_id()),
            client_id=tenant.client_id or creds.new_client_id(),
            create_time=now,
            update_time=now,
            secret_rotate_time=now,
        )
        check_tenant(tenant)
        if client_secret:
            check_secret(client_secret)
        secret = client_secret or creds.new_client_secret()
        await self._store.insert(tenant, await self._hash(secret), request_id or None)
        return tenant, secret

    async def get(self, tenant_id: str) -> Tenant:
        """The tenant with ``tenant_id``; raises ``TenantNotFound``."""
        tenant = await self._store.get(tenant_id)
        if tenant is None:
            raise TenantNotFound(tenant_id)
        return tenant

    async def list(self, *, limit: int, after: tuple[datetime, str] | None) -> list[Tenant]:
        """Up to ``limit`` tenants in creation order, after the (time, id) position."""
        return await self._store.list(limit=limit, after=after)

    async def update(self, tenant_id: str, changes: Tenant, fields: Collection[str]) -> Tenant:
        """Copy ``fields`` of ``changes`` onto the stored tenant; returns the result.

        ``fields`` are update-mask paths (:data:`UPDATE_PATHS`): ``rate_limits`` sets both
        limits, ``rate_limits.requests_per_second`` or ``rate_limits.burst`` only one.
        """
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown or not fields:
            raise InvalidTenant(
                f"update_mask: name one or more of {', '.join(sorted(UPDATABLE_FIELDS))}"
                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
            )
        check_tenant(changes, fields=fields)
        values: dict[str, Any] = {
            attribute: getattr(changes, attribute)
            for path in fields
            for attribute in UPDATE_PATHS[path]
        }
        updated = await self._store.update(tenant_id, values, self._clock())
        if updated is None:
            raise TenantNotFound(tenant_id)
        await self._announce(tenant_id)
        return updated

    async def rotate_secret(self, tenant_id: str) -> tuple[Tenant, str]:
        """Replace the client secret; the old one stops working at once."""
        secret = creds.new_client_secret()
        tenant = await self._store.set_secret(tenant_id, await self._hash(secret), self._clock())
        if tenant is None:
            raise TenantNotFound(tenant_id)
        await self._announce(tenant_id)
        return tenant, secret

    async def delete(self, tenant_id: str) -> TenantDeletion:
        """Delete the tenant; returns the record of its deletion (state ``DELETING``).

        At once, in one transaction, the tenant's row goes (its credentials, lookups and
        listings answer as for an unknown tenant; its name and client id are free for a
        new tenant), the deletion is recorded and the purge of its data is enqueued; then
        the change is announced so caches forget it and bridges close its connections.
        The purge runs on the job queue (:mod:`service_kit.purge`). Raises
        ``TenantNotFound`` when there is no such tenant (or it is already deleted).
        """
        if not await self._store.delete(tenant_id, delete_time=self._clock()):
            raise TenantNotFound(tenant_id)
        await self._announce(tenant_id)
        return await self.deletion(tenant_id)

    async def deletion(self, tenant_id: str) -> TenantDeletion:
        """The record of the deletion of ``tenant_id``: its state, rows purged so far by
        table, start and finish times. Raises ``DeletionNotFound`` when it was never
        deleted."""
        found = await self._store.get_deletion(tenant_id)
        if found is None:
            raise DeletionNotFound(tenant_id)
        return found

    async def validate(self, credentials: Credentials) -> TenantContext:
        """The tenant owning ``credentials``.

        Raises ``InvalidCredentials``; after too many failures for one client
        id (a token bucket per client id), ``TooManyFailedAttempts`` without
        checking the secret at all. Checks of one client id run one at a time,
        so concurrent guesses cannot overtake the count.

        A client id that does not exist is checked against a dummy fast hash, so
        its refusal is as quick as, and identical to, a wrong secret for a tenant
        with a generated secret: neither timing nor errors say which ids exist,
        and a flood of made-up ids costs one lookup and microseconds each. Only
        stored scrypt hashes (chosen secrets) need a slow check; those have their
        own budget (``MAX_CONCURRENT_SLOW_CHECKS`` at once, and beyond
        ``MAX_WAITING_SLOW_CHECKS`` waiting the next is refused with
        RESOURCE_EXHAUSTED), which fast checks never wait for. A scrypt hash of a
        secret of the generated form is rewritten in the fast form once it matched.
        """
        client_id = credentials.client_id[:MAX_CLIENT_ID]
        lock, users = self._checking.get(client_id, (asyncio.Lock(), 0))
        self._checking[client_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._validate_one(client_id, credentials.client_secret)
        finally:
            lock, users = self._checking[client_id]
            if users <= 1:
                del self._checking[client_id]
            else:
                self._checking[client_id] = (lock, users - 1)

    async def _validate_one(self, client_id: str, secret: str) -> TenantContext:
        bucket = f"validate-failures:{client_id}"
        rate = self._policy.validate_failures_per_minute / 60.0
        burst = self._policy.validate_failures_per_minute
        wait = await self._rate_limiter.acquire(bucket, rate, burst, consume=False)
        if wait > 0:
            raise TooManyFailedAttempts(client_id, wait)
        found = await self._store.get_with_secret_hash(client_id)
        # An unknown id takes the fast path a generated secret takes: timing reveals no ids.
        stored = found[1] if found is not None else self._dummy_hash
        ok = await self._verify(secret, stored) and found is not None
        if not ok or found is None:
            await self._rate_limiter.acquire(bucket, rate, burst)
            raise InvalidCredentials()
        if creds.upgradable(secret, stored):
            await self._upgrade(found[0], stored, secret)
        return found[0].context()

    async def _verify(self, secret: str, stored: str) -> bool:
        if not creds.is_slow(stored):
            return creds.verify_secret(secret, stored)  # microseconds: no thread, no budget
        if self._slow_waiting >= MAX_WAITING_SLOW_CHECKS:
            raise SlowChecksBusy()
        self._slow_waiting += 1
        try:
            async with self._slow_slots:
                return await asyncio.to_thread(creds.verify_secret, secret, stored)
        finally:
            self._slow_waiting -= 1

    async def _upgrade(self, tenant: Tenant, stored: str, secret: str) -> None:
        """Replace the slow hash ``stored`` of a generated-form secret by its fast hash,
        unless the secret changed meanwhile. Best effort: the check already succeeded."""
        try:
            await self._store.replace_secret_hash(tenant.id, stored, await self._hash(secret))
        except Exception:
            log.warning("could not upgrade a secret hash", exc_info=True)

    async def lookup(self, tenant_id: str) -> TenantContext:
        """The tenant's context by id (the ``TenantLookup`` role); raises ``TenantNotFound``."""
        return (await self.get(tenant_id)).context()

    async def count(self) -> int:
        return await self._store.count()

    async def _announce(self, tenant_id: str) -> None:
        """Tell caches to forget the tenant. Best effort: the change is already committed,
        and caches expire on their own (KEEL_AUTH_CACHE_SECONDS)."""
        try:
            await self._bus.publish(TENANT_CHANGED_TOPIC, tenant_id.encode())
        except Exception:
            log.warning("could not announce a tenant change", exc_info=True)


def tenant_from_seed(entry: Mapping[str, Any]) -> tuple[Tenant, str]:
    """A tenant (and its chosen secret, or "") from one entry of a seed file.

    Accepts the seed's ``seedTenants()`` shape: ``clientId``/``client_id``,
    ``clientSecret``/``client_secret``, ``name`` (defaults to the client id),
    ``permissions`` as a list or as ``{service: [scopes]}`` (flattened),
    ``rateLimits``/``rate_limits`` (``requests_per_second``, ``burst``),
    ``allowedOrigins``/``allowed_origins``, ``metadata``.
    """

    def pick(*names: str, default: Any = None) -> Any:
        for name in names:
            if name in entry:
                return entry[name]
        return default

    permissions = pick("permissions", default=[])
    if isinstance(permissions, Mapping):
        flat: list[str] = []
        for scopes in permissions.values():
            flat.extend(s for s in scopes if s not in flat)
        permissions = flat
    limits = pick("rateLimits", "rate_limits", default={}) or {}
    client_id = str(pick("clientId", "client_id", default=""))
    tenant = Tenant(
        id=TenantId(""),
        name=str(pick("name", default=client_id)),
        client_id=client_id,
        permissions=tuple(str(p) for p in permissions),
        rate_limit_rps=int(limits.get("requests_per_second", limits.get("requestsPerSecond", 0))),
        rate_limit_burst=int(limits.get("burst", 0)),
        allowed_origins=tuple(pick("allowedOrigins", "allowed_origins", default=[])),
        require_origin=bool(pick("requireOrigin", "require_origin", default=False)),
        metadata=pick("metadata", default={}) or {},  # check_tenant says what is wrong
    )
    return tenant, str(pick("clientSecret", "client_secret", default=""))
