"""Files attached to messages, against a real server (tenant service, gateway and file
service in one process, as ``keel serve all`` runs them) on SQLite and PostgreSQL.

What a tenant's app relies on: a message carries the metadata of the ready files it names
and URLs that download their bytes (and thumbnails) from the file service; anything but a
ready file of the tenant is refused by position, with nothing stored; history and live
events show the attachments with freshly signed URLs; deleting the message detaches them.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import aiohttp
import grpc
import pytest
from keel.channels.v1 import channels_pb2
from keel.files.v1 import files_pb2, files_pb2_grpc
from PIL import Image
from sqlalchemy import func, select

from service_kit.schema import events, message_attachments, messages
from tests.gateway_bridge.conftest import (
    ADMIN,
    Keel,
    Tenant,
    connect,
    field_violations,
    rpc_error,
    running_keel_with_files,
)

TTL = timedelta(minutes=10)
NOT_READY = "is not a ready file of this tenant"


@pytest.fixture(scope="module")
async def keel(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keel]:
    tmp = tmp_path_factory.mktemp("attachments")
    ttl = int(TTL.total_seconds())
    async with running_keel_with_files(database_url, tmp, attachment_url_ttl_seconds=ttl) as keel:
        yield keel


@pytest.fixture
async def tenant(keel: Keel) -> Tenant:
    return await keel.tenant("chat:*", "upload:*")


def png(width: int = 640, height: int = 480) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(out, "PNG")
    return out.getvalue()


async def upload(
    keel: Keel, tenant: Tenant, data: bytes, filename: str, *, user_id: str = "alice"
) -> files_pb2.File:
    """A ready file of ``tenant``, uploaded for ``user_id`` as its backend would over gRPC
    (a user attaches only the files uploaded for them)."""

    def requests() -> Iterator[files_pb2.UploadFileRequest]:
        meta = files_pb2.UploadFileMetadata(
            filename=filename, size_bytes=len(data), user_id=user_id
        )
        yield files_pb2.UploadFileRequest(metadata=meta)
        yield files_pb2.UploadFileRequest(chunk=data)

    stub = files_pb2_grpc.FileServiceStub(keel.client)
    answer = await stub.UploadFile(requests(), metadata=tenant.md)
    assert answer.file.state == files_pb2.FILE_STATE_READY
    file: files_pb2.File = answer.file
    return file


async def fetched(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, str]:
    async with http.get(url) as response:
        return response.status, await response.read(), response.headers["Content-Type"]


async def attached_rows(keel: Keel, message_id: str) -> list[tuple[str, int]]:
    """``(file_id, position)`` of the message's rows in ``message_attachments``."""
    async with keel.runtime.engine.connect() as conn:
        rows = await conn.execute(
            select(message_attachments.c.file_id, message_attachments.c.position)
            .where(message_attachments.c.message_id == message_id)
            .order_by(message_attachments.c.position)
        )
        return [(row.file_id, row.position) for row in rows]


async def tenant_attachment_rows(keel: Keel, tenant: Tenant) -> int:
    async with keel.runtime.engine.connect() as conn:
        query = (
            select(func.count())
            .select_from(message_attachments)
            .where(message_attachments.c.tenant_id == tenant.id)
        )
        return int((await conn.execute(query)).scalar_one())


def signed_after(moment: datetime) -> datetime:
    """The earliest expiry of URLs signed at or after ``moment`` (truncated to seconds)."""
    return moment.replace(microsecond=0) + TTL


# -- sending ---------------------------------------------------------------------------------


