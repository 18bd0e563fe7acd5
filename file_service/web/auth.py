"""Who may touch an upload over HTTP.

Creating an upload (tus POST) takes the browser user's client token
(``Authorization: Bearer <client token>``): the upload belongs to that tenant and user.

An upload's own URL (``/files/tus/{id}``: HEAD, PATCH, DELETE, PUT) accepts either

- the client token of the **same tenant and the same user** that created it — another
  tenant's upload is absent (404) and another user's is forbidden (403); or
- the file's **upload token** (:mod:`file_service.urls`), in ``Upload-Token`` or as the
  bearer token: what ``CreateUploadUrl`` hands a client that knows nothing else.

A bearer token is read as a client token when it has a JWT's shape (three base64url
segments, the first a JSON header) and as an upload token otherwise, so each failure is
answered for what the token is: a bad client token is 401 (fetch a new one), a bad, altered
or misdirected upload token 403, and an upload token past its time 410 (it expires with the
upload). In every case the file is neither read nor changed before the token is checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from file_service.errors import UploadExpired
from file_service.models import StoredFile
from file_service.urls import InvalidFileToken, read_upload_token
from file_service.web.backend import FileBackend
from service_kit.clock import Clock
from service_kit.errors import PermissionDenied, Unauthenticated


class ClientIdentity(Protocol):
    """The claims of a verified client token this module uses."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def user_id(self) -> str: ...


class ClientTokenVerifier(Protocol):
    """Verifies browser client tokens (``service_kit.client_tokens.ClientTokens``)."""

    def verify(self, token: str) -> ClientIdentity:
        """The token's claims; raises an ``Unauthenticated`` error when it is not valid."""
        ...


@dataclass(frozen=True, slots=True)
class UploadAuth:
    """Checks the credentials of upload requests."""

    client_tokens: ClientTokenVerifier
    url_secrets: Sequence[str]
    clock: Clock

    def uploader(self, headers: Mapping[str, str]) -> ClientIdentity:
        """The user creating an upload. Raises ``Unauthenticated`` (401) without a valid
        client token."""
        token = _bearer(headers)
        if token is None:
            raise Unauthenticated("an Authorization: Bearer client token is required")
        return self.client_tokens.verify(token)

    async def upload(
        self,
        backend: FileBackend,
        headers: Mapping[str, str],
        file_id: str,
        *,
        offset: int | None = None,
    ) -> StoredFile:
        """The upload ``file_id`` if the request's credentials allow it, in any state; for
        a request bringing bytes at ``offset``, as :meth:`FileBackend.get_upload` has it.

        Raises ``Unauthenticated`` (no or bad client token), ``InvalidFileToken`` (bad
        upload token, or one of another file), ``PermissionDenied`` (another user's upload),
        ``UploadExpired`` (an upload token past its time), ``FileNotFound``.
        """
        token = headers.get("Upload-Token")
        bearer = _bearer(headers)
        if token is None and bearer is not None and not _is_jwt(bearer):
            token = bearer
        if token is not None:
            return await self._by_upload_token(backend, token, file_id, offset)
        if bearer is None:
            raise Unauthenticated("an Authorization: Bearer token or an Upload-Token is required")
        claims = self.client_tokens.verify(bearer)
        file = await _get(backend, claims.tenant_id, file_id, offset)
        if file.user_id != claims.user_id:
            raise PermissionDenied(f"upload {file_id} belongs to another user")
        return file

    async def _by_upload_token(
        self, backend: FileBackend, token: str, file_id: str, offset: int | None
    ) -> StoredFile:
        try:
            grant = read_upload_token(token, self.url_secrets, now=self.clock())
        except InvalidFileToken as exc:
            if exc.expired:
                raise UploadExpired(f"the upload of file {file_id} expired") from exc
            raise
        if grant.file_id != file_id:
            raise InvalidFileToken("the upload token is for another file")
        return await _get(backend, grant.tenant_id, file_id, offset)


async def _get(
    backend: FileBackend, tenant_id: str, file_id: str, offset: int | None
) -> StoredFile:
    if offset is None:
        return await backend.get_file(tenant_id, file_id)
    return await backend.get_upload(tenant_id, file_id, offset=offset)


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization must be 'Bearer <token>'")
    return token.strip()


def _is_jwt(token: str) -> bool:
    # A JWT's first segment is base64url of a JSON object: it always begins with "eyJ".
    return token.count(".") == 2 and token.startswith("eyJ")
