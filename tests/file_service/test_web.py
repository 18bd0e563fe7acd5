"""The file service's HTTP face over a real server: tus uploads (and tus-js-client in
Node), the upload URL's PUT, signed downloads, auth and CORS.

Everything runs against the real FileService, SqlFileStore on SQLite and a local blob
store; the tus round trips run on S3 (moto's server) too. The service's clock is one the
tests move, to expire uploads and download tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from file_service.models import FileLimits, FileState, StoredFile
from file_service.service import FileService
from file_service.storage import BlobStore, LocalBlobStore
from file_service.store import SqlFileStore
from file_service.urls import download_token, download_url, upload_token, upload_url
from file_service.web.errors import TusHeaderError
from file_service.web.http_download import RangeNotSatisfiable, content_disposition, parse_range
from file_service.web.tus import parse_creation, parse_metadata
from service_kit.config import load_settings
from service_kit.db import create_engine, migrate
from tests.conftest import ROOT
from tests.file_service.conftest import Backend
from tests.file_service.test_service import FailingFinalWrites, stored_blobs
from tests.file_service.web_fixtures import (
    OFFSET_STREAM,
    TUS,
    URL_SECRET,
    FileServer,
    MovableClock,
    file_server,
    metadata,
    new_tenant,
    send_cut_request,
    sha256_header,
)

LIMITS = FileLimits(max_file_bytes=4 << 20, max_tenant_bytes=64 << 20, max_tenant_files=1_000)
NODE_TIMEOUT = 60.0
# How long the server may take to finish a request whose client has gone.
SETTLE_TIMEOUT = 10.0


@pytest.fixture(scope="module")
async def files_engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite:///{tmp_path_factory.mktemp('files-web') / 'keel.db'}"
    engine = create_engine(load_settings({"DATABASE_URL": url}).database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def local_blobs(tmp_path: Path) -> BlobStore:
    return LocalBlobStore(tmp_path / "files")


@pytest.fixture
async def server(files_engine: AsyncEngine, local_blobs: BlobStore) -> AsyncIterator[FileServer]:
    async with file_server(files_engine, local_blobs, limits=LIMITS, clock=MovableClock()) as s:
        yield s


@pytest.fixture
async def any_server(files_engine: AsyncEngine, backend: Backend) -> AsyncIterator[FileServer]:
    """The server on each blob store of conftest's ``backend``: local, then S3."""
    async with file_server(files_engine, backend.store, limits=LIMITS, clock=MovableClock()) as s:
        yield s


def patch_headers(server: FileServer, tenant: str, user: str, offset: int) -> dict[str, str]:
    return {
        **TUS,
        **server.bearer(tenant, user),
        "Content-Type": OFFSET_STREAM,
        "Upload-Offset": str(offset),
    }


async def head_offset(server: FileServer, url: str, headers: dict[str, str]) -> int:
    async with server.http.head(url, headers={**TUS, **headers}) as response:
        assert response.status == 200
        return int(response.headers["Upload-Offset"])


async def patch_as(
    server: FileServer, url: str, tenant: str, user: str, offset: int, body: bytes
) -> int:
    """The status answering a PATCH of ``body`` at ``offset`` with the user's client token."""
    headers = patch_headers(server, tenant, user, offset)
    return await status_of(server, "PATCH", url, headers=headers, data=body)


async def status_of(server: FileServer, method: str, url: str, **request: Any) -> int:
    """The status answering one request (its body read and dropped)."""
    async with server.http.request(method, url, **request) as response:
        await response.read()
        return response.status


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


# -- tus: discovery, creation, offsets, completion ---------------------------------------


async def test_options_says_what_the_server_speaks_without_credentials(server: FileServer) -> None:
    async with server.http.options(f"{server.base_url}/files/tus") as response:
        assert response.status == 204
        assert response.headers["Tus-Version"] == "1.0.0"
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert set(response.headers["Tus-Extension"].split(",")) == {
            "creation",
            "creation-with-upload",
            "termination",
            "checksum",
            "expiration",
        }
        assert response.headers["Tus-Checksum-Algorithm"] == "sha256"
        assert response.headers["Tus-Max-Size"] == str(LIMITS.max_file_bytes)


