"""The file service's gRPC registration, with upload and download chunks that skip protobuf.

A 1 MiB chunk parsed by protobuf is copied twice more in Python (the parse copies it into
the message, reading ``message.chunk`` copies it out again), and one built for a download
twice (into the message, then out when it is serialized): together about half of the
server's own CPU per byte of a gRPC transfer. The bytes of a chunk message are only a tag,
a length and the chunk, so this module reads and writes those two messages itself:

- :func:`parse_upload_request`: a message that is exactly one ``chunk`` field (what every
  client sends after the metadata) becomes an :class:`UploadChunk` whose ``chunk`` is a
  ``memoryview`` of the received bytes — no copy. Anything else (the metadata, a chunk past
  its bound, unknown fields, a repeated field) goes to protobuf as before, so it is refused
  or accepted exactly as it was: the bytes on the wire mean what protobuf says they mean.
- :func:`serialize_download_response`: the servicer yields a chunk as plain ``bytes``; it
  goes out as the tag, the length and the bytes (one copy); messages go to protobuf.

The wire format is unchanged: clients see the same messages.
"""

from __future__ import annotations

from typing import Any, Final

import grpc
from google.protobuf import message_factory
from keel.files.v1 import files_pb2 as pb

from file_service.servicer import FileServicer

SERVICE: Final = "keel.files.v1.FileService"
#: ``UploadFileRequest.chunk`` and ``DownloadFileResponse.chunk``: field 2, length-delimited.
CHUNK_TAG: Final = (2 << 3) | 2
#: The bound ``UploadFileRequest.chunk`` declares (``max_bytes``); a longer chunk goes to
#: protobuf, and the request bounds refuse it.
MAX_UPLOAD_CHUNK: Final = 1 << 20
#: A varint of more bytes than this is longer than any chunk this path takes.
_MAX_LENGTH_BYTES: Final = 4


class UploadChunk:
    """An ``UploadFileRequest`` holding only a chunk, that chunk a view of the received bytes.

    It answers what the servicer and the request bounds ask of an ``UploadFileRequest``
    (``WhichOneof``, ``HasField``, ``chunk``); the view keeps the received bytes alive only
    as long as the chunk is held.
    """

    __slots__ = ("chunk",)

    def __init__(self, chunk: memoryview) -> None:
        self.chunk = chunk

    def WhichOneof(self, oneof_group: str) -> str | None:
        return "chunk" if oneof_group == "payload" else None

    def HasField(self, field_name: str) -> bool:
        return field_name == "chunk"


def parse_upload_request(raw: bytes) -> UploadChunk | pb.UploadFileRequest:
    """The request of ``raw``: an :class:`UploadChunk` when it is one chunk field within its
    bound, else protobuf's parse."""
    if len(raw) >= 2 and raw[0] == CHUNK_TAG:
        length = shift = 0
        for index in range(1, min(len(raw), 1 + _MAX_LENGTH_BYTES)):
            byte = raw[index]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                start = index + 1
                if start + length == len(raw) and length <= MAX_UPLOAD_CHUNK:
                    return UploadChunk(memoryview(raw)[start:])
                break
    return pb.UploadFileRequest.FromString(raw)


def chunk_header(length: int) -> bytes:
    """The tag and length that precede a chunk of ``length`` bytes in a message."""
    out = bytearray([CHUNK_TAG])
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def serialize_download_response(response: bytes | pb.DownloadFileResponse) -> bytes:
    """A ``DownloadFileResponse`` on the wire: plain ``bytes`` are a chunk."""
    if type(response) is bytes:
        return chunk_header(len(response)) + response
    assert isinstance(response, pb.DownloadFileResponse)
    return response.SerializeToString()


def add_to_server(servicer: FileServicer, server: Any) -> None:
    """Register ``servicer`` as ``keel.files.v1.FileService`` on ``server`` (what the
    generated ``add_FileServiceServicer_to_server`` does, with the chunk paths above)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {
        "UploadFile": grpc.stream_unary_rpc_method_handler(
            servicer.UploadFile,
            request_deserializer=parse_upload_request,
            response_serializer=pb.UploadFileResponse.SerializeToString,
        ),
        "DownloadFile": grpc.unary_stream_rpc_method_handler(
            servicer.DownloadFile,
            request_deserializer=pb.DownloadFileRequest.FromString,
            response_serializer=serialize_download_response,
        ),
    }
    for method in pb.DESCRIPTOR.services_by_name["FileService"].methods:
        if method.name in handlers:
            continue
        assert not method.client_streaming and not method.server_streaming, method.name
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
