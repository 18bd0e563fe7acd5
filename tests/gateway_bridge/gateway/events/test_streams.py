"""SubscribeEvents streams: one shared reader, a cap per tenant, slow streams cut, headers
at once, and streams ended when their tenant's credentials or scopes change.

Two levels, both on the session's SQLite and PostgreSQL databases with events written
by the real ChannelService:

- an :class:`EventService` of the test's own beside the gateway's (``service``), over
  a store that counts its reads, so a test can see which reads served which streams
  and hold a stream's reading as a slow client would;
- a real server whose gateway is given the process's authenticator (``live``), called
  through the generated stubs, for what a client sees on the wire.

Every wait is bounded (``WAIT``); tenants isolate the tests from each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from keel.events.v1 import events_pb2 as pb
from keel.events.v1 import events_pb2_grpc
from keel.tenants.v1 import tenants_pb2
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway_bridge.gateway.events.access import StreamAccess, StreamAuthorizer
from gateway_bridge.gateway.events.service import (
    EventService,
    Positioned,
    decode_cursor,
    encode_cursor,
)
from gateway_bridge.gateway.events.store import Cursor, SqlEventStore
from gateway_bridge.gateway.outbox import ChatEvent
from service_kit.auth import Credentials
from service_kit.bus import EventBus, InProcessEventBus
from service_kit.errors import KeelError, PermissionDenied, ResourceExhausted, Unauthenticated
from service_kit.interceptor import ACTING_FOR_TENANT
from service_kit.schema import events as events_table
from service_kit.validation import new_id
from tests.gateway_bridge.conftest import ADMIN, Keel, Tenant, running_keel
from tests.gateway_bridge.gateway.events.test_service import (
    WAIT,
    Events,
    Stream,
    content_of,
    subscribe,
)

#: The most streams a tenant may open on the ``live`` server.
CAP = 3


# -- an event service of the test's own --------------------------------------------------------


class CountingStore(SqlEventStore):
    """The SQL event store, noting each read of the log: a stream's own (catching up) and
    the shared reader's (with the tenants it read for)."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.own_reads = 0
        self.shared_reads: list[frozenset[str]] = []
        self.shared_reader_started = asyncio.Event()

    async def events_after(
        self, tenant_id: str, cursor: Cursor, *, limit: int
    ) -> list[tuple[Cursor, ChatEvent]]:
        self.own_reads += 1
        return await super().events_after(tenant_id, cursor, limit=limit)

    async def log_after(
        self, tenant_ids: Collection[str], cursor: Cursor, *, limit: int
    ) -> list[tuple[Cursor, ChatEvent]]:
        self.shared_reads.append(frozenset(tenant_ids))
        self.shared_reader_started.set()
        return await super().log_after(tenant_ids, cursor, limit=limit)


class HeadHeldStore(CountingStore):
    """A counting store whose ``head`` (the shared reader's start from the log's head)
    waits until ``release`` is set."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def head(self, *tenant_ids: str) -> Cursor:
        self.held.set()
        await self.release.wait()
        return await super().head(*tenant_ids)


@contextlib.asynccontextmanager
async def service(
    keel: Keel,
    *,
    bus: EventBus | None = None,
    store_class: type[CountingStore] = CountingStore,
    **options: Any,
) -> AsyncIterator[tuple[EventService, Any]]:
    """An EventService on the server's database, bus (or ``bus``) and authenticator."""
    store = store_class(keel.runtime.engine)
    events = EventService(
        store,
        bus or keel.runtime.bus,
        allow_private=False,
        authorizer=StreamAuthorizer(keel.authenticator, scope="chat:read"),
        **options,
    )
    await events.start()
    try:
        yield events, store
    finally:
        await events.close()


