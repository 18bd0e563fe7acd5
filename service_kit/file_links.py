"""Signed download links of files: the one format every service signs and the file
service serves.

A download link is a capability: whoever holds it may read one variant (the file or its
thumbnail) of one ready file of one tenant until it expires, without any other
credential. The file service makes them (``CreateDownloadUrl``) and serves them on its
HTTP endpoints; the gateway makes them for the files attached to the messages it
returns. Both sign with :mod:`service_kit.signed_tokens` under ``KEEL_TOKEN_SECRET``
(the first secret signs, every one verifies, so the secret can be rotated) and the
purpose :data:`DOWNLOAD_PURPOSE`, so no other token signed with that secret passes for a
download token.

The tenant, the file and the variant are claims inside the signature: changing any of
them (another tenant's file id, say) makes the token fail to verify. Reading a token
back raises :class:`InvalidFileToken` for anything wrong with it, which the HTTP layer
answers with 403 and nothing else. :func:`verified_claims` and :func:`text_claim` are the
reading steps every file token shares (the file service's upload tokens use them too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal
from urllib.parse import quote

from service_kit.config import FileSettings
from service_kit.errors import PermissionDenied
from service_kit.signed_tokens import ExpiredSignedToken, InvalidSignedToken, sign, verify

DOWNLOAD_PURPOSE: Final = b"keel.files.download"

#: What a download serves: the file's bytes, or its thumbnail's.
Variant = Literal["file", "thumbnail"]
VARIANTS: Final[tuple[Variant, ...]] = ("file", "thumbnail")

# The claims of a download token.
TENANT_CLAIM: Final = "tid"
FILE_CLAIM: Final = "fid"
VARIANT_CLAIM: Final = "var"
UNTIL_CLAIM: Final = "until"


class InvalidFileToken(PermissionDenied):
    """An upload or download token is forged, altered, expired, or for another file.

    ``expired`` is true only for a token whose signature verifies but whose time is past
    (an upload token then means the upload itself has expired).
    """

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class DownloadGrant:
    """What a valid download token allows: reading this variant of this file until then."""

    tenant_id: str
    file_id: str
    variant: Variant
    expires_at: datetime


def download_token(
    secret: str, tenant_id: str, file_id: str, *, variant: Variant, expires_at: datetime
) -> str:
    """A token reading ``variant`` of the tenant's file until ``expires_at``."""
    claims: dict[str, str | int] = {
        TENANT_CLAIM: tenant_id,
        FILE_CLAIM: file_id,
        VARIANT_CLAIM: variant,
        # The expiry is also a claim of its own, so a download can say how long a cache
        # may keep it without relying on how the signature encodes its expiry.
        UNTIL_CLAIM: int(expires_at.timestamp()),
    }
    return sign(secret, DOWNLOAD_PURPOSE, claims, expires_at=expires_at)


def read_download_token(token: str, secrets: Sequence[str], *, now: datetime) -> DownloadGrant:
    """The grant of a valid download token. Raises :class:`InvalidFileToken`."""
    claims = verified_claims(token, secrets, DOWNLOAD_PURPOSE, now=now)
    variant = claims.get(VARIANT_CLAIM)
    until = claims.get(UNTIL_CLAIM)
    if variant not in VARIANTS or not isinstance(until, int):
        raise InvalidFileToken("the download token's claims are not a download's")
    return DownloadGrant(
        tenant_id=text_claim(claims, TENANT_CLAIM),
        file_id=text_claim(claims, FILE_CLAIM),
        variant="thumbnail" if variant == "thumbnail" else "file",
        expires_at=datetime.fromtimestamp(until, UTC),
    )


def download_url(public_base: str, token: str, filename: str) -> str:
    """The URL serving a download token's bytes; ``filename`` only names the last segment
    (what a browser saving the link proposes), the token alone says what is served."""
    base = public_base.rstrip("/")
    return f"{base}/files/download/{quote(token, safe='')}/{quote(filename or 'file', safe='')}"


def signed_download_url(
    secret: str,
    public_base: str,
    tenant_id: str,
    file_id: str,
    filename: str,
    *,
    variant: Variant,
    expires_at: datetime,
) -> str:
    """A download URL for ``variant`` of the tenant's file, signed with ``secret`` until
    ``expires_at``: :func:`download_token` in :func:`download_url`."""
    token = download_token(secret, tenant_id, file_id, variant=variant, expires_at=expires_at)
    return download_url(public_base, token, filename)


def files_base_url(files: FileSettings, *, port: int | None = None, https: bool = False) -> str:
    """The base URL at which clients reach the file service's HTTP endpoints:
    ``KEEL_FILES_PUBLIC_URL``, or ``http://`` (``https://`` when ``https``: Keel's own TLS
    is on) + ``KEEL_FILES_HTTP_ADDR`` (``port``, when given, is the one it was bound to; an
    unspecified host is reached at 127.0.0.1)."""
    if files.public_url:
        return files.public_url.rstrip("/")
    host = files.http_addr.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    scheme = "https" if https else "http"
    return f"{scheme}://{host}:{files.http_addr.port if port is None else port}"


def verified_claims(
    token: str, secrets: Sequence[str], purpose: bytes, *, now: datetime
) -> dict[str, object]:
    """The claims of a file token one of ``secrets`` signed for ``purpose`` and that has
    not expired at ``now``. Raises :class:`InvalidFileToken`."""
    try:
        return dict(verify(token, secrets, purpose, now=now))
    except ExpiredSignedToken as exc:
        raise InvalidFileToken("the token has expired", expired=True) from exc
    except InvalidSignedToken as exc:
        raise InvalidFileToken("the token is not valid") from exc


def text_claim(claims: dict[str, object], name: str) -> str:
    """The non-empty text claim ``name``. Raises :class:`InvalidFileToken`."""
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidFileToken(f"the token has no {name} claim")
    return value