async def test_an_upload_in_several_patches_becomes_ready_with_its_sha256(
    any_server: FileServer,
) -> None:
    server, tenant = any_server, new_tenant()
    body = os.urandom(300_000)
    headers = {
        **TUS,
        **server.bearer(tenant, "alice"),
        "Upload-Length": str(len(body)),
        "Upload-Metadata": metadata(filename="holiday.bin", filetype="text/plain", album="x"),
    }
    async with server.http.post(f"{server.base_url}/files/tus", headers=headers) as response:
        assert response.status == 201
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert "GMT" in response.headers["Upload-Expires"]
        url = server.base_url + response.headers["Location"]
    async with server.http.head(url, headers={**TUS, **server.bearer(tenant, "alice")}) as head:
        assert head.status == 200
        assert head.headers["Upload-Offset"] == "0"
        assert head.headers["Upload-Length"] == str(len(body))
        assert head.headers["Cache-Control"] == "no-store"
        assert "Upload-Expires" in head.headers

    for start in range(0, len(body), 100_000):
        piece = body[start : start + 100_000]
        async with server.http.patch(
            url, headers=patch_headers(server, tenant, "alice", start), data=piece
        ) as response:
            assert response.status == 204, await response.text()
            assert response.headers["Upload-Offset"] == str(start + len(piece))

    file = await server.service.get_file(tenant, url.rsplit("/", 1)[1])
    assert file.state is FileState.READY
    assert file.sha256 == hashlib.sha256(body).hexdigest()
    assert (file.filename, file.user_id, file.metadata) == ("holiday.bin", "alice", {"album": "x"})
    # The type is sniffed from the bytes, not taken from the metadata.
    assert file.content_type == "application/octet-stream"


async def test_creation_with_upload_stores_the_bodys_bytes(server: FileServer) -> None:
    tenant = new_tenant()
    body = os.urandom(5000)
    headers = {
        **TUS,
        **server.bearer(tenant, "alice"),
        "Upload-Length": str(len(body)),
        "Upload-Metadata": metadata(filename="first.bin"),
        "Content-Type": OFFSET_STREAM,
    }
    async with server.http.post(
        f"{server.base_url}/files/tus", headers=headers, data=body[:2000]
    ) as response:
        assert response.status == 201
        assert response.headers["Upload-Offset"] == "2000"
        url = server.base_url + response.headers["Location"]
    assert await head_offset(server, url, server.bearer(tenant, "alice")) == 2000


async def test_a_patch_with_the_right_checksum_is_kept_and_a_wrong_one_is_460_keeping_nothing(
    server: FileServer,
) -> None:
    tenant = new_tenant()
    body = os.urandom(4000)
    url, _ = await server.create(tenant, "alice", len(body))
    wrong = {**patch_headers(server, tenant, "alice", 0), "Upload-Checksum": sha256_header(b"x")}
    assert await status_of(server, "PATCH", url, headers=wrong, data=body[:1000]) == 460
    assert await head_offset(server, url, server.bearer(tenant, "alice")) == 0

    right = {
        **patch_headers(server, tenant, "alice", 0),
        "Upload-Checksum": sha256_header(body[:1000]),
    }
    async with server.http.patch(url, headers=right, data=body[:1000]) as response:
        assert response.status == 204
        assert response.headers["Upload-Offset"] == "1000"


async def test_an_expired_upload_is_410(server: FileServer) -> None:
    tenant = new_tenant()
    url, file_id = await server.create(tenant, "alice", 100)
    file = await server.service.get_file(tenant, file_id)
    token = upload_token(URL_SECRET, file)
    assert file.expire_time is not None
    server.clock.advance(file.expire_time - server.clock() + timedelta(seconds=1))

    async with server.http.head(url, headers={**TUS, **server.bearer(tenant, "alice")}) as head:
        assert head.status == 410
        assert "Upload-Offset" not in head.headers
    assert await patch_as(server, url, tenant, "alice", 0, b"x" * 100) == 410
    # The upload token expires with the upload: it is told the same.
    assert await status_of(server, "HEAD", url, headers={**TUS, "Upload-Token": token}) == 410


async def test_an_upload_past_the_tenants_quota_is_413_and_nothing_is_created(
    files_engine: AsyncEngine, local_blobs: BlobStore
) -> None:
    tight = FileLimits(max_file_bytes=4000, max_tenant_bytes=5000, max_tenant_files=10)
    async with file_server(files_engine, local_blobs, limits=tight, clock=MovableClock()) as server:
        tenant = new_tenant()
        await server.create(tenant, "alice", 4000)
        headers = {
            **TUS,
            **server.bearer(tenant, "alice"),
            "Upload-Length": "2000",
            "Upload-Metadata": metadata(filename="more.bin"),
        }
        async with server.http.post(f"{server.base_url}/files/tus", headers=headers) as response:
            assert response.status == 413
            assert "limit of 5000" in await response.text()
        assert len(await server.service.list_files(tenant, user_id=None, after=None, limit=10)) == 1


