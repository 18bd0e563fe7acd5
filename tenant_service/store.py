"""Where tenants are kept: the ``TenantStore`` role and its SQL implementation."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from service_kit.auth import TenantId
from service_kit.db import as_utc, keyset_page
from service_kit.schema import tenants
from tenant_service.errors import TenantConflict
from tenant_service.tenants import Tenant


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

    async def delete(self, tenant_id: str) -> bool: ...

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

    async def delete(self, tenant_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(tenants).where(tenants.c.id == tenant_id))
        return result.rowcount == 1

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(tenants))).scalar_one())


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
