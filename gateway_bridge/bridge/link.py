"""The bridge's link to a gateway: one ``Connect`` stream, and unary calls for tenants.

The stream is reopened with backoff whenever it ends; on each (re)open the
bridge's current subscriptions are sent first (``resubscriptions``), so after
a gateway restart every channel resumes from the seq the bridge last
delivered. Unary calls act for a tenant with the operator token and
``x-keel-tenant-id`` metadata; the gateway checks the tenant's scopes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from keel.channels.v1 import channels_pb2, channels_pb2_grpc

from service_kit.interceptor import ACTING_FOR_TENANT

log = logging.getLogger(__name__)


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
        self.stub = channels_pb2_grpc.ChannelServiceStub(channel)
        self._auth = ("authorization", f"Bearer {peer_token}")
        self._on_response = on_response
        self._resubscriptions = resubscriptions
        self._call_timeout = call_timeout
        self._outbox: asyncio.Queue[channels_pb2.ConnectRequest] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-link")

    def send(self, request: channels_pb2.ConnectRequest) -> None:
        """Queue a subscription change for the stream (sent in order)."""
        self._outbox.put_nowait(request)

    def acting_for(self, tenant_id: str) -> tuple[tuple[str, str], ...]:
        """Metadata for a unary call made for ``tenant_id``."""
        return (self._auth, (ACTING_FOR_TENANT, tenant_id))

    async def call(self, method: str, request: Any, tenant_id: str) -> Any:
        """Call ``ChannelService.<method>`` for the tenant; raises ``grpc.aio.AioRpcError``."""
        return await getattr(self.stub, method)(
            request, metadata=self.acting_for(tenant_id), timeout=self._call_timeout
        )

    async def _run(self) -> None:
        backoff = 0.1
        while not self._closing:
            call = self.stub.Connect(metadata=(self._auth,))
            writer: asyncio.Task[None] | None = None
            try:
                # What was queued for the old stream is covered by the resubscriptions.
                while not self._outbox.empty():
                    self._outbox.get_nowait()
                for request in self._resubscriptions():
                    await call.write(request)
                writer = asyncio.create_task(self._write(call), name="gateway-link-writer")
                self.connected.set()
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        break
                    backoff = 0.1
                    self._on_response(response)
                log.warning("gateway closed the Connect stream; reconnecting")
            except grpc.aio.AioRpcError as exc:
                if self._closing:
                    return
                log.warning(
                    "gateway link lost; reconnecting",
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
                if writer is not None:
                    writer.cancel()
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _write(self, call: Any) -> None:
        try:
            while True:
                request = await self._outbox.get()
                await call.write(request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the stream ended; the reader reconnects and resubscribes

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            # grpc may turn the cancellation into a CANCELLED status; the flag ends the loop.
            await asyncio.wait([self._task], timeout=5)