class Pulled:
    """A stream of an EventService read by a task into ``items`` (each wait bounded).

    :meth:`hold` stops the reading, as a client that reads too slowly; :meth:`resume`
    reads on. What the stream raises is put in ``items`` too.
    """

    def __init__(self, events: EventService, tenant: Tenant, *, after: str = "") -> None:
        self.tenant = tenant
        self.received: list[Positioned] = []
        self.items: asyncio.Queue[Positioned | KeelError] = asyncio.Queue()
        self.opened = asyncio.Event()
        self.reading = asyncio.Event()
        self.reading.set()
        access = StreamAccess(credentials=Credentials(tenant.client_id, tenant.client_secret))
        opening = events.open_stream(
            tenant.id, events=[], channel_ids=[], after=after, access=access
        )
        self._task = asyncio.create_task(self._pump(opening))

    async def _pump(self, opening: contextlib.AbstractAsyncContextManager[Any]) -> None:
        try:
            async with opening as items:
                self.opened.set()
                while True:
                    await self.reading.wait()
                    await self.items.put(await anext(items))
        except KeelError as error:
            await self.items.put(error)

    async def wait_open(self) -> None:
        """Return once the stream is open; raise what refused it."""
        opened = asyncio.create_task(self.opened.wait())
        try:
            await asyncio.wait({opened, self._task}, timeout=WAIT, return_when="FIRST_COMPLETED")
        finally:
            opened.cancel()
        if not self.opened.is_set():
            item = await self._get()
            if isinstance(item, KeelError):
                raise item
            pytest.fail(f"the stream did not open within {WAIT}s")

    def hold(self) -> None:
        self.reading.clear()

    def resume(self) -> None:
        self.reading.set()

    async def next(self) -> Positioned:
        item = await self._get()
        if isinstance(item, KeelError):
            pytest.fail(f"the stream ended: {item!r}")
        self.received.append(item)
        return item

    async def until(self, text: str) -> list[Positioned]:
        """Items up to and including the message with content ``text``."""
        found = [await self.next()]
        while message_text(found[-1][1]) != text:
            found.append(await self.next())
        return found

    async def take(self, count: int) -> list[Positioned]:
        return [await self.next() for _ in range(count)]

    async def error(self) -> KeelError:
        """The error the stream ends with, after the items still on their way (kept in
        ``received``)."""
        while True:
            item = await self._get()
            if isinstance(item, KeelError):
                return item
            self.received.append(item)

    @property
    def cursor(self) -> str:
        """The cursor of the last item received."""
        return encode_cursor(self.received[-1][0])

    async def _get(self) -> Positioned | KeelError:
        try:
            return await asyncio.wait_for(self.items.get(), WAIT)
        except TimeoutError:
            pytest.fail(f"nothing came from the stream within {WAIT}s")

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def pulled(events: EventService, tenant: Tenant, *, after: str = "") -> AsyncIterator[Pulled]:
    stream = Pulled(events, tenant, after=after)
    try:
        await stream.wait_open()
        yield stream
    finally:
        await stream.close()


def message_text(event: ChatEvent) -> str | None:
    message = event.data.get("message")
    return message["content"] if isinstance(message, dict) else None


def texts(items: Sequence[Positioned]) -> list[str | None]:
    return [message_text(event) for _, event in items]


async def all_live(streams: Sequence[Pulled], store: CountingStore, rooms: dict[str, str]) -> None:
    """Return once every stream is live: the shared reader has started (which has every
    stream read the log once more) and a marker sent after that reached every stream.
    ``rooms`` maps each tenant's id to a channel of it to send the marker in."""
    try:
        await asyncio.wait_for(store.shared_reader_started.wait(), WAIT)
    except TimeoutError:
        pytest.fail(f"the shared reader never read within {WAIT}s")
    markers: dict[str, str] = {}
    for stream in streams:
        tenant = stream.tenant
        if tenant.id not in markers:
            markers[tenant.id] = f"live {uuid.uuid4().hex}"
            await tenant.send(rooms[tenant.id], markers[tenant.id])
    for stream in streams:
        await stream.until(markers[stream.tenant.id])


@pytest.fixture(scope="module")
async def live(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keel]:
    async with running_keel(
        database_url, tmp_path_factory.mktemp("streams"), max_event_streams_per_tenant=CAP
    ) as running:
        yield running


def stub_of(keel: Keel) -> events_pb2_grpc.EventServiceStub:
    return events_pb2_grpc.EventServiceStub(keel.client)


async def events_of(keel: Keel) -> Events:
    return Events(await keel.tenant(), stub_of(keel))


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay of ``error``, in seconds (None without one)."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


async def still_streaming(ev: Events, stream: Stream) -> None:
    """``stream`` (of ``ev``'s tenant) still gets what the tenant does."""
    room = await ev.tenant.group("alice")
    text = f"still here {uuid.uuid4().hex}"
    await ev.tenant.send(room, text)
    await stream.until(lambda item: content_of(item) == text)


# -- one shared reader ----------------------------------------------------------------------------


