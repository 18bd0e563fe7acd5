"""Who a send reaches: the gateway owns users and channel members; this asks it.

:class:`Recipients` is the role the service needs; :class:`GatewayRecipients` plays it
over gRPC (``keel.channels.v1.ChannelService``), acting for the tenant with the peer
token (metadata ``x-keel-tenant-id`` + ``authorization: Bearer <peer token>``), so the
gateway scopes every lookup by that tenant: another tenant's users and channels are not
found. The gateway checks the tenant's scopes as for any call (``chat:read``).

Checks of a few users that arrive together (concurrent small sends) are answered by one
``BatchGetUsers`` call per tenant (:class:`~service_kit.batching.Batcher`): each check
hears of the users it named that are missing, and of nothing the others named.

Sends remember briefly which users they found (:class:`KnownUsers`): a user a send of the
tenant checked in the last :data:`KNOWN_USER_SECONDS` is not asked about again. That is
safe because a tenant's users go only with the tenant itself (the gateway has no call that
deletes one user), and a deleted tenant's calls are refused before they get here. Only
sends use it; preferences and unsubscribe links ask the gateway every time. Users not found
are never remembered: a user created a moment later can be sent to at once.

gRPC errors are translated here and never leave this module: NOT_FOUND of users becomes
:class:`UsersNotFound` naming them, of a channel :class:`ChannelNotFound`; a refusal for
lack of scope :class:`~service_kit.errors.PermissionDenied` saying so; anything else
:class:`GatewayUnavailable`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from keel.channels.v1 import channels_pb2, channels_pb2_grpc

from notification_service.errors import (
    USER_RESOURCE,
    ChannelNotFound,
    GatewayUnavailable,
    InvalidNotification,
    UsersNotFound,
)
from notification_service.models import MAX_CHANNEL_MEMBERS
from service_kit.batching import Batcher
from service_kit.config import TlsSettings
from service_kit.errors import FieldViolation, PermissionDenied
from service_kit.interceptor import ACTING_FOR_TENANT
from service_kit.tls import open_channel

#: Members read per ListMembers call.
MEMBERS_PAGE = 1000
#: Checks of at most this many users wait for others of the same moment and go with them
#: in one BatchGetUsers call per tenant; larger ones go on their own.
BATCHED_CHECK = 32
#: Most checks answered by one batch, and batches asked at once.
CHECK_BATCH = 128
CHECKS_IN_FLIGHT = 1
#: How long a send remembers a user it found (see the module docstring).
KNOWN_USER_SECONDS = 60.0
#: Most users remembered at once, over every tenant (then the memory starts again).
KNOWN_USERS_MAX = 100_000


class KnownUsers:
    """The users sends found lately, per tenant (see the module docstring)."""

    def __init__(
        self,
        *,
        seconds: float = KNOWN_USER_SECONDS,
        max_users: int = KNOWN_USERS_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seconds = seconds
        self._max_users = max_users
        self._clock = clock
        self._found: dict[tuple[str, str], float] = {}  # (tenant, user) -> found at

    def unknown(self, tenant_id: str, user_ids: Sequence[str]) -> list[str]:
        """Those of ``user_ids`` not found for ``tenant_id`` lately."""
        since = self._clock() - self._seconds
        found = self._found
        return [u for u in user_ids if found.get((tenant_id, u), -1e300) < since]

    def found(self, tenant_id: str, user_ids: Sequence[str]) -> None:
        """The tenant has every one of ``user_ids`` (just checked)."""
        if len(self._found) + len(user_ids) > self._max_users:
            self._found.clear()
        now = self._clock()
        for user_id in user_ids:
            self._found[(tenant_id, user_id)] = now


class Recipients(Protocol):
    """Checks a tenant's users and lists a channel's members."""

    async def check_users(self, tenant_id: str, user_ids: Sequence[str]) -> None:
        """Return when the tenant has every one of ``user_ids``; raise
        :class:`UsersNotFound` naming those it has not."""
        ...

    async def channel_members(self, tenant_id: str, channel_id: str) -> list[str]:
        """The user ids of the channel's members in join order. Raises
        :class:`ChannelNotFound`, or :class:`InvalidNotification` naming ``channel_id``
        when it has more than ``MAX_CHANNEL_MEMBERS`` members."""
        ...


class GatewayRecipients:
    """:class:`Recipients` over gRPC to a gateway (see the module docstring).

    ``address`` is called for the gateway's ``HOST:PORT`` when the first call is made
    (in ``keel serve all`` the process's own port is known only once it listens);
    ``peer_token`` is the process's peer (or operator) token. :meth:`close` closes the
    channel.
    """

    def __init__(
        self,
        address: Callable[[], str | None],
        peer_token: str | None,
        *,
        timeout: float = 10.0,
        tls: TlsSettings | None = None,
    ) -> None:
        self._address = address
        self._peer_token = peer_token
        self._tls = tls or TlsSettings()
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: channels_pb2_grpc.ChannelServiceAsyncStub | None = None
        self._checks: Batcher[tuple[str, tuple[str, ...]], None] = Batcher(
            self._check_batch, max_batch=CHECK_BATCH, max_in_flight=CHECKS_IN_FLIGHT
        )

    def _connect(self) -> channels_pb2_grpc.ChannelServiceAsyncStub:
        if self._stub is None:
            address = self._address()
            if not address:
                raise GatewayUnavailable("no gateway address is configured (KEEL_GATEWAY_ADDR)")
            if not self._peer_token:
                raise GatewayUnavailable("no peer token is configured (KEEL_PEER_TOKEN)")
            self._channel = open_channel(address, self._tls)
            # The generated stub is the same class for both; its aio typing is the AsyncStub's.
            self._stub = cast(
                "channels_pb2_grpc.ChannelServiceAsyncStub",
                channels_pb2_grpc.ChannelServiceStub(self._channel),
            )
        return self._stub

    def _metadata(self, tenant_id: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._peer_token}"), (ACTING_FOR_TENANT, tenant_id))

    async def check_users(self, tenant_id: str, user_ids: Sequence[str]) -> None:
        unique = tuple(dict.fromkeys(user_ids))
        if not unique:
            return
        if len(unique) > BATCHED_CHECK:
            missing = await self._missing(tenant_id, unique)
            if missing:
                raise UsersNotFound(missing)
            return
        await self._checks.submit((tenant_id, unique))

    async def _check_batch(
        self, batch: list[tuple[str, tuple[str, ...]]]
    ) -> list[BaseException | None]:
        """Check the users of many small checks with one BatchGetUsers per tenant (per
        1000 users); each check is answered with the users it named that are missing."""
        asked: dict[str, dict[str, None]] = defaultdict(dict)  # ordered sets, by tenant
        for tenant_id, user_ids in batch:
            asked[tenant_id].update(dict.fromkeys(user_ids))
        tenants = list(asked)
        found = await asyncio.gather(
            *(self._missing(t, tuple(asked[t])) for t in tenants), return_exceptions=True
        )
        missing_by_tenant = dict(zip(tenants, found, strict=True))
        answers: list[BaseException | None] = []
        for tenant_id, user_ids in batch:
            missing = missing_by_tenant[tenant_id]
            if isinstance(missing, BaseException):
                answers.append(missing)
                continue
            unnamed = [u for u in missing if u not in asked[tenant_id]]
            mine = unnamed or [u for u in user_ids if u in missing]
            answers.append(UsersNotFound(mine) if mine else None)
        return answers

    async def _missing(self, tenant_id: str, unique: Sequence[str]) -> list[str]:
        """Those of the distinct ids ``unique`` the tenant has no user for."""
        stub = self._connect()
        missing: list[str] = []
        for start in range(0, len(unique), 1000):
            try:
                await stub.BatchGetUsers(
                    channels_pb2.BatchGetUsersRequest(ids=unique[start : start + 1000]),
                    metadata=self._metadata(tenant_id),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise _translate(exc) from exc
                missing += _missing_users(exc)
        return missing

    async def channel_members(self, tenant_id: str, channel_id: str) -> list[str]:
        stub = self._connect()
        members: list[str] = []
        token = ""
        while True:
            try:
                page = await stub.ListMembers(
                    channels_pb2.ListMembersRequest(
                        channel_id=channel_id, page_size=MEMBERS_PAGE, page_token=token
                    ),
                    metadata=self._metadata(tenant_id),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise ChannelNotFound(channel_id) from exc
                raise _translate(exc) from exc
            members += [m.user_id for m in page.members]
            if len(members) > MAX_CHANNEL_MEMBERS:
                raise InvalidNotification(
                    "the channel is too large to notify",
                    [
                        FieldViolation(
                            "channel_id",
                            f"the channel has more than {MAX_CHANNEL_MEMBERS} members;"
                            " notify its members with user_ids, 1000 at a time",
                        )
                    ],
                )
            token = page.next_page_token
            if not token:
                return members

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None


def _missing_users(exc: grpc.aio.AioRpcError) -> list[str]:
    """The user ids a NOT_FOUND's ResourceInfo details name."""
    status = rpc_status.from_call(exc)
    named = []
    for detail in status.details if status else ():
        info = error_details_pb2.ResourceInfo()
        if detail.Unpack(info) and info.resource_type == USER_RESOURCE:
            named.append(info.resource_name)
    return named or ["(unnamed by the gateway)"]


def _translate(exc: grpc.aio.AioRpcError) -> Exception:
    code = exc.code()
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(
            "sending checks the recipients with keel.channels.v1, which needs the scope"
            f" 'chat:read' as well: {exc.details()}"
        )
    return GatewayUnavailable(f"{code.name}: {(exc.details() or '')[:200]}")