@pytest.mark.parametrize(
    ("change", "body", "status"),
    [
        ({"Upload-Offset": "10"}, b"x" * 10, 409),
        ({"Tus-Resumable": None}, b"x" * 10, 412),
        ({"Tus-Resumable": "0.2.2"}, b"x" * 10, 412),
        ({"Content-Type": "application/octet-stream"}, b"x" * 10, 415),
        ({}, b"x" * 101, 413),
        ({"Upload-Checksum": "md5 eQ=="}, b"x" * 10, 400),
        ({"Upload-Offset": "-1"}, b"x" * 10, 400),
    ],
    ids=["offset", "no-tus", "old-tus", "content-type", "past-length", "md5", "bad-offset"],
)
async def test_a_refused_patch_stores_nothing(
    server: FileServer, change: dict[str, str | None], body: bytes, status: int
) -> None:
    tenant = new_tenant()
    url, _ = await server.create(tenant, "alice", 100)
    headers = {**patch_headers(server, tenant, "alice", 0), **change}
    sent = {name: value for name, value in headers.items() if value is not None}
    assert await status_of(server, "PATCH", url, headers=sent, data=body) == status
    assert await head_offset(server, url, server.bearer(tenant, "alice")) == 0


async def test_a_tus_request_without_tus_resumable_1_0_0_is_412_naming_the_version(
    server: FileServer,
) -> None:
    tenant = new_tenant()
    url, _ = await server.create(tenant, "alice", 100)
    async with server.http.head(url, headers=server.bearer(tenant, "alice")) as response:
        assert response.status == 412
        assert response.headers["Tus-Version"] == "1.0.0"


async def test_an_upload_longer_than_the_maximum_is_413(server: FileServer) -> None:
    headers = {
        **TUS,
        **server.bearer(new_tenant(), "alice"),
        "Upload-Length": str(LIMITS.max_file_bytes + 1),
    }
    assert await status_of(server, "POST", f"{server.base_url}/files/tus", headers=headers) == 413


async def test_termination_removes_the_upload(server: FileServer) -> None:
    tenant = new_tenant()
    url, file_id = await server.create(tenant, "alice", 100)
    assert await patch_as(server, url, tenant, "alice", 0, b"x" * 40) == 204
    assert (
        await status_of(server, "DELETE", url, headers={**TUS, **server.bearer(tenant, "alice")})
        == 204
    )
    assert (await server.service.get_file(tenant, file_id)).state is FileState.DELETED
    assert (
        await status_of(server, "HEAD", url, headers={**TUS, **server.bearer(tenant, "alice")})
        == 410
    )


async def test_x_http_method_override_turns_a_post_into_patch_or_delete(
    server: FileServer,
) -> None:
    tenant = new_tenant()
    url, file_id = await server.create(tenant, "alice", 100)
    as_patch = {**patch_headers(server, tenant, "alice", 0), "X-HTTP-Method-Override": "PATCH"}
    async with server.http.post(url, headers=as_patch, data=b"x" * 30) as response:
        assert response.status == 204
        assert response.headers["Upload-Offset"] == "30"
    as_delete = {**TUS, **server.bearer(tenant, "alice"), "X-HTTP-Method-Override": "DELETE"}
    assert await status_of(server, "POST", url, headers=as_delete) == 204
    assert (await server.service.get_file(tenant, file_id)).state is FileState.DELETED


async def test_a_patch_cut_mid_body_keeps_what_arrived_and_the_upload_completes_from_there(
    server: FileServer,
) -> None:
    tenant = new_tenant()
    body = os.urandom(200_000)
    url, file_id = await server.create(tenant, "alice", len(body))
    headers = {**patch_headers(server, tenant, "alice", 0), "Content-Length": str(len(body))}
    await send_cut_request(
        server.base_url, "PATCH", f"/files/tus/{file_id}", headers, body[:80_000]
    )

    # The server finishes the cut request on its own; then HEAD shows what arrived.
    async with asyncio.timeout(SETTLE_TIMEOUT):
        await server.service.appended(1)
    offset = await head_offset(server, url, server.bearer(tenant, "alice"))
    assert offset == 80_000

    assert await patch_as(server, url, tenant, "alice", offset, body[offset:]) == 204
    file = await server.service.get_file(tenant, file_id)
    assert (file.state, file.sha256) == (FileState.READY, hashlib.sha256(body).hexdigest())


async def test_tus_js_client_resumes_an_aborted_upload_to_a_ready_file(
    any_server: FileServer, tmp_path: Path
) -> None:
    server, tenant = any_server, new_tenant()
    body = os.urandom(1_000_000)
    path = tmp_path / "video.bin"
    path.write_bytes(body)
    process = await asyncio.create_subprocess_exec(
        "node",
        str(ROOT / "tests" / "file_service" / "tus_upload.mjs"),
        f"{server.base_url}/files/tus",
        server.client_token(tenant, "alice"),
        str(path),
        str(64 * 1024),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(NODE_TIMEOUT):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout)

    assert seen["upload_url"].startswith(f"{server.base_url}/files/tus/")
    assert seen["acknowledged_at_abort"] < len(body), "the upload was not broken off"
    assert 0 < seen["resume_offset"] < len(body)
    assert seen["resume_offset"] >= seen["acknowledged_at_abort"]
    assert seen["patches"] > 2
    file = await server.service.get_file(tenant, seen["upload_url"].rsplit("/", 1)[1])
    assert (file.state, file.size) == (FileState.READY, len(body))
    assert file.sha256 == hashlib.sha256(body).hexdigest()