async def test_concurrent_streams_are_fed_by_shared_reads_of_the_log(keel: Keel) -> None:
    a, b = await keel.tenant(), await keel.tenant()
    rooms = {a.id: await a.group("alice"), b.id: await b.group("alice")}
    sent = {t.id: [f"{t.id[:8]} #{n}" for n in range(5)] for t in (a, b)}
    async with service(keel) as (events, store), contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(pulled(events, tenant))
            for tenant in (a, b)
            for _ in range(5)
        ]
        await all_live(streams, store, rooms)
        store.own_reads, store.shared_reads = 0, []
        for n in range(5):
            for tenant in (a, b):
                await tenant.send(rooms[tenant.id], sent[tenant.id][n])
        for stream in streams:
            got = await stream.until(sent[stream.tenant.id][-1])
            assert texts(got) == sent[stream.tenant.id]
    # Ten live streams, ten events: no stream read the log for itself, and every read of
    # the log was one for both tenants.
    assert store.own_reads == 0
    assert store.shared_reads
    assert all(read == {a.id, b.id} for read in store.shared_reads)


async def test_a_slow_stream_is_ended_and_a_fast_one_still_gets_everything(keel: Keel) -> None:
    a = await keel.tenant()
    room = await a.group("alice")
    sent = [f"m{n}" for n in range(20)]
    async with (
        # A stream that keeps up takes each read (at most 5 events) before the next.
        service(keel, stream_queue_size=8, read_page=5) as (events, store),
        pulled(events, a) as fast,
        pulled(events, a) as slow,
    ):
        await all_live([fast, slow], store, {a.id: room})
        slow.hold()  # a client that stops reading
        for text in sent:
            await a.send(room, text)
        assert texts(await fast.until(sent[-1])) == sent

        slow.resume()
        error = await slow.error()
        assert isinstance(error, ResourceExhausted)
        assert "resume with `after` set to the last cursor received" in error.message
        assert error.retry_after == 0
        # Nothing is lost: resuming from the last cursor it got brings the rest.
        delivered = [text for text in texts(slow.received) if text in sent]
        assert delivered == sent[: len(delivered)]
        missed = sent[len(delivered) :]
        async with pulled(events, a, after=slow.cursor) as resumed:
            assert texts(await resumed.until(sent[-1])) == missed


async def test_a_stream_still_catching_up_reads_the_log_again_instead_of_ending(
    keel: Keel,
) -> None:
    a = await keel.tenant()
    room = await a.group("alice")
    async with service(keel, stream_queue_size=2, read_page=2) as (events, store):
        async with pulled(events, a) as fast:
            await all_live([fast], store, {a.id: room})
            start = fast.cursor
            late = Pulled(events, a, after=start)
            late.hold()  # open, but it has not read the log yet
            try:
                await late.wait_open()
                for n in range(8):
                    await a.send(room, f"m{n}")
                # The reader offered all eight to the late stream too (its queue overflowed).
                await fast.until("m7")
                late.resume()
                got = await late.until("m7")
            finally:
                await late.close()
        expected = await store.events_after(a.id, decode_cursor(start), limit=100)
        assert [e.event_id for _, e in got] == [e.event_id for _, e in expected]
        assert texts(got) == [f"m{n}" for n in range(8)]


async def test_a_stream_live_before_the_reader_started_misses_nothing(keel: Keel) -> None:
    a = await keel.tenant()
    room = await a.group("alice")
    async with service(keel) as (events, store), pulled(events, a) as first:
        await all_live([first], store, {a.id: room})
        start = first.cursor
    await a.send(room, "e0")
    async with (
        service(keel, store_class=HeadHeldStore) as (events, store),
        pulled(events, a, after=start) as stream,
    ):
        await asyncio.wait_for(store.held.wait(), WAIT)  # the reader starts from the head
        # Meanwhile the stream caught up (e0) and went live, its queue empty.
        assert texts(await stream.until("e0")) == ["e0"]
        await a.send(room, "e1")
        await readable(store, a.id, decode_cursor(start), 2)
        store.release.set()  # the reader's head is past e1, which it will never offer
        assert texts(await stream.until("e1")) == ["e1"]


