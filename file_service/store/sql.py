"""The file service's database in SQL (SQLAlchemy Core, SQLite and PostgreSQL alike).

Race safety rests on the database, not on one process:

- **Usage** is one ``file_usage`` row per tenant, changed in the transaction that changes
  the tenant's files, by ``UPDATE … WHERE bytes + n <= max AND files + 1 <= max_files``.
  On PostgreSQL concurrent updates of the row wait for each other and re-check the
  condition on the committed row; on SQLite writers take turns (``BEGIN IMMEDIATE``). So
  no interleaving of uploads passes a quota.
- **Upload offsets** advance by ``UPDATE files … WHERE upload_offset = :offset``; of two
  parts at the same offset one matches, the other updates nothing and is told the offset.
  On PostgreSQL that update and the part's insert are one statement (the update a
  ``WITH`` of the insert), run on its own without ``BEGIN``/``COMMIT`` — one round trip,
  atomic as every statement is — and so are the single-query reads of a file: a tus
  upload in many PATCHes pays for these on every request.
- **State changes** that release usage (delete, expiry, ready) lock the file's row first
  (``FOR UPDATE`` on PostgreSQL), so usage is released once and with the size it held.
"""

from __future__ import annotations

import builtins
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Integer, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from file_service.errors import (
    FileNotFound,
    FileNotReady,
    InvalidFile,
    OffsetMismatch,
    QuotaExceeded,
    UploadExpired,
)
from file_service.models import (
    MAX_PARTS_PER_UPLOAD,
    FileLimits,
    FileState,
    NewFile,
    StoredFile,
    Thumbnail,
    UploadPart,
    Usage,
)
from file_service.store.interface import After
from service_kit.db import (
    as_utc,
    claim_rows,
    insert_ignoring_conflicts,
    keyset_page,
    write_transaction,
)
from service_kit.schema import file_upload_parts, file_usage, files

Row = Mapping[Any, Any]

#: The states whose files count in usage and are listed.
_LIVE = (FileState.PENDING.value, FileState.READY.value)


