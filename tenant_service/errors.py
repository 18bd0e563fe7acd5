"""Errors of the tenant service.

Exception tree (each a kind of :mod:`service_kit.errors` error, which decides
its gRPC status)::

    KeelError
     ├── InvalidArgument
     │    └── InvalidTenant            a field of a tenant is malformed
     ├── NotFound
     │    ├── TenantNotFound           no tenant with that id
     │    └── DeletionNotFound         no deletion of a tenant with that id
     ├── AlreadyExists
     │    └── TenantConflict           name, client id or request id taken
     ├── Unauthenticated
     │    └── InvalidCredentials       unknown client id or wrong secret
     └── ResourceExhausted
          ├── TooManyFailedAttempts    a client id failed validation too often
          └── SlowChecksBusy           too many slow (scrypt) credential checks at once
"""

from __future__ import annotations

from service_kit.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)


class InvalidTenant(InvalidArgument):
    """A tenant field is malformed (the violations name which)."""


class TenantNotFound(NotFound):
    """No tenant has the given id."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"tenant {tenant_id!r} not found")


class DeletionNotFound(NotFound):
    """No tenant with the given id was ever deleted (or the id names a live tenant)."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(
            f"tenant {tenant_id!r} has no deletion: it was never deleted, or never existed"
        )


class TenantConflict(AlreadyExists):
    """Another tenant already uses this name, client id or request id."""


class InvalidCredentials(Unauthenticated):
    """The client id is unknown or the secret does not match (deliberately not saying which)."""

    def __init__(self) -> None:
        super().__init__("invalid client id or client secret")


class TooManyFailedAttempts(ResourceExhausted):
    """This client id failed validation too often; wait before trying again."""

    def __init__(self, client_id: str, retry_after: float) -> None:
        super().__init__(
            f"too many failed attempts for client id {client_id!r}; retry in {retry_after:.1f}s",
            retry_after,
        )


class SlowChecksBusy(ResourceExhausted):
    """Every slot for slow (chosen-secret) credential checks is taken and too many wait."""

    def __init__(self) -> None:
        super().__init__("too many slow credential checks in progress", retry_after=1.0)
