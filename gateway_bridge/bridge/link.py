"""The bridge's link to a gateway: one ``Connect`` stream, and unary calls for tenants.

The stream is reopened with backoff whenever it ends; on each (re)open the
bridge's current subscriptions are sent first (``resubscriptions``), so after
a gateway restart every channel resumes from the seq the bridge last
delivered. Unary calls act for a tenant with the operator token and
``x-keel-tenant-id`` metadata; the gateway checks the tenant's scopes.

Sends go up the stream instead when the gateway says it takes them
(:data:`~gateway_bridge.vocabulary.CONNECT_SENDS` in its initial metadata): each
``ConnectSend`` carries a correlation id, its ``SendResult`` resolves the waiting
call (the sends waiting while the stream writes go up together in one request,
``ConnectSends``, so a busy bridge makes fewer, larger writes), and a failed send
raises the same ``AioRpcError`` the unary call would have
(:func:`~gateway_bridge.bridge.rpc_errors.status_error`). When the stream ends before
a send is answered, the send fails UNAVAILABLE: it may or may not have been stored,
and a retry with the same idempotency key answers the stored message. A gateway
that does not take sends, or no stream up at the moment, gets a unary call.

Subscriptions waiting in the outbox one after another go up together too (a
subscription waits ``_SUBSCRIBES_GATHER_SECONDS`` for others), as one
``ConnectSubscribes``, when the gateway takes them
(:data:`~gateway_bridge.vocabulary.CONNECT_SUBSCRIBES`), as do the resubscriptions
after a reconnect; their results may come down together (``SubscribeResults``), and
each is handed on as if it had come alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar, cast

import grpc
from keel.channels.v1 import channels_pb2, channels_pb2_grpc

from gateway_bridge.bridge.rpc_errors import rpc_error, status_error
from gateway_bridge.vocabulary import CONNECT_SENDS, CONNECT_SUBSCRIBES, batch_length
from service_kit import tracing
from service_kit.interceptor import ACTING_FOR_TENANT

log = logging.getLogger(__name__)

#: Put in the outbox when sends wait to go up (:meth:`GatewayLink.send_message`).
_SENDS: Final = channels_pb2.ConnectRequest()
#: At most this many sends, and about this many bytes of them, go in one request (the
#: gateway takes requests of 4 MiB and more).
_SENDS_PER_REQUEST: Final = 500
_SENDS_BYTES: Final = 1 << 20
#: At most this many subscriptions go in one request (each ~200 bytes: one channel).
_SUBSCRIBES_PER_REQUEST: Final = 500
#: How long a subscription waits for others to go up with it. A request costs the bridge
#: and the gateway about the same whether it carries one subscription or dozens (the
#: gateway checks a request's access in one statement); browsers connecting by the
#: hundred a second subscribe a few milliseconds apart.
_SUBSCRIBES_GATHER_SECONDS: Final = 0.002

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class GatewayLink:
    """One bridge process's connection to the gateway (see the module docstring)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        peer_token: str,
        *,
        on_response: Callable[[channels_pb2.ConnectResponse], None],
        resubscriptions: Callable[[], Sequence[channels_pb2.ConnectRequest]],
        call_timeout: float = 10.0,
    ) -> None:
        # The generated stub is the same class for both; its aio typing is the AsyncStub's.
        self.stub = cast(
            "channels_pb2_grpc.ChannelServiceAsyncStub",
            channels_pb2_grpc.ChannelServiceStub(channel),
        )
        self._auth = ("authorization", f"Bearer {peer_token}")
        self._on_response = on_response
        self._resubscriptions = resubscriptions
        self._call_timeout = call_timeout
        self._outbox: asyncio.Queue[channels_pb2.ConnectRequest] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._was_connected = False  # until the first stream opens, failures are waits
        self.connected = asyncio.Event()
        #: Whether the open stream takes sends, and subscriptions in batches (its gateway
        #: said so).
        self.stream_sends = False
        self.stream_subscribes = False
        self._sends: dict[int, asyncio.Future[channels_pb2.SendResult]] = {}
        self._ready_sends: list[channels_pb2.ConnectSend] = []  # not written yet
        self._last_send = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-link")

    def send(self, request: channels_pb2.ConnectRequest) -> None:
        """Queue a subscription change for the stream (sent in order)."""
        self._outbox.put_nowait(request)

    def subscribe(
        self, key: str, tenant_id: str, channel_id: str, *, user_id: str = "", since: int | None
    ) -> None:
        """Queue :func:`subscribe_request`."""
        self.send(subscribe_request(key, tenant_id, channel_id, user_id=user_id, since=since))

    def unsubscribe(self, key: str, channel_ids: Sequence[str] = ()) -> None:
        """``key`` stops following ``channel_ids`` (every channel when empty)."""
        self.send(
            channels_pb2.ConnectRequest(
                unsubscribe=channels_pb2.ConnectUnsubscribe(
                    subscription_key=key, channel_ids=list(channel_ids)
                )
            )
        )

    # -- unary calls for a tenant (each raises grpc.aio.AioRpcError) -----------------------

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req, tenant_id: str
    ) -> Resp:
        """Call ``method`` for ``tenant_id``: the operator token, ``x-keel-tenant-id``, and
        the current span's ``traceparent`` when tracing is on."""
        metadata: tuple[tuple[str, str], ...] = (self._auth, (ACTING_FOR_TENANT, tenant_id))
        if tracing.tracer() is not None:
            metadata += tuple(tracing.outgoing_metadata())
        response: Resp = await method(request, metadata=metadata, timeout=self._call_timeout)
        return response

    async def send_message(
        self, tenant_id: str, request: channels_pb2.SendMessageRequest
    ) -> channels_pb2.SendMessageResponse:
        """Send on the stream when it is up and takes sends, else by a unary call."""
        if not (self.stream_sends and self.connected.is_set()):
            return await self._call(self.stub.SendMessage, request, tenant_id)
        self._last_send += 1
        correlation_id = self._last_send
        answer: asyncio.Future[channels_pb2.SendResult] = asyncio.get_running_loop().create_future()
        self._sends[correlation_id] = answer
        self._ready_sends.append(
            channels_pb2.ConnectSend(
                correlation_id=correlation_id,
                tenant_id=tenant_id,
                request=request.SerializeToString(),
                traceparent=tracing.traceparent() if tracing.tracer() is not None else "",
            )
        )
        if len(self._ready_sends) == 1:  # one marker stands for every send waiting
            self.send(_SENDS)
        try:
            async with asyncio.timeout(self._call_timeout):
                result = await answer
        except TimeoutError:
            raise rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the gateway did not answer the send in time"
            ) from None
        finally:
            self._sends.pop(correlation_id, None)
        if result.status:
            raise status_error(result.status)
        return channels_pb2.SendMessageResponse(message=result.message)

    def _answered(self, results: channels_pb2.SendResults) -> None:
        for result in results.results:
            answer = self._sends.pop(result.correlation_id, None)
            if answer is not None and not answer.done():
                answer.set_result(result)

    def _take_sends(self) -> channels_pb2.ConnectRequest:
        """The request carrying the sends waiting (as many as fit; the marker goes back in
        the outbox for the rest)."""
        taken = batch_length(
            (len(send.request) + 100 for send in self._ready_sends),
            _SENDS_BYTES,
            _SENDS_PER_REQUEST,
        )
        batch = self._ready_sends[:taken]
        del self._ready_sends[:taken]
        if self._ready_sends:
            self.send(_SENDS)
        return channels_pb2.ConnectRequest(sends=channels_pb2.ConnectSends(sends=batch))

    def _sends_lost(self) -> None:
        """The stream ended: every send not answered yet fails UNAVAILABLE."""
        sends, self._sends = self._sends, {}
        for answer in sends.values():
            if not answer.done():
                answer.set_exception(
                    rpc_error(
                        grpc.StatusCode.UNAVAILABLE,
                        "the link to the gateway broke before the send was answered; it may"
                        " have been stored: retry with the same client_msg_id",
                    )
                )

    async def edit_message(
        self, tenant_id: str, request: channels_pb2.EditMessageRequest
    ) -> channels_pb2.EditMessageResponse:
        return await self._call(self.stub.EditMessage, request, tenant_id)

    async def delete_message(
        self, tenant_id: str, request: channels_pb2.DeleteMessageRequest
    ) -> channels_pb2.DeleteMessageResponse:
        return await self._call(self.stub.DeleteMessage, request, tenant_id)

    async def add_reaction(
        self, tenant_id: str, request: channels_pb2.AddReactionRequest
    ) -> channels_pb2.AddReactionResponse:
        return await self._call(self.stub.AddReaction, request, tenant_id)

    async def remove_reaction(
        self, tenant_id: str, request: channels_pb2.RemoveReactionRequest
    ) -> channels_pb2.RemoveReactionResponse:
        return await self._call(self.stub.RemoveReaction, request, tenant_id)

    async def mark_read(
        self, tenant_id: str, request: channels_pb2.MarkReadRequest
    ) -> channels_pb2.MarkReadResponse:
        return await self._call(self.stub.MarkRead, request, tenant_id)

    async def _run(self) -> None:
        backoff = 0.1
        while not self._closing:
            call = self.stub.Connect(metadata=(self._auth,))
            writer: asyncio.Task[None] | None = None
            try:
                # The gateway sends its initial metadata as soon as it accepted the stream:
                # until then (a gateway still starting, refusing, or not there) the link is
                # not up, and /healthz must not say it is.
                metadata = await call.initial_metadata()
                if not call.done():  # else the read below raises the gateway's refusal
                    said = tuple(metadata or ())
                    self.stream_sends = CONNECT_SENDS in said
                    self.stream_subscribes = CONNECT_SUBSCRIBES in said
                    # What was queued meanwhile is covered by the resubscriptions.
                    while not self._outbox.empty():
                        self._outbox.get_nowait()
                    self._ready_sends.clear()  # failed with the stream they were for
                    for request in self._batched(self._resubscriptions()):
                        await call.write(request)
                    writer = asyncio.create_task(self._write(call), name="gateway-link-writer")
                    self.connected.set()
                    self._was_connected = True
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        break
                    backoff = 0.1
                    payload = response.WhichOneof("payload")
                    if payload == "send_results":
                        self._answered(response.send_results)
                    elif payload == "subscribe_results":
                        for result in response.subscribe_results.results:
                            self._on_response(channels_pb2.ConnectResponse(subscribe_result=result))
                    else:
                        self._on_response(response)
                log.warning("gateway closed the Connect stream; reconnecting")
            except grpc.aio.AioRpcError as exc:
                if self._closing:
                    return
                log.warning(
                    "gateway link lost; reconnecting"
                    if self._was_connected
                    else "waiting for the gateway (KEEL_GATEWAY_ADDR)",
                    extra={"code": exc.code().name, "details": exc.details()},
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._closing:
                    return
                log.exception("gateway link failed; reconnecting")
            finally:
                self.connected.clear()
                self.stream_sends = self.stream_subscribes = False
                self._sends_lost()
                if writer is not None:
                    writer.cancel()
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _write(self, call: Any) -> None:
        next_up: channels_pb2.ConnectRequest | None = None  # taken, not written yet
        try:
            while True:
                request = next_up if next_up is not None else await self._outbox.get()
                next_up = None
                if request is _SENDS:
                    request = self._take_sends()
                elif self.stream_subscribes and request.WhichOneof("command") == "subscribe":
                    # Those that come meanwhile go up with it (see _SUBSCRIBES_GATHER_SECONDS).
                    await asyncio.sleep(_SUBSCRIBES_GATHER_SECONDS)
                    request, next_up = self._take_subscribes(request)
                await call.write(request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the stream ended; the reader reconnects and resubscribes

    def _take_subscribes(
        self, first: channels_pb2.ConnectRequest
    ) -> tuple[channels_pb2.ConnectRequest, channels_pb2.ConnectRequest | None]:
        """``first`` and the subscriptions queued right after it, as one request (alone
        when none is); and the request taken after them that is not one, if any."""
        subscribes = [first.subscribe]
        while len(subscribes) < _SUBSCRIBES_PER_REQUEST and not self._outbox.empty():
            request = self._outbox.get_nowait()
            if request is _SENDS or request.WhichOneof("command") != "subscribe":
                return _subscribes(subscribes), request
            subscribes.append(request.subscribe)
        return (first if len(subscribes) == 1 else _subscribes(subscribes)), None

    def _batched(
        self, requests: Sequence[channels_pb2.ConnectRequest]
    ) -> list[channels_pb2.ConnectRequest]:
        """``requests`` with the subscriptions that follow one another in batches, when
        the stream takes them."""
        if not self.stream_subscribes:
            return list(requests)
        batched: list[channels_pb2.ConnectRequest] = []
        run: list[channels_pb2.ConnectSubscribe] = []
        for request in requests:
            if request.WhichOneof("command") == "subscribe":
                run.append(request.subscribe)
                if len(run) < _SUBSCRIBES_PER_REQUEST:
                    continue
            if run:
                batched.append(_subscribes(run))
                run = []
            if request.WhichOneof("command") != "subscribe":
                batched.append(request)
        if run:
            batched.append(_subscribes(run))
        return batched

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            # grpc may turn the cancellation into a CANCELLED status; the flag ends the loop.
            await asyncio.wait([self._task], timeout=5)


def _subscribes(subscribes: list[channels_pb2.ConnectSubscribe]) -> channels_pb2.ConnectRequest:
    return channels_pb2.ConnectRequest(
        subscribes=channels_pb2.ConnectSubscribes(subscribes=subscribes)
    )


def subscribe_request(
    key: str, tenant_id: str, channel_id: str, *, user_id: str = "", since: int | None
) -> channels_pb2.ConnectRequest:
    """Subscribe ``key`` to the channel (as ``user_id``, whose access the gateway checks;
    empty for the bridge's own room keys): the messages after ``since`` are replayed to
    ``key`` (none when ``since`` is None; in batches, maybe shared with other keys and
    starting before ``since``), then a ``SubscribeResult`` answers."""
    position = channels_pb2.ChannelPosition(channel_id=channel_id)
    if since is not None:
        position.since_seq = since
    return channels_pb2.ConnectRequest(
        subscribe=channels_pb2.ConnectSubscribe(
            subscription_key=key,
            tenant_id=tenant_id,
            user_id=user_id,
            channels=[position],
            batch_replays=True,
        )
    )
