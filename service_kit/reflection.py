"""Server reflection for every Keel process: ``grpc.reflection.v1`` and ``v1alpha``.

Two gaps of grpcio-reflection are closed here:

- It serves only ``grpc.reflection.v1alpha`` (grpc/grpc#38576), while current clients
  (newer grpcurl, grpcui, Postman, gRPC-Java's tools) ask ``grpc.reflection.v1`` first.
  The two protocols differ only in their package name: their messages are the same on
  the wire. So the one servicer answers both, and a copy of the v1alpha file under the v1
  package is added to the descriptor pool so that the v1 service can be listed and
  described like any other.
- It finds a symbol's file by asking the descriptor pool, and the C (upb) pool finds
  messages, fields, enums and services but not methods, so ``grpcurl describe
  keel.channels.v1.ChannelService.SendMessage`` answered "Symbol not found".
  :class:`_MethodAwarePool` finds a method's file through its service.

Invariant: every name :func:`enable_reflection` lists resolves (``describe`` works on it
and on each of its methods).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1ALPHA_PACKAGE = ".grpc.reflection.v1alpha."
_V1_PACKAGE = ".grpc.reflection.v1."
_V1_FILE = "grpc/reflection/v1/reflection.proto"


class _MethodAwarePool:
    """The default descriptor pool, which also finds the file of a method
    (``package.Service.Method``) through its service."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def FindFileContainingSymbol(self, name: str) -> FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(name)
        except KeyError:
            service_name, _, method = name.rpartition(".")
            if not service_name:
                raise
            service = self._pool.FindServiceByName(service_name)  # KeyError: not found
            if method not in service.methods_by_name:
                raise
            return service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` into ``pool`` (once): the v1alpha file
    with the v1 package."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = _V1_PACKAGE.strip(".")
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # set only for message fields
                field.type_name = field.type_name.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
            method.output_type = method.output_type.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve reflection (v1 and v1alpha) on ``server``, listing ``service_names`` plus both
    reflection services."""
    pool = descriptor_pool.Default()
    _add_v1_file(pool)
    listed = [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(listed, pool=_MethodAwarePool(pool))
    for service in (V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME):
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    service,
                    {
                        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                            servicer.ServerReflectionInfo,
                            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                        )
                    },
                ),
            )
        )
