"""The errors every Keel service raises, and the one place they become gRPC statuses.

Exception tree::

    KeelError
     ├── InvalidArgument       INVALID_ARGUMENT    (BadRequest field violations)
     ├── Unauthenticated       UNAUTHENTICATED
     ├── PermissionDenied      PERMISSION_DENIED
     ├── NotFound              NOT_FOUND           (ResourceInfo per missing resource)
     ├── AlreadyExists         ALREADY_EXISTS
     ├── FailedPrecondition    FAILED_PRECONDITION
     ├── OutOfRange            OUT_OF_RANGE
     ├── ResourceExhausted     RESOURCE_EXHAUSTED  (RetryInfo)
     └── Unavailable           UNAVAILABLE         (RetryInfo when known)

Domain packages subclass these (``TenantNotFound(NotFound)``) so business code
never imports grpc; :func:`to_rpc_status` is the only translation to the wire.
A ``KeelError``'s message is shown to the client, so it must never contain a
secret or a stack trace; anything that is not a ``KeelError`` becomes
``INTERNAL`` with a request id and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (``tenant.name``) and why."""

    field: str
    description: str


class KeelError(Exception):
    """Base of every error a Keel service reports to its caller."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(KeelError):
    """The request itself is wrong; ``violations`` names each bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidArgument:
        """An error about a single field, with the field named in the message."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class Unauthenticated(KeelError):
    """The caller's credentials are missing or wrong."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(KeelError):
    """The caller is known but may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(KeelError):
    """The resource does not exist for this caller (another tenant's ids included).

    ``resources`` names each missing resource as ``(type, name)``, such as
    ``("keel.channels.v1.User", "alice")``, when a request named several."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, message: str, *, resources: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.resources = list(resources)


class AlreadyExists(KeelError):
    """A resource with the same unique name or request id exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(KeelError):
    """The system is not in a state that allows this request."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(KeelError):
    """The request asks past the end of what is kept (an expired cursor)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(KeelError):
    """A rate limit or quota is used up; retry after ``retry_after`` seconds."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)


class Unavailable(KeelError):
    """A dependency (database, peer service) cannot be reached right now."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def to_rpc_status(error: KeelError) -> status_pb2.Status:
    """The ``google.rpc.Status`` (with details) that reports ``error`` to a client."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if isinstance(error, InvalidArgument) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.add().Pack(bad_request)
    if isinstance(error, NotFound):
        for kind, name in error.resources:
            status.details.add().Pack(
                error_details_pb2.ResourceInfo(resource_type=kind, resource_name=name)
            )
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        status.details.add().Pack(_retry_info(retry_after))
    return status


def internal_status(request_id: str) -> status_pb2.Status:
    """The status for an unexpected failure: no detail beyond the request id."""
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error; quote request id {request_id} to the operator",
    )
