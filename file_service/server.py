"""Wiring of ``keel.files.v1.FileService``.

Registered so the platform's whole API is visible; its methods answer
UNIMPLEMENTED (after authentication: reads need ``upload:read``, writes
``upload:write``; ``upload:*`` grants both) until the files issue lands.
"""

from __future__ import annotations

from keel.files.v1 import files_pb2_grpc

from service_kit.interceptor import tenant_scope
from service_kit.server import Runtime, ServiceSpec, unimplemented_spec

SERVICE_NAME = "keel.files.v1.FileService"
_READS = ("GetFile", "ListFiles", "DownloadFile", "CreateDownloadUrl")


def build(runtime: Runtime) -> list[ServiceSpec]:
    """The file service for the bootstrap to serve."""
    return [
        unimplemented_spec(
            SERVICE_NAME,
            files_pb2_grpc.add_FileServiceServicer_to_server,
            files_pb2_grpc.FileServiceServicer,
            tenant_scope("upload:write"),
            dict.fromkeys(_READS, tenant_scope("upload:read")),
        )
    ]
