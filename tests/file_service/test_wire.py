"""The file service's own reading of upload chunks and writing of download chunks
(:mod:`file_service.wire`): whatever bytes arrive, a request means what protobuf says it
means, and a download chunk is the message protobuf would have sent."""

from __future__ import annotations

import pytest
from keel.files.v1 import files_pb2 as pb

from file_service import wire

MiB = 1 << 20


def _meaning(raw: bytes) -> tuple[str | None, bytes]:
    """What a request says: which payload, and the chunk's bytes."""
    request = wire.parse_upload_request(raw)
    return request.WhichOneof("payload"), bytes(request.chunk)


@pytest.mark.parametrize(
    "raw",
    [
        pb.UploadFileRequest(chunk=b"abc").SerializeToString(),
        pb.UploadFileRequest(chunk=b"").SerializeToString(),
        pb.UploadFileRequest(chunk=bytes(range(256)) * 4096).SerializeToString(),  # 1 MiB
        pb.UploadFileRequest(
            metadata=pb.UploadFileMetadata(filename="a.txt", size_bytes=3)
        ).SerializeToString(),
        b"",  # an empty message: no payload
        b"\x12\x83\x80\x00xyz",  # a length in a longer varint than needed
        b"\x12\x01a\x12\x02bc",  # the field twice: the last one counts
        b"\x12\x03abc\x18\x01",  # an unknown field after the chunk
        b"\x18\x01\x12\x03abc",  # and before it
        b"\x12\x83\x80\x80\x80\x00xyz",  # a varint longer than this path reads
    ],
)
def test_a_request_means_what_protobuf_says(raw: bytes) -> None:
    expected = pb.UploadFileRequest.FromString(raw)
    assert _meaning(raw) == (expected.WhichOneof("payload"), expected.chunk)


def test_a_plain_chunk_is_a_view_of_the_received_bytes_not_a_copy() -> None:
    raw = pb.UploadFileRequest(chunk=b"x" * MiB).SerializeToString()
    request = wire.parse_upload_request(raw)
    assert isinstance(request, wire.UploadChunk)
    assert isinstance(request.chunk, memoryview) and request.chunk.obj is raw
    assert request.HasField("chunk") and not request.HasField("metadata")


@pytest.mark.parametrize(
    "raw",
    [
        b"\x12\x05abc",  # shorter than its length says
        b"\x12\x80",  # a length cut short
        b"\x12",
    ],
)
def test_a_malformed_request_fails_as_protobufs_parse_does(raw: bytes) -> None:
    with pytest.raises(Exception) as expected:
        pb.UploadFileRequest.FromString(raw)
    with pytest.raises(type(expected.value)):
        wire.parse_upload_request(raw)


def test_a_chunk_past_its_bound_is_left_to_protobuf_and_the_request_bounds() -> None:
    raw = pb.UploadFileRequest(chunk=b"x" * (MiB + 1)).SerializeToString()
    assert isinstance(wire.parse_upload_request(raw), pb.UploadFileRequest)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, MiB, 3 * MiB + 5])
def test_a_download_chunk_is_the_message_protobuf_would_send(size: int) -> None:
    chunk = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    expected = pb.DownloadFileResponse(chunk=chunk).SerializeToString()
    assert wire.serialize_download_response(chunk) == expected
    first = pb.DownloadFileResponse(file=pb.File(id="f", size_bytes=size))
    assert wire.serialize_download_response(first) == first.SerializeToString()


def test_the_file_service_bounds_what_grpc_buffers_of_an_upload() -> None:
    """A fixed receive window of a few chunks, not one grown from bandwidth probes."""
    from typing import cast

    from file_service import server as file_server
    from service_kit.server import Runtime

    options = dict(file_server.build(cast(Runtime, object())).spec.grpc_options)
    assert options == {"grpc.http2.bdp_probe": 0, "grpc.http2.lookahead_bytes": 4 * MiB}
