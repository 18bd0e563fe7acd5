"""The file service's signed capabilities: upload tokens, and the download URLs of
:mod:`service_kit.file_links`.

A capability is a token anyone holding it may use, without a client token: it names one
file of one tenant and expires. Both kinds are HMAC-signed by
:mod:`service_kit.signed_tokens` with the service's URL secrets (the first signs, every one
verifies, so the secret can be rotated), each with its own purpose, so an upload token is
never accepted as a download token or the other way round.

- An **upload token** lets a plain client send the bytes of one pending file (tus PATCH
  or PUT on :func:`upload_url`); it expires with the upload (the file's ``expire_time``).
- A **download token** lets anyone read one variant (the file or its thumbnail) of one
  ready file until it expires; it travels in the path of :func:`download_url`. It lives in
  the kit because the gateway signs the URLs of chat attachments with it too.

The tenant, the file and the variant are claims inside the signature: changing any of
them (another tenant's file id, say) makes the token fail to verify. Reading a token back
raises :class:`InvalidFileToken` for anything wrong with it, which the HTTP layer answers
with 403 and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import quote

from file_service.models import FileState, StoredFile
from service_kit.file_links import (
    DOWNLOAD_PURPOSE,
    FILE_CLAIM,
    TENANT_CLAIM,
    DownloadGrant,
    InvalidFileToken,
    download_token,
    download_url,
    read_download_token,
    text_claim,
    verified_claims,
)
from service_kit.signed_tokens import sign

__all__ = [
    "DOWNLOAD_PURPOSE",
    "UPLOAD_PURPOSE",
    "DownloadGrant",
    "InvalidFileToken",
    "UploadGrant",
    "download_token",
    "download_url",
    "read_download_token",
    "read_upload_token",
    "upload_token",
    "upload_url",
]

UPLOAD_PURPOSE: Final = b"keel.files.upload"


@dataclass(frozen=True, slots=True)
class UploadGrant:
    """What a valid upload token allows: sending the bytes of this pending file."""

    tenant_id: str
    file_id: str


def upload_token(secret: str, file: StoredFile) -> str:
    """An upload token for ``file``, which must be pending; it expires with the upload.

    Raises ``ValueError`` for a file that is not pending (nothing left to upload).
    """
    if file.state is not FileState.PENDING or file.expire_time is None:
        raise ValueError(f"file {file.id} is {file.state}, not a pending upload")
    claims = {TENANT_CLAIM: file.tenant_id, FILE_CLAIM: file.id}
    return sign(secret, UPLOAD_PURPOSE, claims, expires_at=file.expire_time)


def read_upload_token(token: str, secrets: Sequence[str], *, now: datetime) -> UploadGrant:
    """The grant of a valid upload token. Raises :class:`InvalidFileToken`."""
    claims = verified_claims(token, secrets, UPLOAD_PURPOSE, now=now)
    return UploadGrant(
        tenant_id=text_claim(claims, TENANT_CLAIM), file_id=text_claim(claims, FILE_CLAIM)
    )


def upload_url(public_base: str, file_id: str) -> str:
    """The URL a pending file's bytes go to (tus HEAD/PATCH/DELETE, or one PUT)."""
    return f"{public_base.rstrip('/')}/files/tus/{quote(file_id, safe='')}"
