"""What each client frame does: a dispatch table from frame type to handler.

Subscriptions go to the rooms (:mod:`~gateway_bridge.bridge.fanout`); writes go to the
gateway as the ``ChannelService`` call they stand for, for the connection's tenant and
as its user (the gateway checks the tenant's scopes and the user's membership);
typing and presence go to :mod:`~gateway_bridge.bridge.ephemeral`; the notification
frames to :mod:`~gateway_bridge.bridge.inbox`. Each frame needs the scope the
``ChannelService`` (or ``NotificationService``) method it stands for needs
(:data:`FRAME_SCOPES`),
checked against the tenant's scopes as they are now, not as they were when the
connection opened. A handler refuses
with :class:`~gateway_bridge.bridge.protocol.FrameError`; a failed gateway call
becomes the ``error`` frame of its status (docs/protocol.md has both tables).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Final

import grpc
from keel.channels.v1 import channels_pb2

from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.admission import Admission
from gateway_bridge.bridge.connection import Conn
from gateway_bridge.bridge.ephemeral import Ephemeral
from gateway_bridge.bridge.fanout import Fanout
from gateway_bridge.bridge.inbox import Inbox
from gateway_bridge.bridge.link import GatewayLink
from gateway_bridge.bridge.rpc_errors import frame_error
from service_kit import tracing
from service_kit.auth import Authenticator, require_scope
from service_kit.clock import rfc3339
from service_kit.errors import KeelError, NotFound, PermissionDenied
from service_kit.validation import is_uuid

Reply = Callable[[Conn, str], Awaitable[None]]
Handler = Callable[[Conn, p.Command], Awaitable[None]]

#: The scope each frame needs, as the ``ChannelService`` method it stands for needs it
#: (docs/auth.md): checked against the tenant's scopes as they are now, frame by frame.
FRAME_SCOPES: Final[dict[str, str]] = {
    "subscribe": "chat:read",  # Connect, as ListMessages
    "send": "chat:write",  # SendMessage
    "edit": "chat:write",  # EditMessage
    "delete": "chat:write",  # DeleteMessage
    "react": "chat:write",  # AddReaction
    "unreact": "chat:write",  # RemoveReaction
    "read": "chat:write",  # MarkRead
    "typing": "chat:write",  # tells others; no RPC
    "presence": "presence:read",  # who is online; no RPC
    "inbox": "send:basic",  # NotificationService.ListNotifications
    "mark_read": "send:basic",  # MarkNotificationRead
    "push_config": "send:basic",  # GetTenantSettings
    "push_subscribe": "send:basic",  # RegisterPushSubscription
    "push_unsubscribe": "send:basic",  # DeletePushSubscription
}


class Commands:
    """Runs client commands (see the module docstring)."""

    def __init__(
        self,
        *,
        link: GatewayLink,
        fanout: Fanout,
        ephemeral: Ephemeral,
        inbox: Inbox,
        admission: Admission,
        tenants: Authenticator,
        reply: Reply,
        renewed: Callable[[Conn], None],
    ) -> None:
        self._link = link
        self._fanout = fanout
        self._ephemeral = ephemeral
        self._admission = admission
        self._tenants = tenants
        self._reply = reply
        self._renewed = renewed
        #: One handler per frame type of keel.v1 (``protocol.FRAME_FIELDS``).
        self.handlers: dict[str, Handler] = {
            "auth": self._auth,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "send": self._send,
            "edit": self._edit,
            "delete": self._delete,
            "react": self._react,
            "unreact": self._unreact,
            "typing": self._typing,
            "read": self._read,
            "presence": self._presence,
            "ping": self._ping,
            **inbox.handlers,
        }
        assert self.handlers.keys() == p.FRAME_FIELDS.keys(), "a frame type without a handler"

    async def run(self, conn: Conn, command: p.Command) -> None:
        """Run ``command`` for ``conn``; a refusal is answered with an ``error`` frame.

        When tracing is on, every frame but ``ping`` runs in a ``keel.bridge.<type>`` span,
        the parent of the gateway call it makes (:mod:`service_kit.tracing`)."""
        tracer = tracing.tracer()
        if tracer is None or command.type == "ping":
            await self._run(conn, command)
            return
        with tracer.start_as_current_span(
            f"keel.bridge.{command.type}",
            kind=tracing.SpanKind.SERVER,
            attributes={"keel.tenant_id": conn.tenant_id, "keel.channel_id": command.channel_id},
        ):
            await self._run(conn, command)

    async def _run(self, conn: Conn, command: p.Command) -> None:
        try:
            if command.channel_id and not is_uuid(command.channel_id):
                raise p.FrameError(
                    p.ErrorCode.INVALID_ARGUMENT,
                    f"channel_id {command.channel_id[:40]!r} is not a valid id",
                    command.id,
                )
            scope = FRAME_SCOPES.get(command.type)
            if scope is not None:
                await self._require(conn, command, scope)
            await self.handlers[command.type](conn, command)
        except p.FrameError as exc:
            await self._reply(conn, p.refusal_frame(exc))
        except grpc.aio.AioRpcError as exc:
            await self._reply(conn, p.refusal_frame(frame_error(exc, command.id)))

    async def _require(self, conn: Conn, command: p.Command, scope: str) -> None:
        """Refuse ``command`` unless the tenant holds ``scope`` now (its context is read
        through the process's tenant cache, which tenant changes empty at once)."""
        try:
            conn.tenant = await self._tenants.tenant_by_id(conn.tenant_id)
        except NotFound as exc:
            raise p.FrameError(
                p.ErrorCode.PERMISSION_DENIED, "the tenant no longer exists", command.id
            ) from exc
        except KeelError as exc:
            raise p.FrameError(p.ErrorCode.UNAVAILABLE, exc.message, command.id) from exc
        try:
            require_scope(conn.tenant, scope)
        except PermissionDenied as exc:
            raise p.FrameError(p.ErrorCode.PERMISSION_DENIED, exc.message, command.id) from exc

    async def _ack(self, conn: Conn, command: p.Command, result: dict[str, object]) -> None:
        await self._reply(conn, p.ack_frame(command.id, result))

    # -- the connection and its subscriptions ----------------------------------------------

    async def _auth(self, conn: Conn, command: p.Command) -> None:
        """A fresh token for the same user: the connection lives on until it expires."""
        await self._admission.renew(conn, command.fields["token"], command.id)
        self._renewed(conn)
        await self._ack(conn, command, {"expire_time": rfc3339(conn.expires_at)})

    async def _ping(self, conn: Conn, command: p.Command) -> None:
        await self._reply(conn, p.pong_frame(command.id))

    async def _subscribe(self, conn: Conn, command: p.Command) -> None:
        ack = self._fanout.subscribe(conn, command)
        if ack is not None:
            await self._reply(conn, ack)

    async def _unsubscribe(self, conn: Conn, command: p.Command) -> None:
        if not self._fanout.unsubscribe(conn, command.channel_id):
            raise p.FrameError(p.ErrorCode.NOT_SUBSCRIBED, "not subscribed", command.id)
        await self._ack(conn, command, {"channel_id": command.channel_id})

    # -- writes: ChannelService calls --------------------------------------------------

    async def _send(self, conn: Conn, command: p.Command) -> None:
        fields = command.fields
        key = fields.get("client_msg_id", "")
        if key:
            # Scoped to the user, so two users' client ids never collide.
            key = hashlib.sha256(f"{conn.user_id}\x1f{key}".encode()).hexdigest()
        response = await self._link.send_message(
            conn.tenant_id,
            channels_pb2.SendMessageRequest(
                channel_id=command.channel_id,
                user_id=conn.user_id,
                content=fields["content"],
                message_type=fields.get("message_type", ""),
                reply_to=fields.get("reply_to", ""),
                attachment_ids=fields.get("attachment_ids", []),
                idempotency_key=key,
            ),
        )
        message = response.message
        result = {"message_id": message.id, "channel_id": message.channel_id, "seq": message.seq}
        await self._ack(conn, command, result)

    async def _edit(self, conn: Conn, command: p.Command) -> None:
        response = await self._link.edit_message(
            conn.tenant_id,
            channels_pb2.EditMessageRequest(
                channel_id=command.channel_id,
                message_id=command.fields["message_id"],
                user_id=conn.user_id,
                content=command.fields["content"],
            ),
        )
        await self._ack(conn, command, {"message_id": response.message.id})

    async def _delete(self, conn: Conn, command: p.Command) -> None:
        response = await self._link.delete_message(
            conn.tenant_id,
            channels_pb2.DeleteMessageRequest(
                channel_id=command.channel_id,
                message_id=command.fields["message_id"],
                user_id=conn.user_id,
            ),
        )
        await self._ack(conn, command, {"message_id": response.message.id})

    async def _react(self, conn: Conn, command: p.Command) -> None:
        response = await self._link.add_reaction(
            conn.tenant_id, channels_pb2.AddReactionRequest(**_reaction(conn, command))
        )
        await self._ack_reactions(conn, command, response.message)

    async def _unreact(self, conn: Conn, command: p.Command) -> None:
        response = await self._link.remove_reaction(
            conn.tenant_id, channels_pb2.RemoveReactionRequest(**_reaction(conn, command))
        )
        await self._ack_reactions(conn, command, response.message)

    async def _ack_reactions(
        self, conn: Conn, command: p.Command, message: channels_pb2.Message
    ) -> None:
        counts = {r.emoji: r.count for r in message.reaction_counts}
        await self._ack(conn, command, {"message_id": message.id, "reactions": counts})

    async def _read(self, conn: Conn, command: p.Command) -> None:
        response = await self._link.mark_read(
            conn.tenant_id,
            channels_pb2.MarkReadRequest(
                channel_id=command.channel_id, user_id=conn.user_id, seq=command.fields["seq"]
            ),
        )
        await self._ack(conn, command, {"last_read_seq": response.member.last_read_seq})

    # -- typing and presence -----------------------------------------------------------

    def _require_live(self, conn: Conn, command: p.Command) -> None:
        sub = conn.session.subscriptions.get(command.channel_id)
        if sub is None or not sub.live:
            raise p.FrameError(
                p.ErrorCode.NOT_SUBSCRIBED, "subscribe to the channel first", command.id
            )

    async def _typing(self, conn: Conn, command: p.Command) -> None:
        self._require_live(conn, command)
        await self._ephemeral.typing(conn, command.channel_id)
        if command.id is not None:
            await self._reply(conn, p.ack_frame(command.id))

    async def _presence(self, conn: Conn, command: p.Command) -> None:
        self._require_live(conn, command)
        users = await self._ephemeral.online(conn.tenant_id, command.channel_id)
        await self._reply(conn, p.presence_frame(command.channel_id, users, command.id))


def _reaction(conn: Conn, command: p.Command) -> dict[str, str]:
    """The fields of an Add/RemoveReactionRequest for a ``react``/``unreact`` frame."""
    return {
        "channel_id": command.channel_id,
        "message_id": command.fields["message_id"],
        "user_id": conn.user_id,
        "emoji": command.fields["emoji"],
    }