async def test_a_message_carries_its_files_metadata_and_urls_that_download_them(
    keel: Keel, tenant: Tenant, http: aiohttp.ClientSession
) -> None:
    image_bytes, notes_bytes = png(), b"minutes of the meeting\n"
    image = await upload(keel, tenant, image_bytes, "cat.png")
    notes = await upload(keel, tenant, notes_bytes, "notes.txt")
    channel_id = await tenant.group("alice", "bob")

    before = datetime.now(UTC)
    message = await tenant.send(channel_id, "", attachment_ids=[notes.id, image.id])
    after = datetime.now(UTC)

    assert list(message.attachment_ids) == [notes.id, image.id]
    first, second = message.attachments
    assert (first.file_id, first.filename, first.content_type, first.size_bytes) == (
        notes.id,
        "notes.txt",
        "text/plain",
        len(notes_bytes),
    )
    assert (first.thumbnail_width, first.thumbnail_height, first.thumbnail_url) == (0, 0, "")
    assert (second.file_id, second.filename, second.content_type, second.size_bytes) == (
        image.id,
        "cat.png",
        "image/png",
        len(image_bytes),
    )
    assert (second.thumbnail_width, second.thumbnail_height) == (256, 192)
    for attachment in message.attachments:
        assert attachment.url.startswith(keel.files_url + "/files/download/")
        expires = attachment.url_expire_time.ToDatetime(UTC)
        assert signed_after(before) <= expires <= after + TTL
    assert await fetched(http, first.url) == (200, notes_bytes, "text/plain")
    assert await fetched(http, second.url) == (200, image_bytes, "image/png")
    status, thumbnail, content_type = await fetched(http, second.thumbnail_url)
    assert (status, content_type) == (200, "image/webp")
    assert Image.open(io.BytesIO(thumbnail)).size == (256, 192)
    assert await attached_rows(keel, message.id) == [(notes.id, 0), (image.id, 1)]


async def test_history_shows_the_attachments_with_freshly_signed_urls(
    keel: Keel, tenant: Tenant, http: aiohttp.ClientSession
) -> None:
    data = b"%PDF-1.4 not really\n"
    file = await upload(keel, tenant, data, "report.bin")
    channel_id = await tenant.group()
    sent = await tenant.send(channel_id, "the report", attachment_ids=[file.id])

    read_at = datetime.now(UTC)
    got = await tenant.stub.GetMessage(
        channels_pb2.GetMessageRequest(channel_id=channel_id, message_id=sent.id),
        metadata=tenant.md,
    )
    (listed,) = await tenant.messages(channel_id)

    for message in (got.message, listed):
        (attachment,) = message.attachments
        assert (attachment.file_id, attachment.filename, attachment.size_bytes) == (
            file.id,
            "report.bin",
            len(data),
        )
        assert attachment.url_expire_time.ToDatetime(UTC) >= signed_after(read_at)
        assert (await fetched(http, attachment.url))[:2] == (200, data)


async def test_a_url_downloads_nothing_once_the_file_is_deleted_but_the_message_still_lists_it(
    keel: Keel, tenant: Tenant, http: aiohttp.ClientSession
) -> None:
    file = await upload(keel, tenant, b"short-lived", "tmp.txt")
    channel_id = await tenant.group()
    sent = await tenant.send(channel_id, "here", attachment_ids=[file.id])

    files = files_pb2_grpc.FileServiceStub(keel.client)
    await files.DeleteFile(files_pb2.DeleteFileRequest(id=file.id), metadata=tenant.md)

    (listed,) = await tenant.messages(channel_id)
    assert [a.file_id for a in listed.attachments] == [file.id]
    status, body, _ = await fetched(http, sent.attachments[0].url)
    assert status >= 400 and body != b"short-lived"


# -- refusals --------------------------------------------------------------------------------


async def pending_file(keel: Keel, tenant: Tenant, other: Tenant) -> str:
    stub = files_pb2_grpc.FileServiceStub(keel.client)
    answer = await stub.CreateUploadUrl(
        files_pb2.CreateUploadUrlRequest(filename="later.txt", size_bytes=10), metadata=tenant.md
    )
    return str(answer.file_id)


async def deleted_file(keel: Keel, tenant: Tenant, other: Tenant) -> str:
    file = await upload(keel, tenant, b"gone", "gone.txt")
    stub = files_pb2_grpc.FileServiceStub(keel.client)
    await stub.DeleteFile(files_pb2.DeleteFileRequest(id=file.id), metadata=tenant.md)
    return str(file.id)


async def other_tenants_file(keel: Keel, tenant: Tenant, other: Tenant) -> str:
    return str((await upload(keel, other, b"not yours", "secret.txt")).id)


