"""Who opened an event stream, kept so that it can be checked again while the stream lives.

A ``SubscribeEvents`` stream outlives the check the interceptor made when it opened.
The tenant service announces every change of a tenant on the bus
(:data:`service_kit.auth.TENANT_CHANGED_TOPIC`); the event service then checks each of
that tenant's streams again, the way it was first authenticated (its client id and
secret, or the Keel peer acting for the tenant), through the process's
:class:`~service_kit.auth.Authenticator` (whose cache forgets the tenant first), and
asks for the stream's scope again. :meth:`StreamAuthorizer.check` says how a stream
must end, if it must:

- the credentials no longer authenticate (the tenant was deleted, or its client
  secret rotated) → UNAUTHENTICATED, "the tenant's credentials changed; reconnect with
  the new ones";
- the tenant no longer holds the scope → PERMISSION_DENIED, naming the scope;
- the tenant service cannot tell now → UNAVAILABLE with RetryInfo: the stream cannot
  be vouched for, and its client resumes from its cursor.

Streams with the same access are checked once, so one rotation costs one failed
check per distinct secret, not one per stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from service_kit.auth import Authenticator, Credentials, TenantContext, require_scope
from service_kit.errors import KeelError, NotFound, PermissionDenied, Unauthenticated, Unavailable

CREDENTIALS_CHANGED: Final = "the tenant's credentials changed; reconnect with the new ones"


@dataclass(frozen=True, slots=True)
class StreamAccess:
    """How a stream's caller authenticated: with the tenant's ``credentials``, or as a Keel
    peer ``acting_for`` a tenant id (the ``x-keel-tenant-id`` metadata)."""

    credentials: Credentials | None = None
    acting_for: str | None = None


class StreamAuthorizer:
    """Checks a stream's access again, as the interceptor checked it at open."""

    def __init__(self, authenticator: Authenticator, *, scope: str) -> None:
        self._authenticator = authenticator
        self._scope = scope

    def forget(self, tenant_id: str | None) -> None:
        """Drop what the authenticator cached of ``tenant_id`` (of every tenant for None):
        each bus subscriber that hears of a change may be the first."""
        if tenant_id is None:
            self._authenticator.forget_all()
        else:
            self._authenticator.forget_tenant(tenant_id)

    async def check(self, tenant_id: str, access: StreamAccess) -> KeelError | None:
        """The error a stream of ``tenant_id`` opened with ``access`` must end with now, or
        None while it may go on."""
        try:
            tenant = await self._tenant(access)
        except (Unauthenticated, NotFound):
            return Unauthenticated(CREDENTIALS_CHANGED)
        except KeelError as exc:
            return Unavailable(
                f"could not check the stream's credentials again after its tenant changed"
                f" ({exc.message}); resume with `after` set to the last cursor received",
                retry_after=1.0,
            )
        if tenant.tenant_id != tenant_id:
            return Unauthenticated(CREDENTIALS_CHANGED)
        try:
            require_scope(tenant, self._scope)
        except PermissionDenied as exc:
            return exc
        return None

    async def _tenant(self, access: StreamAccess) -> TenantContext:
        if access.acting_for is not None:
            return await self._authenticator.tenant_by_id(access.acting_for)
        if access.credentials is not None:
            return await self._authenticator.authenticate(access.credentials)
        raise Unauthenticated(CREDENTIALS_CHANGED)
