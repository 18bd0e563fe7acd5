"""The file service's signed capabilities: upload tokens and download URLs.

A capability is a token anyone holding it may use, without a client token: it names one
file of one tenant and expires. Both kinds are HMAC-signed by
:mod:`service_kit.signed_tokens` with the service's URL secrets (the first signs, every one
verifies, so the secret can be rotated), each with its own purpose, so an upload token is
never accepted as a download token or the other way round.

- An **upload token** lets a plain client send the bytes of one pending file (tus PATCH
  or PUT on :func:`upload_url`); it expires with the upload (the file's ``expire_time``).
- A **download token** lets anyone read one variant (the file or its thumbnail) of one
  ready file until it expires; it travels in the path of :func:`download_url`.

The tenant, the file and the variant are claims inside the signature: changing any of
them (another tenant's file id, say) makes the token fail to verify. Reading a token back
raises :class:`InvalidFileToken` for anything wrong with it, which the HTTP layer answers
with 403 and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

from file_service.models import FileState, StoredFile
from file_service.web.backend import Variant
from service_kit.errors import PermissionDenied
from service_kit.signed_tokens import ExpiredSignedToken, InvalidSignedToken, sign, verify

UPLOAD_PURPOSE: Final = b"keel.files.upload"
DOWNLOAD_PURPOSE: Final = b"keel.files.download"
_VARIANTS: Final[tuple[Variant, ...]] = ("file", "thumbnail")


class InvalidFileToken(PermissionDenied):
    """An upload or download token is forged, altered, expired, or for another file.

    ``expired`` is true only for a token whose signature verifies but whose time is past
    (an upload token then means the upload itself has expired).
    """

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class UploadGrant:
    """What a valid upload token allows: sending the bytes of this pending file."""

    tenant_id: str
    file_id: str


@dataclass(frozen=True, slots=True)
class DownloadGrant:
    """What a valid download token allows: reading this variant of this file until then."""

    tenant_id: str
    file_id: str
    variant: Variant
    expires_at: datetime


def upload_token(secret: str, file: StoredFile) -> str:
    """An upload token for ``file``, which must be pending; it expires with the upload.

    Raises ``ValueError`` for a file that is not pending (nothing left to upload).
    """
    if file.state is not FileState.PENDING or file.expire_time is None:
        raise ValueError(f"file {file.id} is {file.state}, not a pending upload")
    claims = {"tid": file.tenant_id, "fid": file.id}
    return sign(secret, UPLOAD_PURPOSE, claims, expires_at=file.expire_time)


def read_upload_token(token: str, secrets: Sequence[str], *, now: datetime) -> UploadGrant:
    """The grant of a valid upload token. Raises :class:`InvalidFileToken`."""
    claims = _verified(token, secrets, UPLOAD_PURPOSE, now=now)
    return UploadGrant(tenant_id=_text(claims, "tid"), file_id=_text(claims, "fid"))


def download_token(
    secret: str, tenant_id: str, file_id: str, *, variant: Variant, expires_at: datetime
) -> str:
    """A token reading ``variant`` of the tenant's file until ``expires_at``."""
    claims: dict[str, str | int] = {
        "tid": tenant_id,
        "fid": file_id,
        "var": variant,
        # The expiry is also a claim of its own, so a download can say how long a cache
        # may keep it without relying on how the signature encodes its expiry.
        "until": int(expires_at.timestamp()),
    }
    return sign(secret, DOWNLOAD_PURPOSE, claims, expires_at=expires_at)


def read_download_token(token: str, secrets: Sequence[str], *, now: datetime) -> DownloadGrant:
    """The grant of a valid download token. Raises :class:`InvalidFileToken`."""
    claims = _verified(token, secrets, DOWNLOAD_PURPOSE, now=now)
    variant = claims.get("var")
    until = claims.get("until")
    if variant not in _VARIANTS or not isinstance(until, int):
        raise InvalidFileToken("the download token's claims are not a download's")
    return DownloadGrant(
        tenant_id=_text(claims, "tid"),
        file_id=_text(claims, "fid"),
        variant="thumbnail" if variant == "thumbnail" else "file",
        expires_at=datetime.fromtimestamp(until, UTC),
    )


def upload_url(public_base: str, file_id: str) -> str:
    """The URL a pending file's bytes go to (tus HEAD/PATCH/DELETE, or one PUT)."""
    return f"{public_base.rstrip('/')}/files/tus/{quote(file_id, safe='')}"


def download_url(public_base: str, token: str, filename: str) -> str:
    """The URL serving a download token's bytes; ``filename`` only names the last segment
    (what a browser saving the link proposes), the token alone says what is served."""
    base = public_base.rstrip("/")
    return f"{base}/files/download/{quote(token, safe='')}/{quote(filename or 'file', safe='')}"


def _verified(
    token: str, secrets: Sequence[str], purpose: bytes, *, now: datetime
) -> dict[str, object]:
    try:
        return dict(verify(token, secrets, purpose, now=now))
    except ExpiredSignedToken as exc:
        raise InvalidFileToken("the token has expired", expired=True) from exc
    except InvalidSignedToken as exc:
        raise InvalidFileToken("the token is not valid") from exc


def _text(claims: dict[str, object], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidFileToken(f"the token has no {name} claim")
    return value
