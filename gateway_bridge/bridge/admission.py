"""Who may open a connection: a valid client token, its tenant, an allowed origin, and
room under the per-tenant and per-user connection limits.

The token comes in the URL (``/ws?token=…``) or as the first frame (``{"type":
"auth", "token": …}``, within the handshake time). A connection refused here is
closed with the documented code (4001 to 4005, docs/protocol.md); an admitted one is
registered in :class:`~gateway_bridge.bridge.connection.Connections` and greeted
with ``welcome``. A token issued before the tenant's last secret rotation is
revoked; an open connection renews its token with another ``auth`` frame
(:meth:`Admission.renew`) before it expires.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Final
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection

from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.connection import CLOSED, BrowserSocket, Conn, Connections
from service_kit.auth import Authenticator, TenantContext
from service_kit.client_tokens import ClientTokens, InvalidClientToken
from service_kit.clock import rfc3339
from service_kit.config import BridgeSettings
from service_kit.errors import KeelError


class Admission:
    """Admits or refuses new connections (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: BridgeSettings,
        tokens: ClientTokens,
        tenants: Authenticator,
        connections: Connections,
        limits: p.SessionLimits,
        files_url: Callable[[], str],
    ) -> None:
        """``files_url`` answers the base URL of the file endpoints, for ``welcome``."""
        self._settings = settings
        self._files_url = files_url
        self._tokens = tokens
        self._tenants = tenants
        self._connections = connections
        self._limits = limits

    async def admit(self, ws: BrowserSocket) -> Conn | None:
        """Authenticate and register ``ws``, or close it with the right code (None)."""
        assert ws.request is not None
        token = _query_token(ws.request.path)
        if token is None:
            token = await self._token_frame(ws)
            if token is None:
                return None
        try:
            claims = self._tokens.verify(token)
        except InvalidClientToken as exc:
            expired = exc.message == "client token expired"
            code = p.CloseCode.TOKEN_EXPIRED if expired else p.CloseCode.BAD_TOKEN
            await refuse(ws, code, exc.message)
            return None
        try:
            tenant = await self._tenants.tenant_by_id(claims.tenant_id)
        except KeelError as exc:
            await refuse(ws, p.CloseCode.BAD_TOKEN, f"tenant unavailable: {exc.message}")
            return None
        if revoked(tenant, claims.issued_at):
            await refuse(ws, p.CloseCode.BAD_TOKEN, REVOKED)
            return None
        origin = ws.request.headers.get("Origin")
        if not origin_allowed(origin, tenant, ws.request.headers.get("Host")):
            await refuse(ws, p.CloseCode.ORIGIN_REFUSED, f"origin {origin!r} is not allowed")
            return None
        if (
            self._connections.of_tenant(tenant.tenant_id)
            >= self._settings.max_connections_per_tenant
        ):
            await refuse(ws, p.CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
            return None
        if (
            self._connections.of_user(tenant.tenant_id, claims.user_id)
            >= self._settings.max_connections_per_user
        ):
            await refuse(ws, p.CloseCode.TOO_MANY_CONNECTIONS, "too many connections for this user")
            return None
        conn = Conn(
            uuid.uuid4().hex,
            ws,
            tenant,
            claims.user_id,
            p.Session(self._limits),
            issued_at=claims.issued_at,
            expires_at=claims.expires_at,
        )
        self._connections.add(conn)
        try:
            await ws.send_text(
                p.welcome_frame(
                    conn.id,
                    conn.user_id,
                    tenant.tenant_id,
                    rfc3339(conn.expires_at),
                    self._files_url(),
                )
            )
        except BaseException:
            # The browser left during the handshake (or the bridge is stopping): the caller
            # never gets this connection, so it must not stay counted and indexed.
            self._connections.remove(conn)
            raise
        return conn

    async def _token_frame(self, ws: ServerConnection) -> str | None:
        """Without ``?token=``, the first frame must be ``{"type": "auth", "token": ...}``."""
        try:
            async with asyncio.timeout(self._settings.handshake_timeout):
                first = await ws.recv()
        except TimeoutError:
            await refuse(ws, p.CloseCode.AUTH_TIMEOUT, "no token within the handshake time")
            return None
        try:
            command = p.parse_frame(first)
        except p.FrameError as exc:
            await refuse(ws, p.CloseCode.BAD_TOKEN, exc.message)
            return None
        if command.type != "auth":
            await refuse(ws, p.CloseCode.BAD_TOKEN, "the first frame must be auth")
            return None
        return str(command.fields["token"])

    async def renew(self, conn: Conn, token: str, frame_id: object) -> None:
        """An ``auth`` frame on an open connection: a fresh token for the same user moves
        its expiry. Raises FrameError (the connection keeps its current token)."""
        try:
            claims = self._tokens.verify(token)
        except InvalidClientToken as exc:
            raise p.FrameError(p.ErrorCode.INVALID_ARGUMENT, exc.message, frame_id) from exc
        if (claims.tenant_id, claims.user_id) != (conn.tenant_id, conn.user_id):
            raise p.FrameError(
                p.ErrorCode.INVALID_ARGUMENT,
                "the token is for another user; open a new connection for them",
                frame_id,
            )
        if revoked(conn.tenant, claims.issued_at):
            raise p.FrameError(p.ErrorCode.INVALID_ARGUMENT, REVOKED, frame_id)
        conn.issued_at, conn.expires_at = claims.issued_at, claims.expires_at


#: Why a token issued before the tenant's last secret rotation no longer counts.
REVOKED: Final = "client token revoked: the tenant's secret was rotated after it was issued"


def revoked(tenant: TenantContext, issued_at: datetime) -> bool:
    """Whether a client token issued at ``issued_at`` predates the tenant's last secret
    rotation. Tokens carry whole seconds, so a token of the rotation's own second counts
    as after it (a fresh token is never refused; one minted within a second before the
    rotation may live on until it expires)."""
    rotated = tenant.secret_rotated_at
    return rotated is not None and issued_at < rotated.replace(microsecond=0)


async def refuse(ws: ServerConnection, code: p.CloseCode, reason: str) -> None:
    """Close a connection that is not (or no longer) admitted, counting the code."""
    CLOSED.labels(str(int(code))).inc()
    await ws.close(int(code), reason[:120])


def _query_token(path: str) -> str | None:
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


def origin_allowed(origin: str | None, tenant: TenantContext, host: str | None) -> bool:
    """No Origin (not a browser): allowed unless the tenant requires one. Otherwise the
    origin must be listed exactly, or be the bridge's own (its demo page)."""
    if origin is None:
        return not tenant.require_origin
    if origin in tenant.allowed_origins:
        return True
    own = urlsplit(origin)
    return bool(host) and own.netloc == host
