"""What a failed gRPC call made for a frame answers: its ``error`` frame code, and the
bad fields the service named (``google.rpc.BadRequest`` field violations).

The one place the bridge translates gRPC statuses (docs/protocol.md has the table).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from gateway_bridge.bridge import protocol as p

_GRPC_TO_ERROR = {
    grpc.StatusCode.INVALID_ARGUMENT: p.ErrorCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: p.ErrorCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED: p.ErrorCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION: p.ErrorCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE: p.ErrorCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: p.ErrorCode.RATE_LIMITED,
    grpc.StatusCode.UNAVAILABLE: p.ErrorCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: p.ErrorCode.UNAVAILABLE,
}

_DETAILS_KEY = "grpc-status-details-bin"


def error_code(code: int | grpc.StatusCode) -> p.ErrorCode:
    """The ``error`` frame code for a gRPC status (code or number)."""
    if isinstance(code, int):
        code = _status_code(code)
    return _GRPC_TO_ERROR.get(code, p.ErrorCode.INTERNAL)


def _status_code(number: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


def rpc_error(code: grpc.StatusCode, details: str, status: bytes = b"") -> grpc.aio.AioRpcError:
    """The error a unary call would have raised with ``code`` and ``details`` (and the
    encoded ``google.rpc.Status``, ``status``, in its trailing metadata), for an answer
    that came another way (a send on the Connect stream): :func:`frame_error` reads it as
    it reads a call's."""
    trailing = grpc.aio.Metadata((_DETAILS_KEY, status)) if status else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


def status_error(status: bytes) -> grpc.aio.AioRpcError:
    """:func:`rpc_error` for an encoded ``google.rpc.Status`` (a failed stream send's)."""
    decoded = status_pb2.Status.FromString(status)
    return rpc_error(_status_code(decoded.code), decoded.message, status)


def frame_error(
    exc: grpc.aio.AioRpcError, frame_id: Any, renames: Mapping[str, str] | None = None
) -> p.FrameError:
    """The refusal that answers a frame whose call failed with ``exc``: its code, the
    service's message, and its field violations, each field named as the frame names it
    (``renames`` maps the request's field paths to the frame's, by prefix)."""
    fields = tuple(
        p.FieldProblem(_renamed(v.field, renames or {}), v.description) for v in _violations(exc)
    )
    return p.FrameError(error_code(exc.code()), exc.details() or exc.code().name, frame_id, fields)


def _violations(exc: grpc.aio.AioRpcError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    for key, value in exc.trailing_metadata() or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                return list(bad_request.field_violations)
    return []


def _renamed(field: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if field == old or field.startswith((old + ".", old + "[")):
            return new + field[len(old) :]
    return field