# -- a PATCH continuing this process's last one: the upload as it was left -----------------


@pytest.fixture
def other_process(
    files_engine: AsyncEngine, local_blobs: BlobStore, server: FileServer
) -> FileService:
    """Another file-service process on the same database and disk (it shares nothing in
    memory with the server's)."""
    return FileService(SqlFileStore(files_engine), local_blobs, LIMITS, clock=server.clock)


async def test_a_patch_continuing_this_processs_last_one_does_not_read_the_upload_first(
    server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, body = new_tenant(), os.urandom(300)
    url, file_id = await server.create(tenant, "alice", len(body))
    reads: list[str] = []
    get_file = server.service.get_file

    async def counted(tenant_id: str, file_id: str) -> StoredFile:
        reads.append(file_id)
        return await get_file(tenant_id, file_id)

    monkeypatch.setattr(server.service, "get_file", counted)
    assert await patch_as(server, url, tenant, "alice", 0, body[:100]) == 204
    assert reads == [file_id]
    assert await patch_as(server, url, tenant, "alice", 100, body[100:200]) == 204
    assert await patch_as(server, url, tenant, "alice", 200, body[200:]) == 204
    assert reads == [file_id]
    ready = await get_file(tenant, file_id)
    assert ready.state is FileState.READY and ready.sha256 == hashlib.sha256(body).hexdigest()


async def test_a_patch_after_another_process_terminated_the_upload_is_410_and_keeps_nothing(
    server: FileServer, other_process: FileService, local_blobs: LocalBlobStore
) -> None:
    tenant = new_tenant()
    url, file_id = await server.create(tenant, "alice", 100)
    assert await patch_as(server, url, tenant, "alice", 0, b"x" * 40) == 204
    await other_process.terminate(tenant, file_id)
    assert await patch_as(server, url, tenant, "alice", 40, b"y" * 30) == 410
    assert stored_blobs(local_blobs, tenant) == []
    assert (await server.service.get_file(tenant, file_id)).state is FileState.DELETED


async def test_a_patch_after_another_process_moved_the_upload_is_409_with_its_offset(
    server: FileServer, other_process: FileService
) -> None:
    tenant, body = new_tenant(), os.urandom(100)
    url, file_id = await server.create(tenant, "alice", len(body))
    auth = server.bearer(tenant, "alice")
    assert await patch_as(server, url, tenant, "alice", 0, body[:40]) == 204
    await other_process.append(tenant, file_id, 40, one_chunk(body[40:70]))
    assert await patch_as(server, url, tenant, "alice", 40, b"z" * 30) == 409
    assert await head_offset(server, url, auth) == 70
    assert await patch_as(server, url, tenant, "alice", 70, body[70:]) == 204
    ready = await server.service.get_file(tenant, file_id)
    assert ready.state is FileState.READY and ready.sha256 == hashlib.sha256(body).hexdigest()


async def test_another_user_cannot_continue_an_upload_its_owner_just_moved(
    server: FileServer,
) -> None:
    tenant = new_tenant()
    url, file_id = await server.create(tenant, "alice", 100)
    assert await patch_as(server, url, tenant, "alice", 0, b"x" * 40) == 204
    assert await patch_as(server, url, tenant, "bob", 40, b"y" * 30) == 403
    assert await patch_as(server, url, tenant, new_tenant(), 40, b"y" * 30) == 403
    assert await patch_as(server, url, new_tenant(), "alice", 40, b"y" * 30) == 404
    assert (await server.service.get_file(tenant, file_id)).upload_offset == 40
    assert await patch_as(server, url, tenant, "alice", 40, b"y" * 60) == 204


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_another_tenant_cannot_continue_an_upload_its_owner_just_moved(
    server: FileServer,
) -> None:
    """The upload this process kept is its tenant's: a request of another tenant (the same
    user name, the same upload URL) reads its own tenant's files and finds none."""
    tenant = new_tenant()
    url, file_id = await server.create(tenant, "alice", 100)
    assert await patch_as(server, url, tenant, "alice", 0, b"x" * 40) == 204
    assert await patch_as(server, url, new_tenant(), "alice", 40, b"y" * 30) == 404
    assert (await server.service.get_file(tenant, file_id)).upload_offset == 40


async def test_a_patch_at_the_offset_another_process_moved_the_upload_to_is_taken(
    server: FileServer, other_process: FileService
) -> None:
    """What this process kept is for the offset it left the upload at: a PATCH at the
    offset another process moved it to is not refused with the offset kept here."""
    tenant, body = new_tenant(), os.urandom(100)
    url, file_id = await server.create(tenant, "alice", len(body))
    assert await patch_as(server, url, tenant, "alice", 0, body[:40]) == 204
    await other_process.append(tenant, file_id, 40, one_chunk(body[40:70]))
    assert await patch_as(server, url, tenant, "alice", 70, body[70:]) == 204
    ready = await server.service.get_file(tenant, file_id)
    assert ready.state is FileState.READY and ready.sha256 == hashlib.sha256(body).hexdigest()


async def test_a_patch_after_another_process_completed_the_upload_is_409_with_its_size(
    server: FileServer, other_process: FileService
) -> None:
    tenant, body = new_tenant(), os.urandom(100)
    url, file_id = await server.create(tenant, "alice", len(body))
    assert await patch_as(server, url, tenant, "alice", 0, body[:40]) == 204
    await other_process.append(tenant, file_id, 40, one_chunk(body[40:]))
    headers = patch_headers(server, tenant, "alice", 40)
    async with server.http.patch(url, headers=headers, data=b"z" * 60) as response:
        assert response.status == 409
        assert "at offset 100" in await response.text()
    ready = await server.service.get_file(tenant, file_id)
    assert ready.state is FileState.READY and ready.sha256 == hashlib.sha256(body).hexdigest()


# -- who may touch an upload ------------------------------------------------------------


async def test_requests_without_a_valid_token_are_401_and_touch_nothing(
    server: FileServer,
) -> None:
    tenant = new_tenant()
    url, _ = await server.create(tenant, "alice", 100)
    creation = {**TUS, "Upload-Length": "10"}
    async with server.http.post(f"{server.base_url}/files/tus", headers=creation) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    no_token = {**patch_headers(server, tenant, "alice", 0)}
    del no_token["Authorization"]
    assert await status_of(server, "PATCH", url, headers=no_token, data=b"x" * 10) == 401
    forged = server.client_token(tenant, "alice")[:-4] + "AAAA"
    bad = {**patch_headers(server, tenant, "alice", 0), "Authorization": f"Bearer {forged}"}
    assert await status_of(server, "PATCH", url, headers=bad, data=b"x" * 10) == 401
    assert await head_offset(server, url, server.bearer(tenant, "alice")) == 0


async def test_another_users_token_is_403_and_another_tenants_is_404(server: FileServer) -> None:
    tenant = new_tenant()
    url, _ = await server.create(tenant, "alice", 100)
    assert await patch_as(server, url, tenant, "bob", 0, b"x" * 10) == 403
    assert (
        await status_of(server, "HEAD", url, headers={**TUS, **server.bearer(tenant, "bob")}) == 403
    )
    async with server.http.patch(
        url, headers=patch_headers(server, new_tenant(), "alice", 0), data=b"x" * 10
    ) as response:
        assert response.status == 404
    assert await head_offset(server, url, server.bearer(tenant, "alice")) == 0


async def test_an_upload_token_opens_its_own_upload_and_no_other(server: FileServer) -> None:
    tenant = new_tenant()
    url, file_id = await server.create(tenant, "alice", 100)
    other_url, other_id = await server.create(tenant, "alice", 100)
    token = upload_token(URL_SECRET, await server.service.get_file(tenant, file_id))
    by_header = {**TUS, "Content-Type": OFFSET_STREAM, "Upload-Token": token}
    by_bearer = {**TUS, "Content-Type": OFFSET_STREAM, "Authorization": f"Bearer {token}"}

    assert (
        await status_of(
            server, "PATCH", url, headers={**by_header, "Upload-Offset": "0"}, data=b"x" * 10
        )
        == 204
    )
    assert (
        await status_of(
            server, "PATCH", url, headers={**by_bearer, "Upload-Offset": "10"}, data=b"x" * 10
        )
        == 204
    )
    assert (
        await status_of(
            server, "PATCH", other_url, headers={**by_header, "Upload-Offset": "0"}, data=b"x" * 10
        )
        == 403
    )

    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    for headers in ({"Upload-Token": tampered}, {"Authorization": f"Bearer {tampered}"}):
        assert (
            await status_of(
                server,
                "PATCH",
                url,
                headers={**TUS, "Content-Type": OFFSET_STREAM, "Upload-Offset": "20", **headers},
                data=b"x" * 10,
            )
            == 403
        )
    assert await head_offset(server, url, {"Upload-Token": token}) == 20
    assert await head_offset(server, other_url, server.bearer(tenant, "alice")) == 0
    assert other_id != file_id


# -- the upload URL's PUT -----------------------------------------------------------------


async def test_put_on_the_upload_url_stores_the_whole_file(server: FileServer) -> None:
    tenant = new_tenant()
    body = os.urandom(70_000)
    file = await server.service.create_upload(
        tenant,
        user_id="alice",
        filename="report.bin",
        content_type="application/octet-stream",
        size=len(body),
        metadata={},
    )
    url = upload_url(server.base_url, file.id)
    headers = {"Upload-Token": upload_token(URL_SECRET, file)}
    assert await status_of(server, "PUT", url, headers=headers, data=body[:-1]) == 400
    assert await status_of(server, "PUT", url, headers=headers, data=body + b"x") == 413
    async with server.http.put(url, headers=headers, data=body) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["id"] == file.id
    assert answer["state"] == "ready"
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()


async def test_put_after_part_of_a_tus_upload_is_409(server: FileServer) -> None:
    tenant = new_tenant()
    url, _ = await server.create(tenant, "alice", 100)
    assert await patch_as(server, url, tenant, "alice", 0, b"x" * 10) == 204
    assert (
        await status_of(server, "PUT", url, headers=server.bearer(tenant, "alice"), data=b"y" * 100)
        == 409
    )


# -- signed downloads ---------------------------------------------------------------------


def link(server: FileServer, file: StoredFile, *, variant: str = "file", ttl: int = 600) -> str:
    token = download_token(
        URL_SECRET,
        file.tenant_id,
        file.id,
        variant="thumbnail" if variant == "thumbnail" else "file",
        expires_at=server.clock() + timedelta(seconds=ttl),
    )
    return download_url(server.base_url, token, file.filename)


async def test_a_download_serves_the_bytes_with_safe_headers(server: FileServer) -> None:
    body = os.urandom(150_000)
    file = await server.upload(new_tenant(), "alice", body, filename="data.bin")
    url = link(server, file, ttl=600)
    async with server.http.get(url) as response:
        assert response.status == 200
        assert await response.read() == body
        headers = response.headers
    assert headers["Content-Length"] == str(len(body))
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"] == f'"{file.sha256}"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert headers["Content-Disposition"].startswith("attachment;")
    assert headers["Cache-Control"] == "private, max-age=600"

    async with server.http.head(url) as head:
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(body))
        assert await head.read() == b""


