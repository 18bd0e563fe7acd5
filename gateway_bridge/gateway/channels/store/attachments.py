"""Attachments in the chat store: the files a send may attach, read inside its
transaction, and the rows that record where each file is attached.

A send may attach only ready files of its own tenant — and, sent for a user, only files
that user uploaded. They are read from the file
service's ``files`` table in the sending transaction, share-locked on PostgreSQL until it
ends, so no file is deleted between the check and the commit (a deletion waits for the
send; a file deleted later stays listed with the message, and its URLs stop serving).
The message keeps a copy of each file's metadata (``messages.attachments``), and
``message_attachments`` records each (message, file) pair, removed when the message is
deleted. Which ids are wrong is
:func:`~.group_commit.attachments_for`'s pure decision.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway_bridge.gateway.channels.models import Attachment, Message
from gateway_bridge.gateway.channels.store.group_commit import FileKey, ReadyFile
from service_kit.schema import files, message_attachments

_READY = "ready"


async def ready_files(
    conn: AsyncConnection, wanted: Collection[FileKey]
) -> dict[FileKey, ReadyFile]:
    """The ready files among ``wanted`` with who uploaded each, by ``(tenant_id, file_id)``;
    share-locked until the transaction ends (PostgreSQL), in id order."""
    if not wanted:
        return {}
    rows = await conn.execute(
        select(
            files.c.tenant_id,
            files.c.id,
            files.c.filename,
            files.c.content_type,
            files.c.size_bytes,
            files.c.thumbnail,
            files.c.user_id,
        )
        .where(files.c.id.in_(sorted({file_id for _, file_id in wanted})), files.c.state == _READY)
        .order_by(files.c.id)
        .with_for_update(read=True)
    )
    found = {
        (row.tenant_id, row.id): ReadyFile(row.user_id, _attachment(row._mapping)) for row in rows
    }
    return {key: attachment for key, attachment in found.items() if key in wanted}


async def record_attachments(conn: AsyncConnection, stored: Sequence[Message]) -> None:
    """Record where the files of the newly ``stored`` messages are attached."""
    rows = [
        {
            "tenant_id": message.tenant_id,
            "channel_id": message.channel_id,
            "message_id": message.id,
            "file_id": attachment.file_id,
            "position": position,
        }
        for message in stored
        for position, attachment in enumerate(message.attachments)
    ]
    if rows:
        await conn.execute(insert(message_attachments), rows)


async def detach(conn: AsyncConnection, message_id: str) -> None:
    """Forget where the files of the message ``message_id`` were attached."""
    await conn.execute(
        delete(message_attachments).where(message_attachments.c.message_id == message_id)
    )


def _attachment(row: Mapping[Any, Any]) -> Attachment:
    # files.thumbnail: {"blob_key", "content_type", "width", "height", "size"} or None.
    thumbnail = row["thumbnail"] or {}
    return Attachment(
        file_id=row["id"],
        filename=row["filename"],
        content_type=row["content_type"],
        size_bytes=int(row["size_bytes"]),
        thumbnail_width=int(thumbnail.get("width") or 0),
        thumbnail_height=int(thumbnail.get("height") or 0),
    )
