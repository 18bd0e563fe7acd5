"""``keel.channels.v1.ChannelService``: protobuf in, :class:`ChatService` call, protobuf out.

Checks that only concern the wire (id formats, page sizes and tokens, enum
values) happen here; everything else is the chat service's.

A bridge's sends on its ``Connect`` stream (``ConnectSend``) are SendMessage calls
by another road: :meth:`ChannelServicer.stream_send` admits each as the interceptor
admits a call (the tenant's scope and rate limit, the request's bounds), runs the same
code as ``SendMessage``, and answers with the status the call would have ended with.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Final, TypeAlias, cast

import grpc
from google.protobuf.descriptor import Descriptor
from keel.channels.v1 import channels_pb2, channels_pb2_grpc

from gateway_bridge.gateway.channels import convert
from gateway_bridge.gateway.channels.attachment_links import AttachmentLinks
from gateway_bridge.gateway.channels.errors import InvalidChat
from gateway_bridge.gateway.channels.hub import ConnectHub
from gateway_bridge.gateway.channels.models import (
    ChannelId,
    ChannelType,
    MessageQuery,
    NewMessage,
    Role,
    User,
    UserId,
)
from gateway_bridge.gateway.channels.service import ChatService
from service_kit import tracing
from service_kit.auth import Authenticator, TenantId, current_tenant, current_tenant_var
from service_kit.bounds import RequestBounds, refusal
from service_kit.errors import InvalidArgument
from service_kit.interceptor import MALFORMED_REQUEST, admit_tenant, failure_status, record_rpc
from service_kit.protobuf import dict_of, timestamp
from service_kit.ratelimit import RateLimiter
from service_kit.validation import (
    Violations,
    decode_seq_position,
    decode_time_position,
    encode_page_token,
    page_size,
    time_page,
    valid_id,
)

Context: TypeAlias = grpc.aio.ServicerContext


_SERVICE: Final = "keel.channels.v1.ChannelService"
#: The scope SendMessage needs (the gateway's method policies), and so a stream send.
SEND_SCOPE: Final = "chat:write"
_SEND_BOUNDS: Final = RequestBounds(cast("Descriptor", channels_pb2.SendMessageRequest.DESCRIPTOR))


def _tenant() -> TenantId:
    return current_tenant().tenant_id


def _ids(**fields: str) -> None:
    """INVALID_ARGUMENT unless every given field holds a Keel id (a UUID)."""
    for name, value in fields.items():
        valid_id(name, value)


class ChannelServicer(channels_pb2_grpc.ChannelServiceServicer):
    """The gRPC face of :class:`ChatService` and of the bridge's :class:`ConnectHub`."""

    def __init__(
        self,
        chat: ChatService,
        hub: ConnectHub,
        links: AttachmentLinks,
        *,
        tenants: Authenticator | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        """``links`` signs the download URLs of the attachments of every message returned.
        With ``tenants`` and ``rate_limiter`` (the server's own) the Connect stream takes the
        bridge's sends (:meth:`stream_send`); without, bridges make unary calls."""
        self._chat = chat
        self._hub = hub
        self._links = links
        self._tenants = tenants
        self._rate_limiter = rate_limiter

    # -- channels -----------------------------------------------------------------------

    async def CreateChannel(
        self, request: channels_pb2.CreateChannelRequest, context: Context
    ) -> channels_pb2.CreateChannelResponse:
        channel = await self._chat.create_channel(
            _tenant(),
            name=request.name,
            type=convert.CHANNEL_TYPES_BY_PROTO.get(request.type, ChannelType.GROUP),
            metadata=dict_of(request.metadata),
            created_by=request.created_by,
            member_ids=list(request.member_ids),
            request_id=request.request_id,
        )
        return channels_pb2.CreateChannelResponse(channel=convert.channel_to_proto(channel))

    async def GetChannel(
        self, request: channels_pb2.GetChannelRequest, context: Context
    ) -> channels_pb2.GetChannelResponse:
        _ids(id=request.id)
        channel = await self._chat.get_channel(_tenant(), request.id)
        return channels_pb2.GetChannelResponse(channel=convert.channel_to_proto(channel))

    async def ListChannels(
        self, request: channels_pb2.ListChannelsRequest, context: Context
    ) -> channels_pb2.ListChannelsResponse:
        limit = page_size(request.page_size)
        query = f"channels:{request.type}:{request.member_id}"
        after = decode_time_position(request.page_token, query=query)
        found = await self._chat.list_channels(
            _tenant(),
            limit=limit + 1,
            after=after,
            type=convert.CHANNEL_TYPES_BY_PROTO.get(request.type),
            member_id=request.member_id,
        )
        page, token = time_page(found, limit, lambda x: (x.created_at, x.id), query=query)
        return channels_pb2.ListChannelsResponse(
            channels=[convert.channel_to_proto(c) for c in page], next_page_token=token
        )

    async def UpdateChannel(
        self, request: channels_pb2.UpdateChannelRequest, context: Context
    ) -> channels_pb2.UpdateChannelResponse:
        _ids(**{"channel.id": request.channel.id})
        channel = await self._chat.update_channel(
            _tenant(),
            request.channel.id,
            name=request.channel.name,
            metadata=dict_of(request.channel.metadata),
            fields=list(request.update_mask.paths),
        )
        return channels_pb2.UpdateChannelResponse(channel=convert.channel_to_proto(channel))

    async def DeleteChannel(
        self, request: channels_pb2.DeleteChannelRequest, context: Context
    ) -> channels_pb2.DeleteChannelResponse:
        _ids(id=request.id)
        await self._chat.delete_channel(_tenant(), request.id)
        return channels_pb2.DeleteChannelResponse()

    # -- users --------------------------------------------------------------------------

    async def UpsertUser(
        self, request: channels_pb2.UpsertUserRequest, context: Context
    ) -> channels_pb2.UpsertUserResponse:
        user = await self._chat.upsert_user(
            User(
                tenant_id=_tenant(),
                id=UserId(request.user.id),
                username=request.user.username,
                email=request.user.email,
                avatar=request.user.avatar,
                metadata=dict_of(request.user.metadata),
            ),
            list(request.update_mask.paths) if request.update_mask.paths else None,
        )
        return channels_pb2.UpsertUserResponse(user=convert.user_to_proto(user))

    async def GetUser(
        self, request: channels_pb2.GetUserRequest, context: Context
    ) -> channels_pb2.GetUserResponse:
        user = await self._chat.get_user(_tenant(), request.id)
        return channels_pb2.GetUserResponse(user=convert.user_to_proto(user))

    async def ListUsers(
        self, request: channels_pb2.ListUsersRequest, context: Context
    ) -> channels_pb2.ListUsersResponse:
        limit = page_size(request.page_size)
        after = decode_time_position(request.page_token, query="users")
        found = await self._chat.list_users(_tenant(), limit=limit + 1, after=after)
        page, token = time_page(
            found, limit, lambda u: (u.created_at or datetime.min, u.id), query="users"
        )
        return channels_pb2.ListUsersResponse(
            users=[convert.user_to_proto(u) for u in page], next_page_token=token
        )

    async def BatchGetUsers(
        self, request: channels_pb2.BatchGetUsersRequest, context: Context
    ) -> channels_pb2.BatchGetUsersResponse:
        found = await self._chat.batch_get_users(_tenant(), list(request.ids))
        return channels_pb2.BatchGetUsersResponse(users=[convert.user_to_proto(u) for u in found])

    # -- members ------------------------------------------------------------------------

    async def AddMember(
        self, request: channels_pb2.AddMemberRequest, context: Context
    ) -> channels_pb2.AddMemberResponse:
        _ids(channel_id=request.channel_id)
        member = await self._chat.add_member(
            _tenant(),
            request.channel_id,
            request.user_id,
            convert.ROLES_BY_PROTO.get(request.role, Role.MEMBER),
        )
        return channels_pb2.AddMemberResponse(member=convert.member_to_proto(member))

    async def RemoveMember(
        self, request: channels_pb2.RemoveMemberRequest, context: Context
    ) -> channels_pb2.RemoveMemberResponse:
        _ids(channel_id=request.channel_id)
        await self._chat.remove_member(_tenant(), request.channel_id, request.user_id)
        return channels_pb2.RemoveMemberResponse()

    async def ListMembers(
        self, request: channels_pb2.ListMembersRequest, context: Context
    ) -> channels_pb2.ListMembersResponse:
        _ids(channel_id=request.channel_id)
        limit = page_size(request.page_size)
        query = f"members:{request.channel_id}"
        after = decode_time_position(request.page_token, query=query)
        found = await self._chat.list_members(
            _tenant(), request.channel_id, limit=limit + 1, after=after
        )
        page, token = time_page(found, limit, lambda x: (x.joined_at, x.user_id), query=query)
        return channels_pb2.ListMembersResponse(
            members=[convert.member_to_proto(m) for m in page], next_page_token=token
        )

    # -- messages -----------------------------------------------------------------------

    async def SendMessage(
        self, request: channels_pb2.SendMessageRequest, context: Context
    ) -> channels_pb2.SendMessageResponse:
        return channels_pb2.SendMessageResponse(message=await self._send(_tenant(), request))

    async def _send(
        self, tenant_id: TenantId, request: channels_pb2.SendMessageRequest
    ) -> channels_pb2.Message:
        """What SendMessage and a stream send do, for an admitted tenant."""
        valid_id("channel_id", request.channel_id)
        if request.reply_to:
            valid_id("reply_to", request.reply_to)
        message = await self._chat.send_message(
            tenant_id,
            NewMessage(
                channel_id=ChannelId(request.channel_id),
                user_id=request.user_id,
                content=request.content,
                message_type=request.message_type or "text",
                reply_to=request.reply_to,
                attachment_ids=tuple(request.attachment_ids),
                idempotency_key=request.idempotency_key,
            ),
        )
        return convert.message_to_proto(message, self._links)

    async def EditMessage(
        self, request: channels_pb2.EditMessageRequest, context: Context
    ) -> channels_pb2.EditMessageResponse:
        _ids(channel_id=request.channel_id, message_id=request.message_id)
        message = await self._chat.edit_message(
            _tenant(), request.channel_id, request.message_id, request.user_id, request.content
        )
        return channels_pb2.EditMessageResponse(
            message=convert.message_to_proto(message, self._links)
        )

    async def DeleteMessage(
        self, request: channels_pb2.DeleteMessageRequest, context: Context
    ) -> channels_pb2.DeleteMessageResponse:
        _ids(channel_id=request.channel_id, message_id=request.message_id)
        message = await self._chat.delete_message(
            _tenant(), request.channel_id, request.message_id, request.user_id
        )
        return channels_pb2.DeleteMessageResponse(
            message=convert.message_to_proto(message, self._links)
        )

    async def GetMessage(
        self, request: channels_pb2.GetMessageRequest, context: Context
    ) -> channels_pb2.GetMessageResponse:
        _ids(channel_id=request.channel_id, message_id=request.message_id)
        message = await self._chat.get_message(_tenant(), request.channel_id, request.message_id)
        return channels_pb2.GetMessageResponse(
            message=convert.message_to_proto(message, self._links)
        )

    async def ListMessages(
        self, request: channels_pb2.ListMessagesRequest, context: Context
    ) -> channels_pb2.ListMessagesResponse:
        _ids(channel_id=request.channel_id)
        if request.reply_to:
            _ids(reply_to=request.reply_to)
        v = Violations()
        v.check(request.before_seq >= 0, "before_seq", "must not be negative")
        v.check(request.after_seq >= 0, "after_seq", "must not be negative")
        v.check(0 <= request.offset <= 100_000, "offset", "must be between 0 and 100000")
        v.raise_if_any(InvalidChat)
        limit = page_size(request.page_size)
        newest_first = request.order != channels_pb2.MESSAGE_ORDER_OLDEST_FIRST
        fingerprint = (
            f"messages:{request.channel_id}:{newest_first}:{request.before_seq}:"
            f"{request.after_seq}:{request.reply_to}"
        )
        last_seq = decode_seq_position(request.page_token, query=fingerprint)
        before, after, offset = request.before_seq, request.after_seq, request.offset
        if last_seq is not None:
            offset = 0
            if newest_first:
                before = last_seq
            else:
                after = last_seq
        found = await self._chat.list_messages(
            _tenant(),
            MessageQuery(
                channel_id=ChannelId(request.channel_id),
                limit=limit + 1,
                newest_first=newest_first,
                before_seq=before,
                after_seq=after,
                reply_to=request.reply_to,
                offset=offset,
            ),
        )
        page = found[:limit]
        token = encode_page_token([page[-1].seq], query=fingerprint) if len(found) > limit else ""
        return channels_pb2.ListMessagesResponse(
            messages=[convert.message_to_proto(m, self._links) for m in page], next_page_token=token
        )

    # -- reactions, read state, tokens --------------------------------------------------

    async def AddReaction(
        self, request: channels_pb2.AddReactionRequest, context: Context
    ) -> channels_pb2.AddReactionResponse:
        _ids(channel_id=request.channel_id, message_id=request.message_id)
        message = await self._chat.add_reaction(
            _tenant(), request.channel_id, request.message_id, request.user_id, request.emoji
        )
        return channels_pb2.AddReactionResponse(
            message=convert.message_to_proto(message, self._links)
        )

    async def RemoveReaction(
        self, request: channels_pb2.RemoveReactionRequest, context: Context
    ) -> channels_pb2.RemoveReactionResponse:
        _ids(channel_id=request.channel_id, message_id=request.message_id)
        message = await self._chat.remove_reaction(
            _tenant(), request.channel_id, request.message_id, request.user_id, request.emoji
        )
        return channels_pb2.RemoveReactionResponse(
            message=convert.message_to_proto(message, self._links)
        )

    async def MarkRead(
        self, request: channels_pb2.MarkReadRequest, context: Context
    ) -> channels_pb2.MarkReadResponse:
        _ids(channel_id=request.channel_id)
        member = await self._chat.mark_read(
            _tenant(), request.channel_id, request.user_id, request.seq
        )
        return channels_pb2.MarkReadResponse(member=convert.member_to_proto(member))

    async def GetUnreadCounts(
        self, request: channels_pb2.GetUnreadCountsRequest, context: Context
    ) -> channels_pb2.GetUnreadCountsResponse:
        counts = await self._chat.unread_counts(_tenant(), request.user_id)
        return channels_pb2.GetUnreadCountsResponse(
            unread_counts=[convert.unread_to_proto(c) for c in counts]
        )

    async def IssueClientToken(
        self, request: channels_pb2.IssueClientTokenRequest, context: Context
    ) -> channels_pb2.IssueClientTokenResponse:
        token, expires = await self._chat.issue_client_token(
            _tenant(), request.user_id, request.ttl_seconds
        )
        return channels_pb2.IssueClientTokenResponse(token=token, expire_time=timestamp(expires))

    # -- the bridge's stream ------------------------------------------------------------

    def Connect(
        self, request_iterator: AsyncIterator[channels_pb2.ConnectRequest], context: Context
    ) -> AsyncIterator[channels_pb2.ConnectResponse]:
        takes_sends = self._tenants is not None and self._rate_limiter is not None
        return self._hub.serve(
            request_iterator, context, sends=self.stream_send if takes_sends else None
        )

    async def stream_send(self, send: channels_pb2.ConnectSend) -> channels_pb2.SendResult:
        """A bridge's send on its stream, handled as a SendMessage call for ``tenant_id``
        (see the module docstring); when tracing is on, in a server span named as the
        call's, whose parent is the bridge's span (``traceparent``)."""
        tracer = tracing.tracer()
        if tracer is None:
            return await self._stream_send(send)
        with tracer.start_as_current_span(
            f"/{_SERVICE}/SendMessage",
            context=tracing.context_from(send.traceparent),
            kind=tracing.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": _SERVICE, "rpc.method": "SendMessage"},
        ):
            return await self._stream_send(send)

    async def _stream_send(self, send: channels_pb2.ConnectSend) -> channels_pb2.SendResult:
        assert self._tenants is not None and self._rate_limiter is not None
        started = time.perf_counter()
        tenant = None
        code = grpc.StatusCode.OK
        try:
            tenant = await self._tenants.tenant_by_id(send.tenant_id)
            await admit_tenant(tenant, SEND_SCOPE, self._rate_limiter)
            request = _send_request(send.request)
            current_tenant_var.set(tenant)  # this send's task only
            message = await self._send(tenant.tenant_id, request)
            return channels_pb2.SendResult(correlation_id=send.correlation_id, message=message)
        except Exception as exc:
            code, status = failure_status(exc, _SERVICE, "SendMessage", uuid.uuid4().hex)
        finally:
            record_rpc(_SERVICE, "SendMessage", code, started, tenant)
        return channels_pb2.SendResult(
            correlation_id=send.correlation_id, status=status.SerializeToString()
        )


def _send_request(raw: bytes) -> channels_pb2.SendMessageRequest:
    """The SendMessageRequest of a stream send, refused as the interceptor refuses a
    call's: malformed, or out of its bounds (naming each field)."""
    try:
        request = channels_pb2.SendMessageRequest.FromString(raw)
    except Exception as exc:
        raise InvalidArgument(MALFORMED_REQUEST) from exc
    violations = _SEND_BOUNDS.violations(request, encoded_size=len(raw))
    if violations:
        raise refusal(violations)
    return request