class SqlFileStore:
    """The :class:`~file_service.store.FileStore` on an SQLAlchemy async engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        #: Where one statement runs alone: on PostgreSQL without ``BEGIN``/``COMMIT``
        #: (three round trips fewer on asyncpg); on SQLite, whose transactions are not round
        #: trips, as every other statement.
        self._single = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else None
        )

    async def create_pending(self, file: NewFile, limits: FileLimits) -> StoredFile:
        async with write_transaction(self._engine) as conn:
            await _reserve(conn, file.tenant_id, file.size, limits)
            await conn.execute(files.insert().values(_new_file_row(file)))
        return StoredFile(
            id=file.id,
            tenant_id=file.tenant_id,
            filename=file.filename,
            content_type=file.content_type,
            size=file.size,
            sha256="",
            user_id=file.user_id,
            metadata=file.metadata,
            state=FileState.PENDING,
            blob_key=file.blob_key,
            create_time=file.create_time,
            expire_time=file.expire_time,
        )

    async def get(self, tenant_id: str, file_id: str) -> StoredFile | None:
        async with (self._single or self._engine).connect() as conn:
            row = await _file_row(conn, tenant_id, file_id)
        return None if row is None else to_stored_file(row)

    async def declared_sha256(self, tenant_id: str, file_id: str) -> str:
        """Raises ``FileNotFound`` when the tenant has no such file."""
        query = select(files.c.declared_sha256).where(*_key(tenant_id, file_id))
        async with (self._single or self._engine).connect() as conn:
            found = (await conn.execute(query)).scalar_one_or_none()
        if found is None:
            raise FileNotFound(file_id)
        return str(found)

    async def list(
        self, tenant_id: str, *, user_id: str | None, after: After, limit: int
    ) -> builtins.list[StoredFile]:
        query = select(files).where(files.c.tenant_id == tenant_id, files.c.state.in_(_LIVE))
        if user_id is not None:
            query = query.where(files.c.user_id == user_id)
        query = keyset_page(
            query, files.c.create_time, files.c.id, limit=limit, after=after, newest_first=True
        )
        async with self._engine.connect() as conn:
            return [to_stored_file(r._mapping) for r in await conn.execute(query)]

    async def add_part(
        self,
        part: UploadPart,
        tenant_id: str,
        *,
        now: datetime,
        max_parts: int = MAX_PARTS_PER_UPLOAD,
    ) -> int:
        if part.size <= 0:
            raise InvalidFile("an upload part holds at least one byte")
        end = part.offset + part.size
        values = {
            "p_tenant_id": tenant_id,
            "p_file_id": part.file_id,
            "p_offset": part.offset,
            "p_size": part.size,
            "p_end": end,
            "p_blob_key": part.blob_key,
            "p_now": now,
            "p_max_parts": max_parts,
        }
        if self._single is not None:
            async with self._single.connect() as conn:
                if (await conn.execute(_ADVANCE_AND_RECORD, values)).rowcount == 1:
                    return end
                row = await _file_row(conn, tenant_id, part.file_id)
            raise _refusal(row, part, now, max_parts)
        async with write_transaction(self._engine) as conn:
            if (await conn.execute(_ADVANCE, values)).rowcount == 1:
                await conn.execute(_RECORD, values)
                return end
            row = await _file_row(conn, tenant_id, part.file_id)
        raise _refusal(row, part, now, max_parts)

    async def parts(self, tenant_id: str, file_id: str) -> builtins.list[UploadPart]:
        async with (self._single or self._engine).connect() as conn:
            return await _parts_of(conn, tenant_id, [file_id])

    async def truncate_upload(
        self, tenant_id: str, file_id: str, *, offset: int, was: int
    ) -> builtins.list[UploadPart] | None:
        back = (
            update(files)
            .where(
                *_key(tenant_id, file_id),
                files.c.state == FileState.PENDING.value,
                files.c.upload_offset == was,
            )
            .values(upload_offset=offset)
        )
        async with write_transaction(self._engine) as conn:
            if (await conn.execute(back)).rowcount != 1:
                return None
            # The row is locked by the update: no part can be added meanwhile.
            removed = [p for p in await _parts_of(conn, tenant_id, [file_id]) if p.offset >= offset]
            await conn.execute(
                delete(file_upload_parts).where(
                    file_upload_parts.c.tenant_id == tenant_id,
                    file_upload_parts.c.file_id == file_id,
                    file_upload_parts.c.offset >= offset,
                )
            )
            return removed

    async def mark_ready(
        self,
        tenant_id: str,
        file_id: str,
        *,
        size: int,
        sha256: str,
        content_type: str,
        thumbnail: Thumbnail | None,
        limits: FileLimits,
        now: datetime,
        blob_key: str | None = None,
    ) -> StoredFile:
        async with write_transaction(self._engine) as conn:
            row = await _pending_row(conn, tenant_id, file_id)
            await _move_usage(conn, tenant_id, size - row["size_bytes"], limits)
            moved = {} if blob_key is None else {"blob_key": blob_key}
            await conn.execute(
                update(files)
                .where(*_key(tenant_id, file_id), files.c.state == FileState.PENDING.value)
                .values(
                    state=FileState.READY.value,
                    size_bytes=size,
                    sha256=sha256,
                    content_type=content_type,
                    thumbnail=None if thumbnail is None else _thumbnail_json(thumbnail),
                    ready_time=now,
                    expire_time=None,
                    **moved,
                )
            )
            await conn.execute(
                delete(file_upload_parts).where(
                    file_upload_parts.c.tenant_id == tenant_id,
                    file_upload_parts.c.file_id == file_id,
                )
            )
            ready = await _file_row(conn, tenant_id, file_id)
        assert ready is not None  # locked above, in this transaction
        return to_stored_file(ready)

    async def delete(self, tenant_id: str, file_id: str, *, now: datetime) -> StoredFile:
        async with write_transaction(self._engine) as conn:
            row = await _file_row(conn, tenant_id, file_id, lock=True)
            if row is None:
                raise FileNotFound(file_id)
            if row["state"] == FileState.DELETED.value:
                return to_stored_file(row)
            await _mark_deleted(conn, [row], now)
            deleted = await _file_row(conn, tenant_id, file_id)
        assert deleted is not None
        return to_stored_file(deleted)

    async def abandon(self, tenant_id: str, file_id: str, *, now: datetime) -> StoredFile | None:
        async with write_transaction(self._engine) as conn:
            row = await _file_row(conn, tenant_id, file_id, lock=True)
            if row is None or row["state"] != FileState.PENDING.value:
                return None
            await _mark_deleted(conn, [row], now)
            abandoned = await _file_row(conn, tenant_id, file_id)
        assert abandoned is not None
        return to_stored_file(abandoned)

    async def expire_uploads(self, now: datetime, *, limit: int) -> builtins.list[StoredFile]:
        due = (
            select(files)
            .where(files.c.state == FileState.PENDING.value, files.c.expire_time <= now)
            .order_by(files.c.expire_time, files.c.id)
            .limit(limit)
        )
        async with write_transaction(self._engine) as conn:
            rows = [r._mapping for r in await claim_rows(conn, due)]
            await _mark_deleted(conn, rows, now)
        return [
            replace(to_stored_file(row), state=FileState.DELETED, delete_time=now) for row in rows
        ]

    async def unpurged(
        self, *, limit: int
    ) -> builtins.list[tuple[StoredFile, builtins.list[UploadPart]]]:
        query = (
            select(files)
            .where(files.c.state == FileState.DELETED.value, files.c.purge_time.is_(None))
            .order_by(files.c.delete_time, files.c.id)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            deleted = [to_stored_file(r._mapping) for r in await conn.execute(query)]
            by_file: dict[str, list[UploadPart]] = defaultdict(list)
            by_tenant: dict[str, list[str]] = defaultdict(list)
            for file in deleted:
                by_tenant[file.tenant_id].append(file.id)
            for tenant_id, ids in by_tenant.items():
                for part in await _parts_of(conn, tenant_id, ids):
                    by_file[part.file_id].append(part)
        return [(file, by_file.get(file.id, [])) for file in deleted]

    async def mark_purged(self, tenant_id: str, file_ids: Sequence[str], *, now: datetime) -> None:
        if not file_ids:
            return
        purged = (
            select(files.c.id)
            .where(
                files.c.tenant_id == tenant_id,
                files.c.id.in_(file_ids),
                files.c.state == FileState.DELETED.value,
            )
            .scalar_subquery()
        )
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                delete(file_upload_parts).where(
                    file_upload_parts.c.tenant_id == tenant_id,
                    file_upload_parts.c.file_id.in_(purged),
                )
            )
            await conn.execute(
                update(files)
                .where(files.c.id.in_(purged), files.c.purge_time.is_(None))
                .values(purge_time=now)
            )

    async def usage(self, tenant_id: str) -> Usage:
        async with self._engine.connect() as conn:
            return await _usage_row(conn, tenant_id)


# -- usage --------------------------------------------------------------------------------


async def _reserve(conn: AsyncConnection, tenant_id: str, size: int, limits: FileLimits) -> None:
    """Count one more file of ``size`` bytes in the tenant's usage, or raise QuotaExceeded."""
    await conn.execute(
        insert_ignoring_conflicts(conn, file_usage).values(tenant_id=tenant_id, bytes=0, files=0)
    )
    reserved = await conn.execute(
        update(file_usage)
        .where(
            file_usage.c.tenant_id == tenant_id,
            file_usage.c.bytes + size <= limits.max_tenant_bytes,
            file_usage.c.files + 1 <= limits.max_tenant_files,
        )
        .values(bytes=file_usage.c.bytes + size, files=file_usage.c.files + 1)
    )
    if reserved.rowcount != 1:
        used = await _usage_row(conn, tenant_id)
        if used.files + 1 > limits.max_tenant_files:
            raise QuotaExceeded(
                f"the tenant has {used.files} files, the most it may keep "
                f"({limits.max_tenant_files})"
            )
        raise _over_bytes(used, size, limits)