async def test_a_range_is_206_and_a_range_past_the_end_is_416(server: FileServer) -> None:
    body = os.urandom(10_000)
    file = await server.upload(new_tenant(), "alice", body)
    url = link(server, file)
    cases = {"bytes=100-199": body[100:200], "bytes=-50": body[-50:], "bytes=9990-": body[9990:]}
    for header, expected in cases.items():
        async with server.http.get(url, headers={"Range": header}) as response:
            assert response.status == 206
            assert await response.read() == expected
            start = len(body) - len(expected) if header != "bytes=100-199" else 100
            assert response.headers["Content-Range"] == (
                f"bytes {start}-{start + len(expected) - 1}/{len(body)}"
            )
    async with server.http.get(url, headers={"Range": "bytes=10000-"}) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == "bytes */10000"
        assert await response.read() == b""
    stale = {"Range": "bytes=0-9", "If-Range": '"another-version"'}
    async with server.http.get(url, headers=stale) as response:
        assert response.status == 200
        assert await response.read() == body


async def test_html_downloads_as_an_attachment_and_png_inline_with_its_thumbnail(
    server: FileServer,
) -> None:
    tenant = new_tenant()
    html = await server.upload(
        tenant, "alice", b"<html><script>alert(1)</script></html>", filename='page "1".html'
    )
    async with server.http.get(link(server, html)) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.headers["Content-Disposition"] == (
            "attachment; filename=\"page _1_.html\"; filename*=UTF-8''page%20%221%22.html"
        )
    image = await server.upload(tenant, "alice", png(), filename='Ünï "pic";1.png')
    async with server.http.get(link(server, image)) as response:
        assert response.headers["Content-Type"] == "image/png"
        assert response.headers["Content-Disposition"] == (
            'inline; filename="_n_ _pic_;1.png"; '
            "filename*=UTF-8''%C3%9Cn%C3%AF%20%22pic%22%3B1.png"
        )
    async with server.http.get(link(server, image, variant="thumbnail")) as response:
        assert response.status == 200
        assert response.headers["Content-Disposition"].startswith("inline;")
        thumbnail = Image.open(io.BytesIO(await response.read()))
        assert thumbnail.size[0] <= 256