async def unknown_file(keel: Keel, tenant: Tenant, other: Tenant) -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize(
    "make_id",
    [pending_file, deleted_file, other_tenants_file, unknown_file],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("as_reply", [False, True], ids=["send", "reply"])
async def test_an_id_that_is_no_ready_file_of_the_tenant_is_refused_by_position_storing_nothing(
    keel: Keel, tenant: Tenant, make_id: object, as_reply: bool
) -> None:
    other = await keel.tenant("chat:*", "upload:*")
    good = await upload(keel, tenant, b"fine", "fine.txt")
    bad = await make_id(keel, tenant, other)  # type: ignore[operator]
    channel_id = await tenant.group()
    parent = await tenant.send(channel_id, "first")
    before = await tenant.snapshot(channel_id)
    reply = {"reply_to": parent.id} if as_reply else {}

    error = await rpc_error(tenant.send(channel_id, "look", attachment_ids=[good.id, bad], **reply))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["attachment_ids[1]"]
    # The same words whatever the reason, so another tenant's ids are not disclosed.
    assert error.details() == f"invalid request: attachment_ids[1]: {NOT_READY}"
    assert await tenant.snapshot(channel_id) == before
    assert await tenant_attachment_rows(keel, tenant) == 0


async def test_repeated_or_malformed_ids_are_refused_before_any_lookup(
    keel: Keel, tenant: Tenant
) -> None:
    file = await upload(keel, tenant, b"once", "once.txt")
    channel_id = await tenant.group()
    before = await tenant.snapshot(channel_id)

    repeated = await rpc_error(
        tenant.send(channel_id, "x", attachment_ids=[file.id, file.id.upper()])
    )
    malformed = await rpc_error(tenant.send(channel_id, "x", attachment_ids=["cat.png"]))
    too_many = await rpc_error(
        tenant.send(channel_id, "x", attachment_ids=[str(uuid.uuid4()) for _ in range(21)])
    )

    assert repeated.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(repeated) == ["attachment_ids[1]"]
    assert "repeats attachment_ids[0]" in repeated.details()
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(malformed) == ["attachment_ids[0]"]
    assert too_many.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(too_many) == ["attachment_ids"]
    assert await tenant.snapshot(channel_id) == before


async def test_concurrent_sends_stored_together_are_each_checked_on_their_own(
    keel: Keel, tenant: Tenant
) -> None:
    """Group commit: good and bad sends in the same batches; the bad take no seq."""
    file = await upload(keel, tenant, b"shared", "shared.txt")
    channel_id = await tenant.group()
    good = [tenant.send(channel_id, f"good {i}", attachment_ids=[file.id]) for i in range(8)]
    bad = [
        tenant.send(channel_id, f"bad {i}", attachment_ids=[str(uuid.uuid4())]) for i in range(8)
    ]

    answers = await asyncio.gather(*good, *bad, return_exceptions=True)

    stored = [a for a in answers[:8] if isinstance(a, channels_pb2.Message)]
    refused = [a for a in answers[8:] if isinstance(a, grpc.aio.AioRpcError)]
    assert len(stored) == 8 and len(refused) == 8
    assert all(e.code() == grpc.StatusCode.INVALID_ARGUMENT for e in refused)
    assert sorted(m.seq for m in stored) == list(range(1, 9))
    assert all([a.file_id for a in m.attachments] == [file.id] for m in stored)
    assert (await tenant.channel(channel_id)).last_seq == 8
    assert await tenant_attachment_rows(keel, tenant) == 8


# -- deleting --------------------------------------------------------------------------------


async def test_deleting_a_message_detaches_its_files_in_the_same_change(
    keel: Keel, tenant: Tenant
) -> None:
    first = await upload(keel, tenant, b"one", "one.txt")
    second = await upload(keel, tenant, b"two", "two.txt")
    channel_id = await tenant.group()
    sent = await tenant.send(channel_id, "both", attachment_ids=[first.id, second.id])
    assert await attached_rows(keel, sent.id) == [(first.id, 0), (second.id, 1)]

    deleted = await tenant.stub.DeleteMessage(
        channels_pb2.DeleteMessageRequest(channel_id=channel_id, message_id=sent.id),
        metadata=tenant.md,
    )

    assert deleted.message.deleted
    assert (list(deleted.message.attachment_ids), list(deleted.message.attachments)) == ([], [])
    (tombstone,) = await tenant.messages(channel_id)
    assert (list(tombstone.attachment_ids), list(tombstone.attachments)) == ([], [])
    assert await attached_rows(keel, sent.id) == []
    async with keel.runtime.engine.connect() as conn:
        stored = await conn.execute(select(messages.c.attachments).where(messages.c.id == sent.id))
        assert stored.scalar_one() == []


async def test_deleting_the_channel_removes_where_its_files_were_attached(
    keel: Keel, tenant: Tenant
) -> None:
    file = await upload(keel, tenant, b"in a channel", "c.txt")
    channel_id = await tenant.group()
    sent = await tenant.send(channel_id, "x", attachment_ids=[file.id])

    await tenant.stub.DeleteChannel(
        channels_pb2.DeleteChannelRequest(id=channel_id), metadata=tenant.md
    )

    assert await attached_rows(keel, sent.id) == []


# -- live events -----------------------------------------------------------------------------


async def test_a_bridge_receives_the_attachments_with_urls_and_the_event_log_keeps_no_url(
    keel: Keel, tenant: Tenant, http: aiohttp.ClientSession
) -> None:
    data = png(64, 32)
    file = await upload(keel, tenant, data, "small.png")
    channel_id = await tenant.group("alice")
    async with connect(keel.chat, ADMIN) as bridge:
        await bridge.subscribe("k1", tenant.id, channel_id, user_id="alice")
        assert (await bridge.result()).code == 0
        sent_at = datetime.now(UTC)
        sent = await tenant.send(channel_id, "", attachment_ids=[file.id])
        item = await bridge.event()
        await bridge.unsubscribe("k1")

    (attachment,) = json.loads(item.event.data_json)["message"]["attachments"]
    assert attachment == {
        "file_id": file.id,
        "filename": "small.png",
        "content_type": "image/png",
        "size_bytes": len(data),
        "thumbnail_width": 64,
        "thumbnail_height": 32,
        "url": attachment["url"],
        "thumbnail_url": attachment["thumbnail_url"],
        "url_expire_time": attachment["url_expire_time"],
    }
    assert datetime.fromisoformat(attachment["url_expire_time"]) >= signed_after(sent_at)
    assert (await fetched(http, attachment["url"]))[:2] == (200, data)
    assert (await fetched(http, attachment["thumbnail_url"]))[0] == 200
    async with keel.runtime.engine.connect() as conn:
        logged = await conn.execute(
            select(events.c.data).where(
                events.c.channel_id == channel_id,
                events.c.seq == sent.seq,
                events.c.name == "message:created",
            )
        )
        (recorded,) = logged.scalar_one()["message"]["attachments"]
    assert set(recorded) == {
        "file_id",
        "filename",
        "content_type",
        "size_bytes",
        "thumbnail_width",
        "thumbnail_height",
    }


async def test_a_user_attaches_only_their_own_files_and_the_backend_any(
    keel: Keel, tenant: Tenant
) -> None:
    channel_id = await tenant.group("alice", "bob")
    bobs = await upload(keel, tenant, b"bob's draft", "draft.txt", user_id="bob")
    backends = await upload(keel, tenant, b"the backend's", "terms.txt", user_id="")
    for file in (bobs, backends):
        error = await rpc_error(tenant.send(channel_id, "mine now", attachment_ids=[file.id]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error) == ["attachment_ids[0]"]
    by_bob = await tenant.send(channel_id, "my draft", user_id="bob", attachment_ids=[bobs.id])
    by_backend = await tenant.send(
        channel_id, "terms", user_id="", attachment_ids=[bobs.id, backends.id]
    )
    assert [a.filename for a in by_bob.attachments] == ["draft.txt"]
    assert [a.filename for a in by_backend.attachments] == ["draft.txt", "terms.txt"]