async def _move_usage(
    conn: AsyncConnection, tenant_id: str, delta: int, limits: FileLimits
) -> None:
    """Add ``delta`` bytes (possibly negative) to the tenant's usage; raise QuotaExceeded
    when a growth would pass ``limits.max_tenant_bytes``."""
    if delta == 0:
        return
    change = (
        update(file_usage)
        .where(file_usage.c.tenant_id == tenant_id)
        .values(bytes=file_usage.c.bytes + delta)
    )
    if delta > 0:
        change = change.where(file_usage.c.bytes + delta <= limits.max_tenant_bytes)
    if (await conn.execute(change)).rowcount != 1:
        raise _over_bytes(await _usage_row(conn, tenant_id), delta, limits)


def _over_bytes(used: Usage, more: int, limits: FileLimits) -> QuotaExceeded:
    return QuotaExceeded(
        f"the tenant's files take {used.bytes} bytes; {more} more would pass its "
        f"limit of {limits.max_tenant_bytes}"
    )


async def _usage_row(conn: AsyncConnection, tenant_id: str) -> Usage:
    query = select(file_usage.c.bytes, file_usage.c.files).where(
        file_usage.c.tenant_id == tenant_id
    )
    row = (await conn.execute(query)).first()
    return Usage() if row is None else Usage(bytes=row.bytes, files=row.files)


