"""The tus 1.0.0 protocol's headers, read and written without I/O.

https://tus.io/protocols/resumable-upload: the core protocol (HEAD, PATCH) and the
creation, creation-with-upload, termination, checksum (sha256) and expiration extensions.
Concatenation and deferred lengths are not offered. Everything here is a pure function of
header values; :mod:`file_service.web.handler_tus` moves bytes between the request and
the service.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final

from file_service.models import OCTET_STREAM
from file_service.web.errors import TusHeaderError

VERSION: Final = "1.0.0"
EXTENSIONS: Final = "creation,creation-with-upload,termination,checksum,expiration"
CHECKSUM_ALGORITHMS: Final = "sha256"
#: The media type of a PATCH body (and of a creation-with-upload body).
OFFSET_OCTET_STREAM: Final = "application/offset+octet-stream"

# Upload-Metadata keys a client may use for the file's name and type: tus-js-client and
# Uppy send ``filename``/``name`` and ``filetype``/``type``; some clients ``contentType``.
_NAME_KEYS: Final = ("filename", "name")
_TYPE_KEYS: Final = ("filetype", "type", "contentType")
_METADATA_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Creation:
    """What a creation request (POST) asks for."""

    size: int
    filename: str
    content_type: str
    #: Every other Upload-Metadata pair, kept with the file.
    metadata: dict[str, Any]


def offset_header(value: str | None, name: str) -> int:
    """A non-negative integer header (``Upload-Offset``, ``Upload-Length``).

    Raises :class:`TusHeaderError` when it is missing or not a plain decimal number.
    """
    if value is None:
        raise TusHeaderError(f"the {name} header is required")
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise TusHeaderError(f"{name} must be a non-negative integer, not {value[:40]!r}")
    return int(value)


def parse_metadata(header: str | None) -> dict[str, str]:
    """The pairs of an ``Upload-Metadata`` header: ``key base64,key base64,key``.

    Values are base64 of UTF-8 text; a key without a value maps to "". Raises
    :class:`TusHeaderError` for a bad key, a repeated key, or a value that is not base64 of
    UTF-8.
    """
    pairs: dict[str, str] = {}
    if header is None or not header.strip():
        return pairs
    for item in header.split(","):
        key, _, encoded = item.strip().partition(" ")
        if not _METADATA_KEY.fullmatch(key):
            raise TusHeaderError(f"Upload-Metadata has a bad key {key[:40]!r}")
        if key in pairs:
            raise TusHeaderError(f"Upload-Metadata repeats the key {key!r}")
        try:
            pairs[key] = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise TusHeaderError(f"Upload-Metadata {key!r} is not base64 of UTF-8") from exc
    return pairs


def parse_creation(length: str | None, metadata: str | None) -> Creation:
    """A creation request from its ``Upload-Length`` and ``Upload-Metadata`` headers."""
    pairs = parse_metadata(metadata)
    filename = next((pairs.pop(k) for k in _NAME_KEYS if k in pairs), "")
    content_type = next((pairs.pop(k) for k in _TYPE_KEYS if k in pairs), "")
    for key in (*_NAME_KEYS, *_TYPE_KEYS):
        pairs.pop(key, None)
    return Creation(
        size=offset_header(length, "Upload-Length"),
        filename=filename,
        content_type=content_type or OCTET_STREAM,
        metadata=dict(pairs),
    )


def parse_checksum(header: str | None) -> bytes | None:
    """The SHA-256 digest an ``Upload-Checksum: sha256 <base64>`` header declares, or None.

    Raises :class:`TusHeaderError` for another algorithm or a malformed digest (tus: 400).
    """
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm.lower() != "sha256":
        raise TusHeaderError(f"Upload-Checksum algorithm {algorithm[:20]!r} is not supported")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as exc:
        raise TusHeaderError("Upload-Checksum is not base64") from exc
    if len(digest) != 32:
        raise TusHeaderError("Upload-Checksum is not a SHA-256 digest")
    return digest


def http_date(value: datetime) -> str:
    """``value`` as an HTTP date (``Upload-Expires``): ``Wed, 25 Jun 2014 16:00:00 GMT``."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return format_datetime(aware.astimezone(UTC), usegmt=True)


def is_offset_stream(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` header is tus's PATCH body type (parameters ignored)."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == OFFSET_OCTET_STREAM
