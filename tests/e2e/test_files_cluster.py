"""Two ``keel serve file-service`` processes on one PostgreSQL and one S3 bucket (moto's
server), as a cluster runs them behind a load balancer with no stickiness: a tus upload
whose PATCHes alternate between them, a stream stored by one and read by the other, URLs
signed by one and served by the other, and a process killed with ``kill -9`` mid-upload
whose upload goes on at the other from the last acknowledged offset. On the local backend,
whose upload parts are not fsynced as they arrive: a process killed with ``kill -9``
between PATCHes, restarted, resumes its upload from the offset it acknowledged, and the
file is whole.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import boto3
import grpc
import pytest
from keel.files.v1 import files_pb2 as pb
from keel.files.v1 import files_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from service_kit.client_tokens import ClientTokens
from tests.conftest import ADMIN_TOKEN, unique
from tests.e2e.conftest import CLUSTER_TOKEN_SECRET, KeelProcess, PgCluster, bearer, client_metadata
from tests.file_service.conftest import moto_endpoint  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e

MiB = 1 << 20
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": ""}


@dataclass
class FileCluster:
    cluster: PgCluster
    a: KeelProcess
    b: KeelProcess
    md: tuple[tuple[str, str], ...]
    tenant_id: str

    @contextmanager
    def stub(self, process: KeelProcess) -> Iterator[files_pb2_grpc.FileServiceStub]:
        with grpc.insecure_channel(process.addr) as channel:
            yield files_pb2_grpc.FileServiceStub(channel)


@pytest.fixture(scope="module")
def files(pg_cluster, moto_endpoint: str) -> FileCluster:  # type: ignore[no-untyped-def]  # noqa: F811
    bucket = f"keel-{uuid.uuid4().hex}"
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_endpoint, **_boto(AWS))
    s3.create_bucket(Bucket=bucket)
    cluster: PgCluster = pg_cluster(
        "files", KEEL_S3_ENDPOINT_URL=moto_endpoint, KEEL_S3_BUCKET=bucket, **AWS
    )
    a, b = cluster.start("file-service"), cluster.start("file-service")
    md, tenant_id = _new_tenant(cluster)
    return FileCluster(cluster, a, b, md, tenant_id)


def _new_tenant(cluster: PgCluster) -> tuple[tuple[tuple[str, str], ...], str]:
    """A tenant with ``upload:*``: its gRPC metadata and its id."""
    with grpc.insecure_channel(cluster.tenant_service.addr) as channel:
        created = tenants_pb2_grpc.TenantServiceStub(channel).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(name=unique("files"), permissions=["upload:*"])
            ),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )
    md = tuple(client_metadata(created.tenant.client_id, created.client_secret))
    return md, created.tenant.id


def _boto(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }


def _request(
    process: KeelProcess, method: str, path: str, body: bytes = b"", **headers: str
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request to ``process``'s HTTP endpoints (``Upload_Offset=`` is ``Upload-Offset:``);
    the answer and its body, the connection closed."""
    host, port = process.env["KEEL_FILES_HTTP_ADDR"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(
            method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def _tus_upload(
    process: KeelProcess, tenant_id: str, user_id: str, length: int, filename: str
) -> tuple[str, dict[str, str]]:
    """A tus upload of ``length`` bytes created at ``process`` for ``user_id`` (201): its
    path, and the headers that authenticate the user's requests to it."""
    token, _ = ClientTokens(CLUSTER_TOKEN_SECRET).issue(tenant_id, user_id, 600)
    auth = {"Authorization": f"Bearer {token}", "Tus_Resumable": "1.0.0"}
    created, _ = _request(
        process,
        "POST",
        "/files/tus",
        Upload_Length=str(length),
        Upload_Metadata=f"filename {base64.b64encode(filename.encode()).decode()}",
        **auth,
    )
    assert created.status == 201, created.reason
    return urlsplit(created.headers["Location"]).path, auth


def _stored_file(
    process: KeelProcess, md: tuple[tuple[str, str], ...], file_id: str
) -> tuple[pb.File, bytes]:
    """The file as ``process`` has it (``GetFile``) and its bytes (``DownloadFile``)."""
    with grpc.insecure_channel(process.addr) as channel:
        stub = files_pb2_grpc.FileServiceStub(channel)
        stored = stub.GetFile(pb.GetFileRequest(id=file_id), metadata=md, timeout=30).file
        got = b"".join(
            m.chunk
            for m in stub.DownloadFile(pb.DownloadFileRequest(id=file_id), metadata=md, timeout=60)
            if m.WhichOneof("payload") == "chunk"
        )
    return stored, got


def _get_file(files: FileCluster, process: KeelProcess, file_id: str) -> pb.File:
    with files.stub(process) as stub:
        found: pb.File = stub.GetFile(pb.GetFileRequest(id=file_id), metadata=files.md).file
    return found


def test_a_tus_upload_goes_on_at_whichever_process_gets_each_patch(files: FileCluster) -> None:
    data = os.urandom(3 * MiB + 123)
    path, auth = _tus_upload(files.a, files.tenant_id, "dora", len(data), "noise.bin")
    offset = 0
    for process, size in ((files.a, MiB), (files.b, MiB), (files.a, len(data) - 2 * MiB)):
        answer, _ = _request(
            process,
            "PATCH",
            path,
            data[offset : offset + size],
            Content_Type="application/offset+octet-stream",
            Upload_Offset=str(offset),
            **auth,
        )
        assert answer.status == 204, answer.reason
        offset = int(answer.headers["Upload-Offset"])
        head, _ = _request(files.b if process is files.a else files.a, "HEAD", path, **auth)
        assert int(head.headers["Upload-Offset"]) == offset  # the other process agrees
    stored = _get_file(files, files.b, path.rsplit("/", 1)[1])
    assert stored.state == pb.FILE_STATE_READY
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.user_id == "dora"


def test_a_file_stored_by_one_process_is_served_by_the_other(files: FileCluster) -> None:
    data = os.urandom(12 * MiB)  # more than one S3 part
    requests = [pb.UploadFileRequest(metadata=pb.UploadFileMetadata(filename="big.bin"))]
    requests += [pb.UploadFileRequest(chunk=data[i : i + MiB]) for i in range(0, len(data), MiB)]
    with files.stub(files.a) as stub:
        stored = stub.UploadFile(iter(requests), metadata=files.md, timeout=60).file
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    with files.stub(files.b) as stub:
        got = b"".join(
            m.chunk
            for m in stub.DownloadFile(pb.DownloadFileRequest(id=stored.id), metadata=files.md)
            if m.WhichOneof("payload") == "chunk"
        )
        url = stub.CreateDownloadUrl(
            pb.CreateDownloadUrlRequest(id=stored.id), metadata=files.md
        ).url
    assert got == data
    # Signed by B, served by A (the same secret everywhere; any process serves any URL).
    ranged, body = _request(files.a, "GET", urlsplit(url).path, Range="bytes=100-199")
    assert ranged.status == 206 and body == data[100:200]


def test_an_upload_survives_the_kill_of_the_process_that_received_it(files: FileCluster) -> None:
    data = os.urandom(2 * MiB)
    victim = files.cluster.start("file-service")
    path, auth = _tus_upload(victim, files.tenant_id, "erin", len(data), "survivor.bin")
    first, _ = _request(
        victim,
        "PATCH",
        path,
        data[:MiB],
        Content_Type="application/offset+octet-stream",
        Upload_Offset="0",
        **auth,
    )
    assert first.status == 204
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=30)
    head, _ = _request(files.b, "HEAD", path, **auth)
    assert int(head.headers["Upload-Offset"]) == MiB
    rest, _ = _request(
        files.b,
        "PATCH",
        path,
        data[MiB:],
        Content_Type="application/offset+octet-stream",
        Upload_Offset=str(MiB),
        **auth,
    )
    assert rest.status == 204
    stored = _get_file(files, files.a, path.rsplit("/", 1)[1])
    assert stored.state == pb.FILE_STATE_READY and stored.sha256 == hashlib.sha256(data).hexdigest()


def test_a_local_upload_resumes_after_kill_9_between_patches_with_every_acknowledged_byte(
    pg_cluster,  # type: ignore[no-untyped-def]
) -> None:
    """The local backend does not fsync an upload's parts (only the file's blob, before it
    is READY): what the kernel got from a killed process is all there after it, so the
    restarted process reports the acknowledged offset and the resumed upload is whole."""
    cluster: PgCluster = pg_cluster("files-local")  # no S3: the local backend, one data dir
    victim = cluster.start("file-service")
    md, tenant_id = _new_tenant(cluster)
    data = os.urandom(5 * MiB + 7)
    path, auth = _tus_upload(victim, tenant_id, "fay", len(data), "kept.bin")
    for offset in (0, 2 * MiB):
        answer, _ = _request(
            victim,
            "PATCH",
            path,
            data[offset : offset + 2 * MiB],
            Content_Type="application/offset+octet-stream",
            Upload_Offset=str(offset),
            **auth,
        )
        assert answer.status == 204, answer.reason
    victim.process.send_signal(signal.SIGKILL)  # right after the 204: nothing was fsynced
    victim.process.wait(timeout=30)

    restarted = cluster.start("file-service")  # the same data dir
    head, _ = _request(restarted, "HEAD", path, **auth)
    assert head.status == 200 and int(head.headers["Upload-Offset"]) == 4 * MiB
    rest, _ = _request(
        restarted,
        "PATCH",
        path,
        data[4 * MiB :],
        Content_Type="application/offset+octet-stream",
        Upload_Offset=str(4 * MiB),
        **auth,
    )
    assert rest.status == 204, rest.reason
    stored, got = _stored_file(restarted, md, path.rsplit("/", 1)[1])
    assert stored.state == pb.FILE_STATE_READY
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(got).hexdigest() == stored.sha256


def test_a_local_upload_killed_mid_patch_resumes_at_its_acknowledged_offset_whole(
    pg_cluster,  # type: ignore[no-untyped-def]
) -> None:
    """``kill -9`` while a PATCH's body streams into the upload's one file: the bytes it
    wrote were never acknowledged, so they are not counted; the dead process's lock on the
    file went with it, so the restarted process takes the next PATCH; that PATCH writes over
    them, and the file is whole."""
    cluster: PgCluster = pg_cluster("files-local-mid-patch")
    victim = cluster.start("file-service")
    md, tenant_id = _new_tenant(cluster)
    data = os.urandom(4 * MiB)
    path, auth = _tus_upload(victim, tenant_id, "gus", len(data), "midway.bin")
    file_id = path.rsplit("/", 1)[1]
    first, _ = _request(
        victim,
        "PATCH",
        path,
        data[:MiB],
        Content_Type="application/offset+octet-stream",
        Upload_Offset="0",
        **auth,
    )
    assert first.status == 204, first.reason
    # A PATCH of 3 MiB of which 2 MiB of other bytes arrive, then the process dies.
    host, port = victim.env["KEEL_FILES_HTTP_ADDR"].rsplit(":", 1)
    blob = victim.data_dir / "files" / tenant_id / f"{file_id}-parts" / "data"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        request = (
            f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth['Authorization']}\r\n"
            "Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {MiB}\r\nContent-Length: {3 * MiB}\r\n\r\n"
        )
        sock.sendall(request.encode() + b"\xee" * (2 * MiB))
        deadline = time.monotonic() + 30
        while blob.stat().st_size < 2 * MiB:  # some of those bytes are in the file
            assert time.monotonic() < deadline, "the PATCH's bytes never reached the file"
            time.sleep(0.01)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=30)

    restarted = cluster.start("file-service")
    head, _ = _request(restarted, "HEAD", path, **auth)
    assert head.status == 200 and int(head.headers["Upload-Offset"]) == MiB
    rest, _ = _request(
        restarted,
        "PATCH",
        path,
        data[MiB:],
        Content_Type="application/offset+octet-stream",
        Upload_Offset=str(MiB),
        **auth,
    )
    assert rest.status == 204, rest.reason
    stored, got = _stored_file(restarted, md, file_id)
    assert stored.state == pb.FILE_STATE_READY
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert got == data