async def _mark_deleted(conn: AsyncConnection, rows: Sequence[Row], now: datetime) -> None:
    """Mark these live files (locked by the caller) DELETED and release their usage."""
    released: dict[str, Usage] = defaultdict(Usage)
    for row in rows:
        changed = await conn.execute(
            update(files)
            .where(*_key(row["tenant_id"], row["id"]), files.c.state.in_(_LIVE))
            .values(state=FileState.DELETED.value, delete_time=now)
        )
        if changed.rowcount == 1:
            held = released[row["tenant_id"]]
            released[row["tenant_id"]] = Usage(held.bytes + row["size_bytes"], held.files + 1)
    for tenant_id, usage in released.items():
        await conn.execute(
            update(file_usage)
            .where(file_usage.c.tenant_id == tenant_id)
            .values(bytes=file_usage.c.bytes - usage.bytes, files=file_usage.c.files - usage.files)
        )


# -- rows ---------------------------------------------------------------------------------


def _key(tenant_id: str, file_id: str) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return files.c.tenant_id == tenant_id, files.c.id == file_id


# The statements of every tus PATCH, built once with bound parameters: building them anew
# (and their cache keys) took about as long as running them.
_FILE = select(files).where(
    files.c.tenant_id == bindparam("p_tenant_id"), files.c.id == bindparam("p_file_id")
)
_FILE_LOCKED = _FILE.with_for_update()
_PARTS_HELD = (
    select(func.count())
    .select_from(file_upload_parts)
    .where(
        file_upload_parts.c.tenant_id == bindparam("p_tenant_id"),
        file_upload_parts.c.file_id == bindparam("p_file_id"),
    )
    .scalar_subquery()
)
_END = bindparam("p_end", type_=BigInteger)
#: Moves an upload's offset from ``p_offset`` to ``p_end`` — if it is there, pending, not
#: expired at ``p_now``, the part ends within the declared size, and there is room for one
#: more part or this one ends the upload (parts are added only by the request that moves
#: the offset, so their count cannot change meanwhile).
_ADVANCE = (
    update(files)
    .where(
        files.c.tenant_id == bindparam("p_tenant_id"),
        files.c.id == bindparam("p_file_id"),
        files.c.state == FileState.PENDING.value,
        files.c.upload_offset == bindparam("p_offset"),
        files.c.expire_time > bindparam("p_now"),
        (files.c.size_bytes == 0) | (files.c.size_bytes >= _END),
        (_PARTS_HELD + 1 < bindparam("p_max_parts", type_=Integer)) | (files.c.size_bytes == _END),
    )
    .values(upload_offset=_END)
)
_PART_VALUES = {
    "tenant_id": bindparam("p_tenant_id", type_=file_upload_parts.c.tenant_id.type),
    "offset": bindparam("p_offset", type_=BigInteger),
    "size": bindparam("p_size", type_=BigInteger),
    "blob_key": bindparam("p_blob_key", type_=file_upload_parts.c.blob_key.type),
}
_RECORD = file_upload_parts.insert().values(
    file_id=bindparam("p_file_id", type_=file_upload_parts.c.file_id.type), **_PART_VALUES
)
_ADVANCED = _ADVANCE.returning(files.c.id).cte("advanced")
#: PostgreSQL: :data:`_ADVANCE` and :data:`_RECORD` in one statement — the part is inserted
#: for the row the update advanced, if it did: both or neither.
_ADVANCE_AND_RECORD = file_upload_parts.insert().from_select(
    [*_PART_VALUES, "file_id"], select(*_PART_VALUES.values(), _ADVANCED.c.id)
)