async def test_a_tampered_or_expired_download_token_is_403_with_nothing_served(
    server: FileServer,
) -> None:
    file = await server.upload(new_tenant(), "alice", b"secret bytes" * 100)
    url = link(server, file, ttl=60)
    token = url.split("/")[-2]
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    async with server.http.get(url.replace(token, tampered)) as response:
        assert response.status == 403
        assert b"secret" not in await response.read()

    server.clock.advance(timedelta(seconds=61))
    async with server.http.get(url) as response:
        assert response.status == 403
        assert b"secret" not in await response.read()


async def test_a_download_tokens_tenant_and_file_cannot_be_changed(server: FileServer) -> None:
    mine = await server.upload(new_tenant(), "alice", b"mine" * 100)
    theirs = await server.upload(new_tenant(), "mallory", b"theirs" * 100)
    # The same claims signed with a key that is not the server's: refused.
    forged = download_token(
        "not-the-server-secret-0123456789abcdef",
        theirs.tenant_id,
        theirs.id,
        variant="file",
        expires_at=server.clock() + timedelta(minutes=5),
    )
    assert await status_of(server, "GET", download_url(server.base_url, forged, "x")) == 403
    # A real token's signature on other claims: refused.
    real = link(server, mine).split("/")[-2]
    other = link(server, theirs).split("/")[-2]
    for spliced in _splices(real, other):
        assert await status_of(server, "GET", download_url(server.base_url, spliced, "x")) == 403


