"""Where tenants are kept: the ``TenantStore`` role and its SQL implementation.

A deleted tenant's row goes at once; its ``tenant_deletions`` record (written by
:mod:`service_kit.purge`) stays, and tells how the purge of its data goes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit import purge
from service_kit.auth import TenantId
from service_kit.clock import utcnow
from service_kit.db import as_utc, keyset_page, write_transaction
from service_kit.schema import tenant_deletions, tenants
from tenant_service.errors import TenantConflict
from tenant_service.tenants import DeletionState, Tenant, TenantDeletion


class TenantStore(Protocol):
    """Keeps tenants and their secret hashes."""

    async def insert(self, tenant: Tenant, secret_hash: str, request_id: str | None) -> None:
        """Store a new tenant; raises ``TenantConflict`` on a taken name/client id/request id."""
        ...

    async def get(self, tenant_id: str) -> Tenant | None: ...

    async def get_with_secret_hash(self, client_id: str) -> tuple[Tenant, str] | None: ...

    async def list(self, *, limit: int, after: tuple[datetime, str] | None) -> list[Tenant]: ...

    async def update(
        self, tenant_id: str, values: dict[str, Any], update_time: datetime
    ) -> Tenant | None:
        """Set only the given fields (by ``Tenant`` attribute name); the tenant after the
        change, or None when it does not exist. Other fields keep concurrent changes."""
        ...

    async def set_secret(
        self, tenant_id: str, secret_hash: str, rotate_time: datetime
    ) -> Tenant | None: ...

    async def replace_secret_hash(self, tenant_id: str, old_hash: str, new_hash: str) -> bool:
        """Store ``new_hash`` (of the same secret) in place of ``old_hash``; no time changes.
        False, changing nothing, when the stored hash is no longer ``old_hash``."""
        ...

    async def delete(self, tenant_id: str, *, delete_time: datetime | None = None) -> bool:
        """Remove the tenant's row, record its deletion and enqueue the purge of its data,
        in one transaction; False (changing nothing) when there is no such tenant."""
        ...

    async def get_deletion(self, tenant_id: str) -> TenantDeletion | None:
        """The record of the tenant's deletion, or None when it was never deleted."""
        ...

    async def count(self) -> int: ...


class SqlTenantStore:
    """Tenants in the ``tenants`` table (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert(self, tenant: Tenant, secret_hash: str, request_id: str | None) -> None:
        row = _to_row(tenant) | {"secret_hash": secret_hash, "request_id": request_id}
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(tenants).values(row))
        except IntegrityError as exc:
            raise _conflict(str(exc.orig), tenant, request_id) from exc

    async def get(self, tenant_id: str) -> Tenant | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
        return _from_row(row._mapping) if row else None

    async def get_with_secret_hash(self, client_id: str) -> tuple[Tenant, str] | None:
        async with self._engine.connect() as conn:
            query = select(tenants).where(tenants.c.client_id == client_id)
            row = (await conn.execute(query)).first()
        return (_from_row(row._mapping), row.secret_hash) if row else None

    async def list(self, *, limit: int, after: tuple[datetime, str] | None) -> list[Tenant]:
        query = keyset_page(
            select(tenants), tenants.c.create_time, tenants.c.id, limit=limit, after=after
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_from_row(row._mapping) for row in rows]

    async def update(
        self, tenant_id: str, values: dict[str, Any], update_time: datetime
    ) -> Tenant | None:
        row = {_COLUMN_OF.get(k, k): _column_value(v) for k, v in values.items()}
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    update(tenants)
                    .where(tenants.c.id == tenant_id)
                    .values(**row, update_time=update_time)
                )
                if result.rowcount != 1:
                    return None
                stored = (
                    await conn.execute(select(tenants).where(tenants.c.id == tenant_id))
                ).one()
        except IntegrityError as exc:
            raise TenantConflict(f"a tenant named {values.get('name')!r} exists") from exc
        return _from_row(stored._mapping)

    async def set_secret(
        self, tenant_id: str, secret_hash: str, rotate_time: datetime
    ) -> Tenant | None:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(tenants)
                .where(tenants.c.id == tenant_id)
                .values(
                    secret_hash=secret_hash, secret_rotate_time=rotate_time, update_time=rotate_time
                )
            )
            if result.rowcount != 1:
                return None
            row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).one()
        return _from_row(row._mapping)

    async def replace_secret_hash(self, tenant_id: str, old_hash: str, new_hash: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(tenants)
                .where(tenants.c.id == tenant_id, tenants.c.secret_hash == old_hash)
                .values(secret_hash=new_hash)
            )
        return result.rowcount == 1

    async def delete(self, tenant_id: str, *, delete_time: datetime | None = None) -> bool:
        async with write_transaction(self._engine) as conn:
            removed = await conn.execute(
                delete(tenants).where(tenants.c.id == tenant_id).returning(tenants.c.name)
            )
            name = removed.scalar_one_or_none()
            if name is None:
                return False
            now = delete_time or utcnow()
            await purge.start_tenant_purge(conn, tenant_id=tenant_id, name=name, now=now)
        return True

    async def get_deletion(self, tenant_id: str) -> TenantDeletion | None:
        query = select(tenant_deletions).where(tenant_deletions.c.tenant_id == tenant_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return TenantDeletion(
            tenant_id=TenantId(row.tenant_id),
            name=row.name,
            state=_DELETION_STATES[row.state],
            purged_rows={table: int(count) for table, count in row.purged_rows.items()},
            start_time=as_utc(row.start_time),
            update_time=as_utc(row.update_time),
            finish_time=as_utc(row.finish_time) if row.finish_time is not None else None,
        )

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(tenants))).scalar_one())


# The states service_kit.purge writes, as the domain names them.
_DELETION_STATES = {purge.DELETING: DeletionState.DELETING, purge.PURGED: DeletionState.PURGED}

# Tenant attributes whose column has another key.
_COLUMN_OF = {"metadata": "metadata_"}


def _column_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _to_row(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "client_id": tenant.client_id,
        "permissions": list(tenant.permissions),
        "rate_limit_rps": tenant.rate_limit_rps,
        "rate_limit_burst": tenant.rate_limit_burst,
        "allowed_origins": list(tenant.allowed_origins),
        "require_origin": tenant.require_origin,
        "metadata_": dict(tenant.metadata),
        "create_time": tenant.create_time,
        "update_time": tenant.update_time,
        "secret_rotate_time": tenant.secret_rotate_time,
    }


def _from_row(row: Any) -> Tenant:
    return Tenant(
        id=TenantId(row["id"]),
        name=row["name"],
        client_id=row["client_id"],
        permissions=tuple(row["permissions"]),
        rate_limit_rps=row["rate_limit_rps"],
        rate_limit_burst=row["rate_limit_burst"],
        allowed_origins=tuple(row["allowed_origins"]),
        require_origin=row["require_origin"],
        metadata=row[tenants.c.metadata_],
        create_time=as_utc(row["create_time"]),
        update_time=as_utc(row["update_time"]),
        secret_rotate_time=as_utc(row["secret_rotate_time"]),
    )


def _conflict(message: str, tenant: Tenant, request_id: str | None) -> TenantConflict:
    if "request_id" in message:
        return TenantConflict(f"a tenant was already created with request_id {request_id!r}")
    if "client_id" in message:
        return TenantConflict(f"client id {tenant.client_id!r} is taken")
    return TenantConflict(f"a tenant named {tenant.name!r} exists")