async def test_streams_opened_while_events_flow_get_exactly_the_log_after_their_cursor(
    keel: Keel,
) -> None:
    a = await keel.tenant()
    room = await a.group("alice")
    flow = [f"flow {n}" for n in range(60)]

    async def send_all() -> None:
        for i in range(0, len(flow), 4):  # four at a time: transactions commit out of order
            await asyncio.gather(*(a.send(room, text) for text in flow[i : i + 4]))

    async with service(keel, read_page=7) as (events, store):  # catch-ups of several reads
        async with pulled(events, a) as first:
            await all_live([first], store, {a.id: room})
            start = first.cursor
        async with contextlib.AsyncExitStack() as stack:
            sender = asyncio.create_task(send_all())
            streams = []
            for _ in range(6):  # each opens once the one before has received something
                streams.append(await stack.enter_async_context(pulled(events, a, after=start)))
                await streams[-1].next()
            await sender
            expected = await readable(store, a.id, decode_cursor(start), len(flow))
            for stream in streams:
                await stream.take(len(flow) - len(stream.received))
                assert [e.event_id for _, e in stream.received] == [e.event_id for _, e in expected]


async def test_a_stream_without_a_cursor_gets_what_commits_after_it_opened_and_nothing_before(
    keel: Keel, database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite commits one writer at a time: nothing commits around a start")
    a = await keel.tenant()
    room = await a.group("alice")
    async with keel.runtime.engine.connect() as slow:
        # A transaction that writes an event before the stream opens and commits after.
        slow_event = new_id()
        await slow.execute(
            insert(events_table).values(
                event_id=slow_event,
                tenant_id=a.id,
                channel_id=room,
                seq=0,
                name="message:created",
                data={"message": {"content": "slow"}},
                created_at=datetime.now(UTC),
            )
        )
        await a.send(room, "before")  # commits before the stream opens, in a later transaction
        async with service(keel) as (events, _store), pulled(events, a) as stream:
            await slow.commit()
            await a.send(room, "after")
            got = await stream.until("after")
    assert got[0][1].event_id == slow_event
    assert texts(got) == ["slow", "after"]


async def readable(
    store: SqlEventStore, tenant_id: str, after: Cursor, count: int
) -> list[tuple[Cursor, ChatEvent]]:
    """The tenant's ``count`` events after ``after``, once all are readable (on PostgreSQL a
    transaction still running anywhere on the server holds back what committed after it)."""
    found: list[tuple[Cursor, ChatEvent]] = []
    try:
        async with asyncio.timeout(WAIT):
            while True:
                found = await store.events_after(tenant_id, after, limit=count + 1)
                if len(found) >= count:
                    break
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"only {len(found)} of {count} events were readable after {WAIT}s")
    assert len(found) == count
    return found


# -- checked again when the tenant changes (service level) ------------------------------------


async def test_a_change_that_keeps_the_credentials_and_scope_leaves_the_stream_open(
    keel: Keel,
) -> None:
    a = await keel.tenant()
    room = await a.group("alice")
    async with service(keel) as (events, store), pulled(events, a) as stream:
        await all_live([stream], store, {a.id: room})
        metadata = struct_pb2.Struct()
        metadata.update({"plan": "pro"})
        await keel.tenants.UpdateTenant(
            tenants_pb2.UpdateTenantRequest(
                tenant=tenants_pb2.Tenant(id=a.id, metadata=metadata),
                update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
            ),
            metadata=ADMIN,
        )
        await events.recheck(a.id)
        await keel.set_permissions(a, "chat:read", "chat:write")
        await events.recheck(a.id)
        await a.send(room, "still open")
        await stream.until("still open")


async def test_after_the_bus_reconnects_every_stream_is_checked_again(keel: Keel) -> None:
    a, b = await keel.tenant(), await keel.tenant()
    rooms = {a.id: await a.group("alice"), b.id: await b.group("alice")}
    deaf = InProcessEventBus()  # hears no tenant change (and no chat event: the reader polls)
    try:
        async with (
            service(keel, bus=deaf, poll_interval=0.05) as (events, store),
            pulled(events, a) as rotated,
            pulled(events, b) as kept,
        ):
            await all_live([rotated, kept], store, rooms)
            await keel.tenants.RotateSecret(
                tenants_pb2.RotateSecretRequest(id=a.id), metadata=ADMIN
            )
            deaf.announce_reconnect()  # changes may have been missed meanwhile
            error = await rotated.error()
            assert isinstance(error, Unauthenticated)
            assert error.message == "the tenant's credentials changed; reconnect with the new ones"
            await b.send(rooms[b.id], "b goes on")
            await kept.until("b goes on")
    finally:
        await deaf.close()


