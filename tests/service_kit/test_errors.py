from __future__ import annotations

from google.rpc import code_pb2, error_details_pb2

from service_kit.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    internal_status,
    to_rpc_status,
)


def test_invalid_argument_carries_field_violations() -> None:
    status = to_rpc_status(InvalidArgument("bad", [FieldViolation("tenant.name", "too long")]))
    assert status.code == code_pb2.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "tenant.name"


def test_resource_exhausted_carries_retry_info() -> None:
    status = to_rpc_status(ResourceExhausted("slow down", retry_after=1.5))
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToNanoseconds() == 1_500_000_000


def test_plain_errors_have_no_details() -> None:
    status = to_rpc_status(NotFound("tenant 'x' not found"))
    assert status.code == code_pb2.NOT_FOUND
    assert status.message == "tenant 'x' not found"
    assert not status.details


def test_internal_status_names_only_the_request_id() -> None:
    status = internal_status("abc123")
    assert status.code == code_pb2.INTERNAL
    assert "abc123" in status.message
    assert "Traceback" not in status.message
