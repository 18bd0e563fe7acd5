"""The HTTP face's own errors, and the one place every error becomes an HTTP status.

The web layer adds a few errors to the service's (:mod:`file_service.errors`)::

    InvalidArgument
     ├── TusHeaderError          400  a tus header missing or malformed
     ├── UnsupportedBodyType     415  a PATCH body that is not offset+octet-stream
     ├── LengthRequired          411  a PUT without Content-Length
     └── InvalidFile
          └── BodyTooLarge       413  more bytes than the upload (or Tus-Max-Size) allows
    FailedPrecondition
     └── UnsupportedTusVersion   412  Tus-Resumable missing or not 1.0.0

and maps every error to a status:

==========================  ======  ==========================================
error                       status  why
==========================  ======  ==========================================
``ChecksumMismatch``        460     tus checksum extension; nothing was kept
``OffsetMismatch``          409     tus: the client must HEAD and resume
``UploadBusy``              423     another request is writing the upload's
                                    bytes (tus-js-client retries 423)
``UploadExpired``           410     tus expiration extension
``QuotaExceeded``           413     like an upload over ``Tus-Max-Size``: no
                                    retry helps (tus clients retry 5xx, not
                                    4xx); the message says which limit
``InvalidFile`` and other   400     the request or the bytes break a rule
``InvalidArgument``
``Unauthenticated``         401     missing or invalid client token
``PermissionDenied``        403     another user's upload; a bad, altered or
(``InvalidFileToken``)              expired URL token — nothing touched
``FileNotFound``/NotFound   404     unknown, or another tenant's file
``FileNotReady`` and other  409     the file is not in the state asked for
``FailedPrecondition``              (an upload that takes no more bytes is
                                    ``UploadExpired`` or ``OffsetMismatch``
                                    from the service; a download's handler
                                    answers 404/410 itself)
``ResourceExhausted``       429     rate limits
``Unavailable``             503     the database or blob store is down
==========================  ======  ==========================================
"""

from __future__ import annotations

from typing import Final

from file_service.errors import (
    ChecksumMismatch,
    InvalidFile,
    OffsetMismatch,
    QuotaExceeded,
    UploadBusy,
    UploadExpired,
)
from service_kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    KeelError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

#: Not in any RFC: tus's status for a body whose checksum does not match.
CHECKSUM_MISMATCH_STATUS: Final = 460


class TusHeaderError(InvalidArgument):
    """A tus header is missing or malformed."""


class UnsupportedBodyType(InvalidArgument):
    """A PATCH body whose Content-Type is not ``application/offset+octet-stream``."""


class LengthRequired(InvalidArgument):
    """A PUT without ``Content-Length``: its size must be known before the bytes."""


class BodyTooLarge(InvalidFile):
    """More bytes than the upload declared, or than ``Tus-Max-Size``."""


class UnsupportedTusVersion(FailedPrecondition):
    """``Tus-Resumable`` is missing or names a version this server does not speak."""


# Most specific first: subclasses come before the classes they extend.
_STATUSES: tuple[tuple[type[KeelError], int], ...] = (
    (ChecksumMismatch, CHECKSUM_MISMATCH_STATUS),
    (BodyTooLarge, 413),
    (UnsupportedBodyType, 415),
    (LengthRequired, 411),
    (UnsupportedTusVersion, 412),
    (OffsetMismatch, 409),
    (UploadBusy, 423),
    (UploadExpired, 410),
    (QuotaExceeded, 413),
    (InvalidArgument, 400),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (FailedPrecondition, 409),
    (ResourceExhausted, 429),
    (Unavailable, 503),
)


def status_for(error: KeelError) -> int:
    """The HTTP status answering ``error`` (500 for a kind this service never raises)."""
    for kind, status in _STATUSES:
        if isinstance(error, kind):
            return status
    return 500