def _splices(real: str, other: str) -> list[str]:
    """``other``'s claims with ``real``'s signature, however the token is cut in two."""
    cut = real.rfind(".")
    if cut == -1:
        return [other[: len(other) // 2] + real[len(real) // 2 :]]
    return [other[: other.rfind(".")] + real[cut:]]


async def test_a_deleted_files_link_is_410(server: FileServer) -> None:
    file = await server.upload(new_tenant(), "alice", b"soon gone")
    url = link(server, file)
    await server.service.delete_file(file.tenant_id, file.id)
    assert (
        await status_of(
            server,
            "GET",
            url,
        )
        == 410
    )


# -- CORS and probes -----------------------------------------------------------------------


async def test_every_answer_carries_cors_headers_for_a_browser(server: FileServer) -> None:
    origin = {"Origin": "https://app.example"}
    preflight = {
        **origin,
        "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "upload-offset, tus-resumable, content-type",
    }
    async with server.http.options(f"{server.base_url}/files/tus/anything", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "PATCH" in r.headers["Access-Control-Allow-Methods"]
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "upload-offset", "upload-token", "range"} <= allowed
    async with server.http.head(
        f"{server.base_url}/files/tus/{quote('nope')}",
        headers={**origin, **TUS, **server.bearer(new_tenant(), "alice")},
    ) as response:
        assert response.status == 404
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Upload-Offset" in response.headers["Access-Control-Expose-Headers"]


async def test_only_listed_origins_are_allowed(
    files_engine: AsyncEngine, local_blobs: BlobStore
) -> None:
    async with file_server(
        files_engine,
        local_blobs,
        limits=LIMITS,
        clock=MovableClock(),
        cors_origins=("https://app.example",),
    ) as server:
        url = f"{server.base_url}/files/tus"
        async with server.http.options(url, headers={"Origin": "https://app.example"}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert r.headers["Vary"] == "Origin"
        async with server.http.options(url, headers={"Origin": "https://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_health_answers_ok(server: FileServer) -> None:
    async with server.http.get(f"{server.base_url}/files/health") as response:
        assert (response.status, await response.text()) == (200, "ok")


def test_a_stored_name_cannot_break_out_of_content_disposition() -> None:
    header = content_disposition('a"\r\nSet-Cookie: x=1;\\b.html', inline=False)
    assert "\r" not in header and "\n" not in header
    assert header == (
        'attachment; filename="a_Set-Cookie: x=1;_b.html"; '
        "filename*=UTF-8''a%22Set-Cookie%3A%20x%3D1%3B%5Cb.html"
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 1)),
        ("bytes=5-", (5, 5)),
        ("bytes=2-100", (2, 8)),
        ("bytes=-3", (7, 3)),
        ("bytes=-30", (0, 10)),
        ("bytes=0-1,4-5", None),  # several ranges: the whole file
        ("bytes=5-2", None),  # invalid: ignored
        ("items=0-1", None),
    ],
)
def test_a_range_header_names_one_range_of_the_file_or_none(
    header: str | None, expected: tuple[int, int] | None
) -> None:
    byte_range = parse_range(header, 10)
    assert (None if byte_range is None else (byte_range.start, byte_range.length)) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=-0", "bytes=12-20"])
def test_a_range_past_the_end_is_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 10)


def test_upload_metadata_pairs_are_base64_values_and_bare_keys() -> None:
    creation = parse_creation("12", "name bXkgZmlsZS50eHQ=,type dGV4dC9wbGFpbg==,is_draft,x eQ==")
    assert (creation.size, creation.filename, creation.content_type) == (
        12,
        "my file.txt",
        "text/plain",
    )
    assert creation.metadata == {"is_draft": "", "x": "y"}
    for bad in ("name !!!", "name eQ==,name eQ==", "bad,key eQ==,"):
        with pytest.raises(TusHeaderError):
            parse_metadata(bad)


async def test_a_head_completes_an_upload_whose_completion_failed(
    files_engine: AsyncEngine, tmp_path: Path
) -> None:
    """Every byte is in but assembling them failed (503): tus clients then see a full
    offset and report success, so the HEAD they send completes the upload."""
    blobs = FailingFinalWrites(tmp_path / "flaky", failures=1)
    async with file_server(files_engine, blobs, limits=LIMITS, clock=MovableClock()) as server:
        tenant, body = new_tenant(), os.urandom(50_000)
        url, file_id = await server.create(tenant, "alice", len(body))
        assert await patch_as(server, url, tenant, "alice", 0, body[:20_000]) == 204
        assert await patch_as(server, url, tenant, "alice", 20_000, body[20_000:]) == 503
        assert (await server.service.get_file(tenant, file_id)).state is FileState.PENDING
        assert await head_offset(server, url, server.bearer(tenant, "alice")) == len(body)
        ready = await server.service.get_file(tenant, file_id)
        assert ready.state is FileState.READY
        assert ready.sha256 == hashlib.sha256(body).hexdigest()


async def test_a_retried_put_of_a_ready_file_answers_the_file(server: FileServer) -> None:
    tenant, body = new_tenant(), b"put once, answer lost"
    _, file_id = await server.create(tenant, "alice", len(body))
    pending = await server.service.get_file(tenant, file_id)
    url = upload_url(server.base_url, file_id)
    headers = {"Authorization": f"Bearer {upload_token(URL_SECRET, pending)}"}
    for _ in range(2):  # the second PUT is the client's retry
        async with server.http.put(url, headers=headers, data=body) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["state"] == "ready"


async def test_a_refused_creation_with_upload_leaves_no_upload_behind(
    server: FileServer,
) -> None:
    tenant, body = new_tenant(), b"checksummed body"
    headers = {
        **TUS,
        **server.bearer(tenant, "alice"),
        "Upload-Length": str(len(body)),
        "Upload-Metadata": metadata(filename="a.txt"),
        "Content-Type": OFFSET_STREAM,
        "Upload-Checksum": sha256_header(b"something else"),
    }
    async with server.http.post(f"{server.base_url}/files/tus", headers=headers, data=body) as r:
        assert r.status == 460
    listed = await server.service.list_files(tenant, user_id=None, after=None, limit=10)
    assert listed == []  # the upload it created is gone, its reservation freed


# -- durability: parts are not synced as they arrive -----------------------------------------


async def test_a_head_reports_only_the_bytes_stored_parts_really_hold(server: FileServer) -> None:
    """Parts are not fsynced as they arrive (a crash of the process loses none of their
    bytes; the file's blob is synced before it is READY). A crash of the machine can cut
    the upload's blob short: HEAD then reports where the intact parts end, the lost bytes
    are sent again, and the file is READY with the right SHA-256."""
    tenant, body = new_tenant(), os.urandom(90_000)
    url, file_id = await server.create(tenant, "alice", len(body))
    for start in (0, 30_000):
        assert (
            await patch_as(server, url, tenant, "alice", start, body[start : start + 30_000]) == 204
        )
    parts = await server.service._store.parts(tenant, file_id)
    assert [p.offset for p in parts] == [0, 30_000]
    # What a machine crash before the second part reached the disk may leave: a short file.
    assert isinstance(server.service._blobs, LocalBlobStore)
    cut = server.service._blobs.root / parts[1].blob_key
    cut.write_bytes(cut.read_bytes()[:31_000])

    bearer = server.bearer(tenant, "alice")
    assert await head_offset(server, url, bearer) == 30_000
    assert [p.offset for p in await server.service._store.parts(tenant, file_id)] == [0]
    assert await patch_as(server, url, tenant, "alice", 60_000, body[60_000:]) == 409
    assert await patch_as(server, url, tenant, "alice", 30_000, body[30_000:]) == 204
    ready = await server.service.get_file(tenant, file_id)
    assert ready.state is FileState.READY
    assert ready.sha256 == hashlib.sha256(body).hexdigest()


async def test_a_lost_part_found_at_completion_sends_the_client_back_to_the_intact_offset(
    server: FileServer,
) -> None:
    """A client that resumes without a HEAD (its PATCH matches the recorded offset) finds
    out at completion: 409, and a HEAD then reports where the intact parts end."""
    tenant, body = new_tenant(), os.urandom(60_000)
    url, file_id = await server.create(tenant, "alice", len(body))
    assert await patch_as(server, url, tenant, "alice", 0, body[:30_000]) == 204
    (part,) = await server.service._store.parts(tenant, file_id)
    assert isinstance(server.service._blobs, LocalBlobStore)
    (server.service._blobs.root / part.blob_key).unlink()

    assert await patch_as(server, url, tenant, "alice", 30_000, body[30_000:]) == 409
    assert await head_offset(server, url, server.bearer(tenant, "alice")) == 0
    assert await patch_as(server, url, tenant, "alice", 0, body) == 204
    ready = await server.service.get_file(tenant, file_id)
    assert ready.state is FileState.READY
    assert ready.sha256 == hashlib.sha256(body).hexdigest()
