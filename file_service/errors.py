"""The file service's errors, as the kit's error classes (each maps to one gRPC status)."""

from __future__ import annotations

from service_kit.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted


class FileNotFound(NotFound):
    """No such file for this tenant (another tenant's file is absent the same way)."""

    def __init__(self, file_id: str, message: str | None = None) -> None:
        super().__init__(
            message or f"file {file_id} not found", resources=(("keel.files.v1.File", file_id),)
        )


class InvalidFile(InvalidArgument):
    """The request or the bytes break a rule: size or checksum mismatch, a refused type."""


class FileNotReady(FailedPrecondition):
    """The file is pending or deleted where a ready file is needed."""


class QuotaExceeded(ResourceExhausted):
    """The tenant's files would take more bytes or more files than it is allowed."""

    def __init__(self, message: str) -> None:
        # Retrying does not help until files are deleted: no retry delay is suggested.
        super().__init__(message, retry_after=0)


class OffsetMismatch(FailedPrecondition):
    """A part was offered at an offset other than the upload's current one (tus: 409)."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"the upload is at offset {expected}, not {got}")
        self.expected = expected


class UploadBusy(FailedPrecondition):
    """Another request is writing this upload's bytes now (tus: 423, like tusd's locked
    upload; clients retry, then ask for the offset)."""


class UploadExpired(FailedPrecondition):
    """The pending upload's time ran out (tus: 410); its parts are being removed."""


class ChecksumMismatch(InvalidFile):
    """The bytes do not have the SHA-256 the uploader declared (tus: 460); nothing is kept."""
