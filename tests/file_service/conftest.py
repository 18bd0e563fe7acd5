"""Blob stores to run one suite against: a local directory, and S3 on moto's server mode.

moto's server is a real HTTP S3 endpoint started as a subprocess on a free port, once per
session; each test module gets its own bucket. The S3 store is built by
:func:`file_service.storage.build_blob_store` from settings, with credentials from the
``AWS_*`` variables as in production.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.ports import free_port
from file_service.storage import BlobStore, LocalBlobStore, S3BlobStore, build_blob_store
from file_service.storage.local import TEMP_PREFIX
from service_kit.config import FileSettings

MOTO_START_TIMEOUT = 30.0
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "",
    # Keep the machine's own AWS files out of the tests.
    "AWS_CONFIG_FILE": "/nonexistent/keel-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/keel-test-aws-credentials",
}


@dataclass
class Backend:
    """A store under test, and how to see what it left behind besides blobs."""

    name: str
    store: BlobStore
    #: Temporary files (local) or pending multipart uploads (S3); empty when clean.
    leftovers: Callable[[], Awaitable[list[str]]]


def _wait_until_listening(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + MOTO_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # polling the condition; the deadline bounds the wait
    raise RuntimeError(f"moto_server did not listen on port {port} within {MOTO_START_TIMEOUT}s")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server running as a subprocess for this session."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_listening(process, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _AWS_ENV.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
async def s3_store(moto_endpoint: str, aws_env: None) -> AsyncIterator[S3BlobStore]:
    """An S3 store on a bucket made for this test module."""
    settings = FileSettings(s3_endpoint_url=moto_endpoint, s3_bucket=f"keel-{uuid.uuid4().hex}")
    async with build_blob_store(settings) as store:
        assert isinstance(store, S3BlobStore)
        await store._client.create_bucket(Bucket=store.bucket)
        yield store


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        local = LocalBlobStore(tmp_path / "files")
        return Backend("local", local, _local_leftovers(local.root))
    s3: S3BlobStore = request.getfixturevalue("s3_store")
    return Backend("s3", s3, _s3_leftovers(s3))


def _local_leftovers(root: Path) -> Callable[[], Awaitable[list[str]]]:
    def temp_files() -> list[str]:
        return [str(p) for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]

    async def leftovers() -> list[str]:
        return await asyncio.to_thread(temp_files)

    return leftovers


def _s3_leftovers(store: S3BlobStore) -> Callable[[], Awaitable[list[str]]]:
    async def leftovers() -> list[str]:
        answer: dict[str, Any] = await store._client.list_multipart_uploads(Bucket=store.bucket)
        return [f"{u['Key']} {u['UploadId']}" for u in answer.get("Uploads", [])]

    return leftovers