async def _file_row(
    conn: AsyncConnection, tenant_id: str, file_id: str, *, lock: bool = False
) -> Row | None:
    query = _FILE_LOCKED if lock else _FILE
    row = (await conn.execute(query, {"p_tenant_id": tenant_id, "p_file_id": file_id})).first()
    return None if row is None else row._mapping


async def _pending_row(conn: AsyncConnection, tenant_id: str, file_id: str) -> Row:
    row = await _file_row(conn, tenant_id, file_id, lock=True)
    if row is None:
        raise FileNotFound(file_id)
    if row["state"] != FileState.PENDING.value:
        raise FileNotReady(f"file {file_id} is {row['state']}, not pending")
    return row


async def _parts_of(
    conn: AsyncConnection, tenant_id: str, file_ids: Sequence[str]
) -> list[UploadPart]:
    query = (
        select(file_upload_parts)
        .where(
            file_upload_parts.c.tenant_id == tenant_id,
            file_upload_parts.c.file_id.in_(file_ids),
        )
        .order_by(file_upload_parts.c.file_id, file_upload_parts.c.offset)
    )
    return [
        UploadPart(file_id=r.file_id, offset=r.offset, size=r.size, blob_key=r.blob_key)
        for r in await conn.execute(query)
    ]


def _refusal(row: Row | None, part: UploadPart, now: datetime, max_parts: int) -> Exception:
    """Why ``part`` was not recorded, from the file's row as it is now."""
    if row is None:
        return FileNotFound(part.file_id)
    if row["state"] != FileState.PENDING.value:
        return FileNotReady(f"file {part.file_id} is {row['state']}, not pending")
    if as_utc(row["expire_time"]) <= now:
        return UploadExpired(f"the upload of file {part.file_id} has expired")
    if row["upload_offset"] != part.offset:
        return OffsetMismatch(row["upload_offset"], part.offset)
    if row["size_bytes"] == 0 or row["size_bytes"] >= part.offset + part.size:
        return InvalidFile(f"an upload may have at most {max_parts} parts: send larger requests")
    return InvalidFile(
        f"bytes up to {part.offset + part.size} pass the declared size {row['size_bytes']}"
    )


def _new_file_row(file: NewFile) -> dict[str, Any]:
    return {
        "id": file.id,
        "tenant_id": file.tenant_id,
        "filename": file.filename,
        "content_type": file.content_type,
        "size_bytes": file.size,
        "sha256": "",
        "declared_sha256": file.declared_sha256,
        "user_id": file.user_id,
        "metadata_": file.metadata,
        "state": FileState.PENDING.value,
        "blob_key": file.blob_key,
        "upload_offset": 0,
        "create_time": file.create_time,
        "expire_time": file.expire_time,
    }


def _thumbnail_json(thumbnail: Thumbnail) -> dict[str, Any]:
    return {
        "blob_key": thumbnail.blob_key,
        "content_type": thumbnail.content_type,
        "width": thumbnail.width,
        "height": thumbnail.height,
        "size": thumbnail.size,
    }


def _optional_time(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def to_stored_file(row: Row) -> StoredFile:
    thumbnail = row["thumbnail"]
    return StoredFile(
        id=row["id"],
        tenant_id=row["tenant_id"],
        filename=row["filename"],
        content_type=row["content_type"],
        size=row["size_bytes"],
        sha256=row["sha256"],
        user_id=row["user_id"],
        metadata=row["metadata_"],
        state=FileState(row["state"]),
        blob_key=row["blob_key"],
        create_time=as_utc(row["create_time"]),
        upload_offset=row["upload_offset"],
        expire_time=_optional_time(row["expire_time"]),
        ready_time=_optional_time(row["ready_time"]),
        delete_time=_optional_time(row["delete_time"]),
        purge_time=_optional_time(row["purge_time"]),
        thumbnail=None if thumbnail is None else Thumbnail(**thumbnail),
    )
