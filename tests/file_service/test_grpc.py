"""``keel.files.v1.FileService`` over gRPC, against a real server on SQLite and PostgreSQL,
with the bytes on local disk and in S3 (moto's server): what a tenant's backend relies on.

Each test works in a tenant of its own, so quotas and listings do not mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from keel.files.v1 import files_pb2 as pb
from keel.files.v1 import files_pb2_grpc
from keel.tenants.v1 import tenants_pb2
from PIL import Image

from file_service import server as file_server
from file_service.storage import BlobStore
from service_kit.config import Address, FileSettings
from service_kit.job_worker import JobWorker
from service_kit.jobs import JobHandler
from service_kit.purge import TENANT_PURGE_JOB, tenant_purge_handler
from service_kit.server import KeelServer
from tests.gateway_bridge.conftest import ADMIN, Keel, Tenant, rpc_error, running_keel

MiB = 1 << 20
MAX_FILE = 4 * MiB
TENANT_BYTES = 6 * MiB
TENANT_FILES = 8
ALLOWED = ("image/*", "text/plain", "application/pdf", "application/octet-stream")


@dataclass
class Files:
    keel: Keel
    stub: files_pb2_grpc.FileServiceStub
    blobs: BlobStore
    backend: str
    job_handlers: Mapping[str, JobHandler]
    channel: grpc.aio.Channel

    async def tenant(self, *scopes: str) -> Tenant:
        return await self.keel.tenant(*(scopes or ("upload:*",)))


@pytest.fixture(scope="module", params=["local", "s3"])
async def files(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Files]:
    tmp = tmp_path_factory.mktemp("files")
    storage = FileSettings(
        local_dir=tmp / "blobs",
        http_addr=Address("127.0.0.1", 0),
        max_file_bytes=MAX_FILE,
        tenant_max_bytes=TENANT_BYTES,
        tenant_max_files=TENANT_FILES,
        allowed_types=ALLOWED,
        uploads_per_minute=100_000,
    )
    if request.param == "s3":
        endpoint = request.getfixturevalue("moto_endpoint")
        request.getfixturevalue("aws_env")
        storage = replace(storage, s3_endpoint_url=endpoint, s3_bucket=f"keel-{uuid.uuid4().hex}")
        await _create_bucket(endpoint, storage.s3_bucket or "")
    async with running_keel(database_url, tmp, files=storage) as keel:
        built = file_server.build(keel.runtime)
        server = KeelServer(keel.runtime, [built.spec], authenticator=keel.authenticator)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            assert built.process.blobs is not None
            yield Files(
                keel,
                files_pb2_grpc.FileServiceStub(channel),
                built.process.blobs,
                request.param,
                built.job_handlers,
                channel,
            )
        finally:
            await channel.close()
            await server.stop(1)


async def _create_bucket(endpoint: str, bucket: str) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=endpoint
    ) as client:
        await client.create_bucket(Bucket=bucket)


def _requests(
    data: bytes, *, chunk: int = 256 * 1024, **metadata: Any
) -> Iterator[pb.UploadFileRequest]:
    meta = {"filename": "notes.txt", "content_type": "text/plain", **metadata}
    yield pb.UploadFileRequest(metadata=pb.UploadFileMetadata(**meta))
    for start in range(0, len(data), chunk):
        yield pb.UploadFileRequest(chunk=data[start : start + chunk])


async def _upload(files: Files, tenant: Tenant, data: bytes, **metadata: Any) -> pb.File:
    answer = await files.stub.UploadFile(_requests(data, **metadata), metadata=tenant.md)
    file: pb.File = answer.file
    return file


async def _download(
    files: Files, tenant: Tenant, file_id: str, **fields: Any
) -> tuple[pb.File, bytes]:
    stream = files.stub.DownloadFile(
        pb.DownloadFileRequest(id=file_id, **fields), metadata=tenant.md
    )
    messages = [m async for m in stream]
    assert messages[0].WhichOneof("payload") == "file"
    assert all(m.WhichOneof("payload") == "chunk" for m in messages[1:])
    return messages[0].file, b"".join(m.chunk for m in messages[1:])


async def _listed(files: Files, tenant: Tenant) -> list[pb.File]:
    answer = await files.stub.ListFiles(pb.ListFilesRequest(page_size=100), metadata=tenant.md)
    return list(answer.files)


async def _blob_keys_of(files: Files, tenant: Tenant) -> list[str]:
    """Every blob of the tenant still stored (a refused upload must leave none)."""
    from file_service.storage import LocalBlobStore, S3BlobStore

    prefix = tenant.id
    if isinstance(files.blobs, LocalBlobStore):
        root = files.blobs.root / prefix
        return [str(p) for p in root.rglob("*") if p.is_file()] if root.exists() else []
    assert isinstance(files.blobs, S3BlobStore)
    answer = await files.blobs._client.list_objects_v2(Bucket=files.blobs.bucket, Prefix=prefix)
    return [item["Key"] for item in answer.get("Contents", [])]


def _violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


def _jpeg_with_gps() -> bytes:
    image = Image.new("RGB", (1200, 800), (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "KeelCam"  # Make
    gps = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    exif[0x8825] = gps  # GPSInfo
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    return out.getvalue()


# -- the round trip -------------------------------------------------------------------------


async def test_a_streamed_file_is_stored_whole_and_read_back_in_full_or_by_range(
    files: Files,
) -> None:
    tenant = await files.tenant()
    data = bytes(range(256)) * 5000  # 1.28 MB in five chunks
    stored = await _upload(
        files,
        tenant,
        data,
        filename="../../etc/report.bin",
        content_type="application/octet-stream",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        user_id="alice",
    )
    assert stored.state == pb.FILE_STATE_READY
    assert stored.size_bytes == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.filename == "report.bin"  # no directory survives
    assert stored.user_id == "alice"

    meta, whole = await _download(files, tenant, stored.id)
    assert whole == data and meta.id == stored.id
    _, part = await _download(files, tenant, stored.id, offset=1000, length=70_000)
    assert part == data[1000:71_000]
    _, tail = await _download(files, tenant, stored.id, offset=len(data) - 10)
    assert tail == data[-10:]

    got = await files.stub.GetFile(pb.GetFileRequest(id=stored.id), metadata=tenant.md)
    assert got.file == stored


async def test_the_type_is_sniffed_from_the_bytes_and_a_disguised_file_is_refused(
    files: Files,
) -> None:
    tenant = await files.tenant()
    png = io.BytesIO()
    Image.new("RGB", (10, 10)).save(png, "PNG")
    typed = await _upload(
        files, tenant, png.getvalue(), filename="x.bin", content_type="application/octet-stream"
    )
    assert typed.content_type == "image/png"

    page = b"<!DOCTYPE html><html><script>alert(1)</script></html>"
    error = await rpc_error(
        files.stub.UploadFile(
            _requests(page, filename="cat.png", content_type="image/png"), metadata=tenant.md
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text/html" in (error.details() or "")
    assert [f.id for f in await _listed(files, tenant)] == [typed.id]
    # The PNG and its thumbnail; nothing of the page.
    kept = await _blob_keys_of(files, tenant)
    assert kept and all(typed.id in key for key in kept)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sha256": "0" * 64}, None),
        ({"size_bytes": 10}, None),  # more bytes than declared
        ({"size_bytes": 100_000}, None),  # fewer bytes than declared
        ({"size_bytes": MAX_FILE + 1}, "size_bytes"),
        ({"filename": ""}, "filename"),
        ({"sha256": "not-hex"}, "sha256"),
        ({"content_type": "text/html"}, "content_type"),
    ],
)
async def test_an_upload_that_breaks_a_rule_is_refused_and_leaves_nothing(
    files: Files, change: dict[str, Any], field: str | None
) -> None:
    tenant = await files.tenant()
    data = b"plain text\n" * 5000
    error = await rpc_error(files.stub.UploadFile(_requests(data, **change), metadata=tenant.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    if field is not None:
        assert field in _violations(error)
    assert await _listed(files, tenant) == []
    assert await _blob_keys_of(files, tenant) == []


async def test_an_upload_stream_must_start_with_metadata_and_carry_it_once(files: Files) -> None:
    tenant = await files.tenant()
    chunk_first = [pb.UploadFileRequest(chunk=b"abc")]
    twice = [
        pb.UploadFileRequest(metadata=pb.UploadFileMetadata(filename="a.txt")),
        pb.UploadFileRequest(chunk=b"abc"),
        pb.UploadFileRequest(metadata=pb.UploadFileMetadata(filename="b.txt")),
    ]
    for requests in (chunk_first, twice, []):
        error = await rpc_error(files.stub.UploadFile(iter(requests), metadata=tenant.md))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "metadata" in _violations(error)
    assert await _listed(files, tenant) == []
    assert await _blob_keys_of(files, tenant) == []


async def test_upload_messages_mean_what_protobuf_says_on_every_path(files: Files) -> None:
    """The server reads plain chunk messages itself (:mod:`file_service.wire`), without
    protobuf: any other encoding of a chunk is still read as protobuf reads it, and a chunk
    past its bound is still refused."""
    tenant = await files.tenant()
    upload = files.channel.stream_unary(
        "/keel.files.v1.FileService/UploadFile",
        request_serializer=bytes,
        response_deserializer=pb.UploadFileResponse.FromString,
    )
    meta = pb.UploadFileRequest(
        metadata=pb.UploadFileMetadata(filename="n.txt", content_type="text/plain")
    ).SerializeToString()
    raw = [
        meta,
        pb.UploadFileRequest(chunk=b"plain text: ").SerializeToString(),
        b"\x12\x83\x80\x00abc",  # a longer varint than needed
        b"\x12\x01-\x12\x03def",  # the field twice: "def"
        b"\x12\x03ghi\x18\x01",  # an unknown field after it
        b"\x12\x00",  # an empty chunk
        pb.UploadFileRequest(chunk=b"x" * MiB).SerializeToString(),
    ]
    answer = await upload(iter(raw), metadata=tenant.md)
    data = b"plain text: abcdefghi" + b"x" * MiB
    assert answer.file.size_bytes == len(data)
    assert answer.file.sha256 == hashlib.sha256(data).hexdigest()
    assert (await _download(files, tenant, answer.file.id))[1] == data

    too_big = pb.UploadFileRequest(chunk=b"x" * (MiB + 1)).SerializeToString()
    error = await rpc_error(upload(iter([meta, too_big]), metadata=tenant.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk" in _violations(error)
    assert [f.id for f in await _listed(files, tenant)] == [answer.file.id]


# -- quotas ---------------------------------------------------------------------------------


async def test_a_tenant_cannot_store_more_bytes_or_files_than_its_quota(files: Files) -> None:
    tenant = await files.tenant()
    three_mib = b"x" * (3 * MiB)
    await _upload(files, tenant, three_mib, size_bytes=len(three_mib))
    await _upload(files, tenant, three_mib)  # size not declared: counted on arrival
    error = await rpc_error(
        files.stub.UploadFile(_requests(b"more", size_bytes=4), metadata=tenant.md)
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(await _listed(files, tenant)) == 2
    # Deleting frees the room.
    first = (await _listed(files, tenant))[-1]
    await files.stub.DeleteFile(pb.DeleteFileRequest(id=first.id), metadata=tenant.md)
    await _upload(files, tenant, b"more")

    counted = await files.tenant()
    for _ in range(TENANT_FILES):
        await _upload(files, counted, b"tiny")
    error = await rpc_error(files.stub.UploadFile(_requests(b"one more"), metadata=counted.md))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- listing, deleting, tenancy --------------------------------------------------------------


async def test_files_are_listed_newest_first_a_page_at_a_time_and_by_user(files: Files) -> None:
    tenant = await files.tenant()
    made = [await _upload(files, tenant, b"%d" % i, user_id=f"u{i % 2}") for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await files.stub.ListFiles(
            pb.ListFilesRequest(page_size=2, page_token=token), metadata=tenant.md
        )
        seen += [f.id for f in page.files]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f.id for f in reversed(made)]
    only = await files.stub.ListFiles(pb.ListFilesRequest(user_id="u1"), metadata=tenant.md)
    assert [f.id for f in only.files] == [made[3].id, made[1].id]


async def test_a_deleted_file_keeps_its_metadata_but_loses_its_bytes(files: Files) -> None:
    tenant = await files.tenant()
    stored = await _upload(files, tenant, b"secret\n")
    deleted = await files.stub.DeleteFile(pb.DeleteFileRequest(id=stored.id), metadata=tenant.md)
    assert deleted.file.state == pb.FILE_STATE_DELETED
    got = await files.stub.GetFile(pb.GetFileRequest(id=stored.id), metadata=tenant.md)
    assert got.file.state == pb.FILE_STATE_DELETED and got.file.sha256 == stored.sha256
    error = await rpc_error(_download(files, tenant, stored.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await _listed(files, tenant) == []
    assert await _blob_keys_of(files, tenant) == []
    again = await files.stub.DeleteFile(pb.DeleteFileRequest(id=stored.id), metadata=tenant.md)
    assert again.file.state == pb.FILE_STATE_DELETED


async def test_another_tenants_file_is_not_found_by_any_method(files: Files) -> None:
    owner, other = await files.tenant(), await files.tenant()
    stored = await _upload(files, owner, b"mine")
    calls = [
        files.stub.GetFile(pb.GetFileRequest(id=stored.id), metadata=other.md),
        files.stub.DeleteFile(pb.DeleteFileRequest(id=stored.id), metadata=other.md),
        files.stub.CreateDownloadUrl(pb.CreateDownloadUrlRequest(id=stored.id), metadata=other.md),
        _download(files, other, stored.id),
    ]
    for call in calls:
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    assert await _listed(files, other) == []
    _, data = await _download(files, owner, stored.id)
    assert data == b"mine"


async def test_reading_needs_upload_read_and_writing_upload_write(files: Files) -> None:
    owner = await files.tenant()
    stored = await _upload(files, owner, b"shared")
    reader = await files.keel.tenant("upload:read")
    writer = await files.keel.tenant("upload:write")
    error = await rpc_error(files.stub.UploadFile(_requests(b"x"), metadata=reader.md))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await rpc_error(files.stub.GetFile(pb.GetFileRequest(id=stored.id), metadata=writer.md))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("bad_id", ["", "not-a-uuid", "' OR 1=1 --"])
async def test_a_malformed_id_is_an_invalid_argument(files: Files, bad_id: str) -> None:
    tenant = await files.tenant()
    error = await rpc_error(files.stub.GetFile(pb.GetFileRequest(id=bad_id), metadata=tenant.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(error) == ["id"]


async def test_a_range_past_the_end_is_out_of_range(files: Files) -> None:
    tenant = await files.tenant()
    stored = await _upload(files, tenant, b"0123456789")
    error = await rpc_error(_download(files, tenant, stored.id, offset=11))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE


async def test_deleting_a_tenant_removes_its_files_bytes(files: Files) -> None:
    doomed, kept = await files.tenant(), await files.tenant()
    await _upload(files, doomed, b"doomed")
    await _upload(files, doomed, _jpeg_with_gps(), filename="x.jpg")  # with a thumbnail
    await _upload(files, kept, b"kept")
    assert len(await _blob_keys_of(files, doomed)) == 3
    await files.keel.tenants.DeleteTenant(
        tenants_pb2.DeleteTenantRequest(id=doomed.id), metadata=ADMIN
    )
    engine = files.keel.runtime.engine
    handlers = {TENANT_PURGE_JOB: tenant_purge_handler(engine), **files.job_handlers}
    worker = JobWorker(engine, handlers, poll_interval=0.05)
    worker.start()
    try:
        async with asyncio.timeout(30):
            while True:
                if not await _blob_keys_of(files, doomed):
                    break
                await asyncio.sleep(0.05)  # polling the condition; the timeout bounds it
    finally:
        await worker.stop(grace=10)
    assert len(await _blob_keys_of(files, kept)) == 1


# -- images ---------------------------------------------------------------------------------


async def test_an_image_gets_a_small_thumbnail_without_its_location(files: Files) -> None:
    tenant = await files.tenant()
    photo = _jpeg_with_gps()
    stored = await _upload(files, tenant, photo, filename="beach.jpg", content_type="image/jpeg")
    assert stored.content_type == "image/jpeg"
    assert stored.HasField("thumbnail")
    assert max(stored.thumbnail.width, stored.thumbnail.height) == 256
    _, small = await _download(files, tenant, stored.id, thumbnail=True)
    assert len(small) == stored.thumbnail.size_bytes
    image = Image.open(io.BytesIO(small))
    assert image.size == (stored.thumbnail.width, stored.thumbnail.height)
    assert not image.getexif() and b"KeelCam" not in small
    _, original = await _download(files, tenant, stored.id)
    assert original == photo  # the file itself is stored as sent


async def test_a_file_that_is_not_an_image_has_no_thumbnail(files: Files) -> None:
    tenant = await files.tenant()
    stored = await _upload(files, tenant, b"just text\n")
    assert not stored.HasField("thumbnail")
    error = await rpc_error(_download(files, tenant, stored.id, thumbnail=True))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_an_image_bomb_is_refused_without_being_decoded(files: Files) -> None:
    tenant = await files.tenant()
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, "PNG")  # 400 megapixels in a few KB
    error = await rpc_error(
        files.stub.UploadFile(
            _requests(bomb.getvalue(), filename="bomb.png", content_type="image/png"),
            metadata=tenant.md,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _listed(files, tenant) == []
    assert await _blob_keys_of(files, tenant) == []


# -- health -----------------------------------------------------------------------------------


async def test_the_service_is_serving_only_while_its_blob_store_answers(
    sqlite_url: str, tmp_path: Path, moto_endpoint: str, aws_env: None
) -> None:
    bucket = f"keel-{uuid.uuid4().hex}"
    storage = FileSettings(
        http_addr=Address("127.0.0.1", 0), s3_endpoint_url=moto_endpoint, s3_bucket=bucket
    )
    async with running_keel(sqlite_url, tmp_path, files=storage) as keel:
        built = file_server.build(keel.runtime)
        server = KeelServer(
            keel.runtime, [built.spec], authenticator=keel.authenticator, health_interval=0.05
        )
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service=file_server.SERVICE_NAME)
        try:
            answer = await health.Check(check)
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING  # no bucket
            await _create_bucket(moto_endpoint, bucket)
            watch = health.Watch(check)
            async for update in watch:  # the monitor notices within its interval
                if update.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            watch.cancel()
        finally:
            await channel.close()
            await server.stop(1)


async def test_download_urls_can_be_presigned_by_s3(
    sqlite_url: str, tmp_path: Path, moto_endpoint: str, aws_env: None
) -> None:
    bucket = f"keel-{uuid.uuid4().hex}"
    await _create_bucket(moto_endpoint, bucket)
    storage = FileSettings(
        http_addr=Address("127.0.0.1", 0),
        s3_endpoint_url=moto_endpoint,
        s3_bucket=bucket,
        s3_presigned_downloads=True,
    )
    async with running_keel(sqlite_url, tmp_path, files=storage) as keel:
        built = file_server.build(keel.runtime)
        server = KeelServer(keel.runtime, [built.spec], authenticator=keel.authenticator)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stub = files_pb2_grpc.FileServiceStub(channel)
        tenant = await keel.tenant("upload:*")
        try:
            page = b"<!doctype html><title>hi</title>"
            stored = (
                await stub.UploadFile(
                    _requests(page, filename="page.html", content_type="text/html"),
                    metadata=tenant.md,
                )
            ).file
            answer = await stub.CreateDownloadUrl(
                pb.CreateDownloadUrlRequest(id=stored.id), metadata=tenant.md
            )
        finally:
            await channel.close()
            await server.stop(1)
    assert answer.url.startswith(f"{moto_endpoint}/{bucket}/{tenant.id}/")
    async with aiohttp.ClientSession() as http, http.get(answer.url) as fetched:
        assert fetched.status == 200 and await fetched.read() == page
        assert fetched.headers["Content-Type"] == "text/html"
        assert fetched.headers["Content-Disposition"].startswith("attachment;")  # never inline