async def test_a_stream_opened_after_its_access_changed_is_refused(keel: Keel) -> None:
    a = await keel.tenant()
    async with service(keel) as (events, _store):
        await keel.tenants.RotateSecret(tenants_pb2.RotateSecretRequest(id=a.id), metadata=ADMIN)
        with pytest.raises(Unauthenticated):
            async with pulled(events, a):
                pass
        await keel.set_permissions(a, "chat:write")
        rotated = await keel.tenants.RotateSecret(
            tenants_pb2.RotateSecretRequest(id=a.id), metadata=ADMIN
        )
        a.client_secret = rotated.client_secret
        with pytest.raises(PermissionDenied):
            async with pulled(events, a):
                pass


# -- on the wire -------------------------------------------------------------------------------


async def test_the_headers_arrive_before_any_event(live: Keel) -> None:
    ev = await events_of(live)
    room = await ev.tenant.group("alice")
    async with subscribe(ev) as stream:
        await stream.live()
        assert stream.items.empty()
        # Live means live: what is committed after the headers arrived reaches the stream.
        await ev.tenant.send(room, "after the headers")
        assert content_of(await stream.next()) == "after the headers"


async def test_a_tenant_may_open_only_so_many_streams_and_a_closed_one_frees_its_slot(
    live: Keel,
) -> None:
    ev, other = await events_of(live), await events_of(live)
    async with contextlib.AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(subscribe(ev)) for _ in range(CAP)]
        for stream in streams:
            await stream.live()
        async with subscribe(ev) as refused:
            error = await refused.error()
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == (
            f"the tenant already has {CAP} event streams open on this gateway"
            " (KEEL_MAX_EVENT_STREAMS_PER_TENANT): close one, or retry later"
        )
        assert retry_delay(error) == 5.0
        async with subscribe(other) as theirs:  # the cap is per tenant
            await theirs.live()

        await streams[0].close()
        # The gateway frees the slot once it has seen the cancellation.
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    async with subscribe(ev) as again:
                        await asyncio.wait_for(again.call.initial_metadata(), WAIT)
                        if not again.call.done():
                            break
                        assert (await again.call.code()) == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail(f"the closed stream's slot was not free within {WAIT}s")
        await still_streaming(ev, streams[1])


async def test_rotating_the_secret_ends_the_tenant_s_streams_unauthenticated(live: Keel) -> None:
    ev, other = await events_of(live), await events_of(live)
    async with subscribe(ev) as mine, subscribe(ev) as also_mine, subscribe(other) as theirs:
        for stream in (mine, also_mine, theirs):
            await stream.live()
        await live.tenants.RotateSecret(
            tenants_pb2.RotateSecretRequest(id=ev.tenant.id), metadata=ADMIN
        )
        for stream in (mine, also_mine):
            error = await stream.error()
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert (
                error.details() == "the tenant's credentials changed; reconnect with the new ones"
            )
        await still_streaming(other, theirs)


async def test_removing_chat_read_ends_the_tenant_s_streams_permission_denied(
    live: Keel,
) -> None:
    ev, other = await events_of(live), await events_of(live)
    acting = (("authorization", ADMIN[0][1]), (ACTING_FOR_TENANT, ev.tenant.id))
    for_tenant = Stream(stub_of(live).SubscribeEvents(pb.SubscribeEventsRequest(), metadata=acting))
    try:
        async with subscribe(ev) as mine, subscribe(other) as theirs:
            for stream in (mine, for_tenant, theirs):
                await stream.live()
            await live.set_permissions(ev.tenant, "chat:write")
            for stream in (mine, for_tenant):  # with its credentials, or acted for by a peer
                error = await stream.error()
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "lacks the permission scope 'chat:read'" in (error.details() or "")
            await still_streaming(other, theirs)
    finally:
        await for_tenant.close()


async def test_deleting_the_tenant_ends_its_streams_unauthenticated(live: Keel) -> None:
    ev, other = await events_of(live), await events_of(live)
    async with subscribe(ev) as mine, subscribe(other) as theirs:
        await mine.live()
        await theirs.live()
        await live.tenants.DeleteTenant(
            tenants_pb2.DeleteTenantRequest(id=ev.tenant.id), metadata=ADMIN
        )
        error = await mine.error()
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        await still_streaming(other, theirs)
