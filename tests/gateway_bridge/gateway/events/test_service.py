"""EventService through a real in-process server, with real HTTP receivers (aiohttp).

Every test runs on SQLite and on PostgreSQL (``database_url``). Most share one
server per module on the session's database, with a short retry schedule and
private addresses allowed so deliveries reach receivers on 127.0.0.1; a test
that needs other settings runs its own server on a private database of the same
kind, so only one webhook dispatcher ever works on a database. Tests isolate
themselves by tenant, each receiver listens on its own random path, every wait
is bounded, and webhooks are deleted at the end of a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from aiohttp import web
from google.protobuf import field_mask_pb2, json_format, timestamp_pb2
from keel.channels.v1 import channels_pb2 as chat_pb
from keel.events.v1 import events_pb2 as pb
from keel.events.v1 import events_pb2_grpc
from keel.webhooks import WebhookVerificationError, verify
from sqlalchemy import text

from gateway_bridge.gateway.events.service import encode_cursor
from gateway_bridge.gateway.events.store import SqlEventStore
from service_kit.db import create_engine, migrate, write_transaction
from service_kit.errors import OutOfRange
from tests.conftest import PG_ADMIN_URL
from tests.gateway_bridge.conftest import Keel, Tenant, field_violations, rpc_error, running_keel
from tests.service_kit.test_db import SLOW_QUERY
from tests.service_kit.test_db import write_locked as sqlite_write_locked

#: The retry schedule of the servers here: four attempts within about a second.
SCHEDULE = (0.2, 0.2, 0.5)
#: The longest a test waits for something to happen.
WAIT = 20.0

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE

BODY_KEYS = {"event", "data", "timestamp", "event_id", "channel_id", "seq"}


def settings(**changes: object) -> dict[str, object]:
    return {"webhook_retry_schedule": SCHEDULE, "webhook_allow_private": True, **changes}


def collect_leaked_connections() -> None:
    """Run the garbage collector after a server stopped, ignoring ResourceWarnings.

    A task cancelled inside a SQLite write transaction (the dispatcher's loops
    when the server stops) leaves its aiosqlite connection unclosed, holding the
    write lock until the connection is garbage-collected; see
    test_a_write_cancelled_mid_transaction_releases_the_sqlite_lock. Collecting
    here frees the lock at once and keeps the connection's ResourceWarning from
    surfacing in whichever unrelated test the collector happens to run in.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@contextlib.asynccontextmanager
async def serving(database_url: str, tmp_path: Path, **changes: object) -> AsyncIterator[Keel]:
    """A server with this module's settings (plus ``changes``) on ``database_url``."""
    try:
        async with running_keel(database_url, tmp_path, **settings(**changes)) as running:
            yield running
    finally:
        collect_leaked_connections()


@pytest.fixture(scope="module")
async def keel(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Keel]:
    """One server per module and database, with this module's settings."""
    async with serving(database_url, tmp_path_factory.mktemp("events")) as running:
        yield running


@contextlib.asynccontextmanager
async def private_database(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A new empty database of the same kind as ``database_url``, dropped afterwards."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / f'private-{uuid.uuid4().hex[:8]}.db'}"
        return
    name = f"keel_events_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{database_url.rsplit('/', 1)[0]}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def private_keel(database_url: str, tmp_path: Path, **changes: object) -> AsyncIterator[Keel]:
    """A server of its own, with ``changes`` to this module's settings, on a private database
    (the module's server keeps its own dispatcher away from it)."""
    async with (
        private_database(database_url, tmp_path) as url,
        serving(url, tmp_path, **changes) as running,
    ):
        yield running


# -- receivers ------------------------------------------------------------------------------


@dataclass
class Hit:
    """One request a receiver got, and what it answered."""

    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded

    @property
    def event(self) -> str:
        return str(self.payload["event"])

    @property
    def content(self) -> str | None:
        message = self.payload["data"].get("message")
        return message["content"] if isinstance(message, dict) else None

    def verified(self, secret: str) -> dict[str, Any]:
        payload: dict[str, Any] = verify(secret, self.headers, self.body)
        return payload


Answer = tuple[int, dict[str, str]]


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records requests and answers as scripted."""

    def __init__(self) -> None:
        self.path = f"/hooks/{uuid.uuid4().hex}"
        self.port = 0
        self.hits: list[Hit] = []
        self.script: list[Answer] = []  # the answers to the next requests, in order
        self.default: Answer = (200, {})  # then this one
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()

    @property
    def url(self) -> str:
        assert self.port, "start the receiver first"
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port again after a stop)."""
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, headers = self.script.pop(0) if self.script else self.default
        self.hits.append(Hit({k.lower(): v for k, v in request.headers.items()}, body, status))
        self._arrived.set()
        return web.Response(status=status, headers=headers)

    def ok(self) -> list[Hit]:
        """The requests answered with 2xx."""
        return [h for h in self.hits if 200 <= h.status < 300]

    async def wait_until(self, done: Callable[[], bool], what: str, within: float = WAIT) -> None:
        try:
            async with asyncio.timeout(within):
                while not done():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            seen = [(h.event, h.status) for h in self.hits]
            pytest.fail(f"within {within}s the receiver never got {what}; it got {seen}")

    async def wait_for_ok(self, count: int, within: float = WAIT) -> list[Hit]:
        """Wait until ``count`` distinct events were answered 2xx; those requests."""
        await self.wait_until(
            lambda: len({h.id for h in self.ok()}) >= count, f"{count} events", within
        )
        return self.ok()


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[[], Awaitable[Receiver]]]:
    """A factory of started receivers, all stopped at the end of the test."""
    started: list[Receiver] = []

    async def start() -> Receiver:
        receiver = Receiver()
        await receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


@pytest.fixture
async def receiver(receivers: Callable[[], Awaitable[Receiver]]) -> Receiver:
    return await receivers()


# -- calling EventService -------------------------------------------------------------------


@dataclass
class Events:
    """A tenant with its ChannelService and EventService stubs."""

    tenant: Tenant
    stub: events_pb2_grpc.EventServiceStub
    webhook_ids: list[str] = field(default_factory=list)

    @property
    def md(self) -> Sequence[tuple[str, str]]:
        return self.tenant.md

    async def create(
        self, url: str, events: Iterable[str] = ("*",), channel_ids: Iterable[str] = (), **kw: Any
    ) -> pb.CreateWebhookResponse:
        response: pb.CreateWebhookResponse = await self.stub.CreateWebhook(
            pb.CreateWebhookRequest(
                url=url, events=list(events), channel_ids=list(channel_ids), **kw
            ),
            metadata=self.md,
        )
        self.webhook_ids.append(response.webhook.id)
        return response

    async def get(self, webhook_id: str) -> pb.Webhook:
        response = await self.stub.GetWebhook(pb.GetWebhookRequest(id=webhook_id), metadata=self.md)
        webhook: pb.Webhook = response.webhook
        return webhook

    async def webhooks(self) -> list[pb.Webhook]:
        response = await self.stub.ListWebhooks(
            pb.ListWebhooksRequest(page_size=1000), metadata=self.md
        )
        return list(response.webhooks)

    async def update(self, webhook: pb.Webhook, *paths: str) -> pb.Webhook:
        response = await self.stub.UpdateWebhook(
            pb.UpdateWebhookRequest(
                webhook=webhook, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
            ),
            metadata=self.md,
        )
        updated: pb.Webhook = response.webhook
        return updated

    async def set_state(self, webhook_id: str, state: int) -> pb.Webhook:
        return await self.update(pb.Webhook(id=webhook_id, state=state), "state")  # type: ignore[arg-type]

    async def deliveries(self, webhook_id: str, status: int = 0) -> list[pb.Delivery]:
        found: list[pb.Delivery] = []
        token = ""
        while True:
            page = await self.stub.ListDeliveries(
                pb.ListDeliveriesRequest(
                    webhook_id=webhook_id,
                    status=status,  # type: ignore[arg-type]
                    page_size=1000,
                    page_token=token,
                ),
                metadata=self.md,
            )
            found += page.deliveries
            token = page.next_page_token
            if not token:
                return found

    async def wait_for_deliveries(
        self, webhook_id: str, done: Callable[[list[pb.Delivery]], bool], what: str
    ) -> list[pb.Delivery]:
        """Poll ListDeliveries (bounded) until ``done``; the deliveries then."""
        found: list[pb.Delivery] = []
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    found = await self.deliveries(webhook_id)
                    if done(found):
                        break
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail(f"within {WAIT}s the deliveries never showed {what}: {found}")
        return found

    async def wait_for_webhook(
        self, webhook_id: str, done: Callable[[pb.Webhook], bool], what: str
    ) -> pb.Webhook:
        webhook = pb.Webhook()
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    webhook = await self.get(webhook_id)
                    if done(webhook):
                        break
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pytest.fail(f"within {WAIT}s the webhook never became {what}: {webhook}")
        return webhook

    async def add_member(self, channel_id: str, user_id: str) -> None:
        await self.tenant.stub.AddMember(
            chat_pb.AddMemberRequest(channel_id=channel_id, user_id=user_id), metadata=self.md
        )

    async def remove_member(self, channel_id: str, user_id: str) -> None:
        await self.tenant.stub.RemoveMember(
            chat_pb.RemoveMemberRequest(channel_id=channel_id, user_id=user_id), metadata=self.md
        )

    async def cleanup(self) -> None:
        for webhook_id in self.webhook_ids:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.stub.DeleteWebhook(
                    pb.DeleteWebhookRequest(id=webhook_id), metadata=self.md
                )


@contextlib.asynccontextmanager
async def events_for(keel: Keel, *permissions: str) -> AsyncIterator[Events]:
    """A new tenant's Events; its webhooks are deleted on exit."""
    ev = Events(await keel.tenant(*permissions), events_pb2_grpc.EventServiceStub(keel.client))
    try:
        yield ev
    finally:
        await ev.cleanup()


@pytest.fixture
async def ev(keel: Keel) -> AsyncIterator[Events]:
    async with events_for(keel) as events:
        yield events


def since(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def attempt_times(delivery: pb.Delivery) -> list[datetime]:
    return [a.attempt_time.ToDatetime(tzinfo=UTC) for a in delivery.attempts]


def settled(count: int) -> Callable[[list[pb.Delivery]], bool]:
    """``count`` deliveries, none of them pending."""
    return lambda found: (
        len(found) == count and all(d.status != pb.DELIVERY_STATUS_PENDING for d in found)
    )


async def marker(ev: Events, channel_id: str, sentinel: Receiver) -> str:
    """Send a marker message and wait until a ``*`` webhook's receiver got it: every event
    before it has then been fanned out to every webhook of the tenant. Its text."""
    text = f"marker {uuid.uuid4().hex}"
    await ev.tenant.send(channel_id, text)
    await sentinel.wait_until(lambda: any(h.content == text for h in sentinel.ok()), text)
    return text


# -- delivering events ----------------------------------------------------------------------


async def test_a_receiver_gets_signed_events_with_the_documented_body(
    ev: Events, receiver: Receiver
) -> None:
    created = await ev.create(
        receiver.url, ["message:created", "user:joined", "user:left"], description="app"
    )
    secret = created.secret
    assert secret.startswith("whsec_")
    hook = created.webhook
    assert (hook.url, list(hook.events), hook.description) == (
        receiver.url,
        ["message:created", "user:joined", "user:left"],
        "app",
    )
    assert hook.state == pb.WEBHOOK_STATE_ACTIVE
    assert hook.consecutive_failures == 0 and hook.disabled_reason == ""

    channel = await ev.tenant.group("alice", "bob")  # channel:created (not selected), 2 joins
    sent = await ev.tenant.send(channel, "héllo 👋")
    await ev.add_member(channel, "carol")
    await ev.remove_member(channel, "bob")

    hits = await receiver.wait_for_ok(5)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for hit in hits:
        payload = hit.verified(secret)
        assert set(payload) == BODY_KEYS
        assert payload["event_id"] == hit.id
        assert payload["channel_id"] == channel
        assert hit.headers["content-type"].startswith("application/json")
        stamp = datetime.fromisoformat(payload["timestamp"])
        assert payload["timestamp"].endswith("Z") and stamp.tzinfo is not None
        assert abs(int(hit.headers["webhook-timestamp"]) - stamp.timestamp()) <= 2
        by_event.setdefault(payload["event"], []).append(payload)
    assert sorted(by_event) == ["message:created", "user:joined", "user:left"]
    (message,) = by_event["message:created"]
    assert message["seq"] == sent.seq == 1
    assert message["data"]["message"]["id"] == sent.id
    assert message["data"]["message"]["content"] == "héllo 👋"
    assert sorted(p["data"]["member"]["user_id"] for p in by_event["user:joined"]) == [
        "alice",
        "bob",
        "carol",
    ]
    (left,) = by_event["user:left"]
    assert left["data"] == {"channel_id": channel, "user_id": "bob"}
    assert len({h.id for h in hits}) == len(hits) == 5

    deliveries = await ev.wait_for_deliveries(hook.id, settled(5), "5 settled deliveries")
    assert {d.status for d in deliveries} == {pb.DELIVERY_STATUS_SUCCEEDED}
    assert {d.event_id for d in deliveries} == {h.id for h in hits}
    for delivery in deliveries:
        assert delivery.webhook_id == hook.id
        assert [a.status_code for a in delivery.attempts] == [200]
        assert delivery.attempts[0].error == ""
        assert not delivery.HasField("next_attempt_time")


async def test_filters_select_events_by_pattern_and_channel(
    ev: Events, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    messages, only_a, everything = [await receivers() for _ in range(3)]
    await ev.create(everything.url, ["*"])
    room_a = await ev.tenant.group("alice", "bob")
    room_b = await ev.tenant.group("alice", "bob")
    await marker(ev, room_b, everything)  # the rooms' events are not for the new webhooks
    messages_hook = (await ev.create(messages.url, ["message:*"])).webhook
    only_a_hook = (await ev.create(only_a.url, ["*"], [room_a])).webhook

    first = await ev.tenant.send(room_a, "in A")
    await ev.tenant.stub.EditMessage(
        chat_pb.EditMessageRequest(channel_id=room_a, message_id=first.id, content="in A, edited"),
        metadata=ev.md,
    )
    await ev.add_member(room_a, "carol")
    await ev.tenant.send(room_b, "in B")
    await ev.add_member(room_b, "dave")
    await ev.remove_member(room_b, "bob")
    last = await marker(ev, room_b, everything)

    # Every event has been fanned out: the filtered webhooks' deliveries are final.
    message_deliveries = await ev.wait_for_deliveries(
        messages_hook.id, settled(4), "4 settled deliveries"
    )
    assert sorted(d.event for d in message_deliveries) == [
        "message:created",
        "message:created",
        "message:created",
        "message:updated",
    ]
    a_deliveries = await ev.wait_for_deliveries(only_a_hook.id, settled(3), "3 deliveries")
    assert sorted(d.event for d in a_deliveries) == [
        "message:created",
        "message:updated",
        "user:joined",
    ]

    got = await messages.wait_for_ok(4)
    assert sorted((h.event, h.content) for h in got) == sorted(
        [
            ("message:created", "in A"),
            ("message:updated", "in A, edited"),
            ("message:created", "in B"),
            ("message:created", last),
        ]
    )
    assert "user:joined" not in {h.event for h in messages.hits}
    got_a = await only_a.wait_for_ok(3)
    assert {h.payload["channel_id"] for h in got_a} == {room_a}
    assert len(only_a.hits) == 3
    assert {h.event for h in everything.ok()} >= {"message:created", "user:joined", "user:left"}


async def test_update_webhook_changes_the_url_and_filters(
    ev: Events, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    old, new, everything = [await receivers() for _ in range(3)]
    await ev.create(everything.url)
    room = await ev.tenant.group("alice")
    await marker(ev, room, everything)
    created = await ev.create(old.url, ["message:created"], description="before")
    updated = await ev.update(
        pb.Webhook(id=created.webhook.id, url=new.url, events=["user:*"], description="after"),
        "url",
        "events",
        "description",
    )
    assert (updated.url, list(updated.events), updated.description) == (
        new.url,
        ["user:*"],
        "after",
    )
    assert updated.update_time.ToDatetime() >= created.webhook.update_time.ToDatetime()
    assert await ev.get(created.webhook.id) == updated

    await ev.tenant.send(room, "not selected any more")
    await ev.add_member(room, "bob")
    await marker(ev, room, everything)
    (hit,) = await new.wait_for_ok(1)
    assert hit.event == "user:joined"
    hit.verified(created.secret)  # the secret does not change with the URL
    assert old.hits == []


async def test_retries_keep_the_id_and_sign_every_attempt_afresh(
    ev: Events, receiver: Receiver
) -> None:
    receiver.script = [(500, {}), (500, {})]
    created = await ev.create(receiver.url, ["message:created"])
    room = await ev.tenant.group("alice")
    await ev.tenant.send(room, "third time lucky")

    (delivery,) = await ev.wait_for_deliveries(created.webhook.id, settled(1), "a settled delivery")
    assert delivery.status == pb.DELIVERY_STATUS_SUCCEEDED
    assert [a.status_code for a in delivery.attempts] == [500, 500, 200]
    assert [bool(a.error) for a in delivery.attempts] == [True, True, False]
    assert "500" in delivery.attempts[0].error
    times = attempt_times(delivery)
    assert times == sorted(times) and len(set(times)) == 3
    assert not delivery.HasField("next_attempt_time")

    hits = receiver.hits
    assert [h.status for h in hits] == [500, 500, 200]
    assert {h.id for h in hits} == {delivery.event_id}
    for hit in hits:
        hit.verified(created.secret)  # each attempt is signed with its own webhook-timestamp
    assert len({h.body for h in hits}) == 1  # the same bytes on every attempt
    signed_at = [int(h.headers["webhook-timestamp"]) for h in hits]
    assert signed_at == sorted(signed_at)
    for signed, attempted in zip(signed_at, times, strict=True):
        assert 0 <= signed - int(attempted.timestamp()) <= 1
    webhook = await ev.get(created.webhook.id)
    assert webhook.consecutive_failures == 0
    assert webhook.state == pb.WEBHOOK_STATE_ACTIVE


async def test_a_delivery_fails_when_the_schedule_is_used_up(
    ev: Events, receiver: Receiver
) -> None:
    receiver.default = (500, {})
    created = await ev.create(receiver.url, ["message:created"])
    room = await ev.tenant.group("alice")
    await ev.tenant.send(room, "never accepted")

    (delivery,) = await ev.wait_for_deliveries(created.webhook.id, settled(1), "a failed delivery")
    assert delivery.status == pb.DELIVERY_STATUS_FAILED
    assert [a.status_code for a in delivery.attempts] == [500] * (len(SCHEDULE) + 1)
    assert not delivery.HasField("next_attempt_time")
    assert len(receiver.hits) == len(SCHEDULE) + 1
    webhook = await ev.get(created.webhook.id)
    assert webhook.consecutive_failures == len(SCHEDULE) + 1
    assert webhook.state == pb.WEBHOOK_STATE_ACTIVE  # far below the disabling threshold
    failed = await ev.deliveries(created.webhook.id, pb.DELIVERY_STATUS_FAILED)
    assert [d.id for d in failed] == [delivery.id]
    assert await ev.deliveries(created.webhook.id, pb.DELIVERY_STATUS_SUCCEEDED) == []


async def test_every_event_arrives_after_the_receiver_was_down(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    # Retries every ~0.25 s for 15 s; the failure count must not disable the webhook meanwhile.
    async with (
        private_keel(
            database_url,
            tmp_path,
            webhook_retry_schedule=(0.25,) * 50,
            webhook_disable_after_failures=1_000_000,
        ) as keel,
        events_for(keel) as ev,
    ):
        created = await ev.create(receiver.url, ["message:created"])
        room = await ev.tenant.group("alice")
        await receiver.stop()

        sent = []
        for start in range(0, 100, 10):
            sent += await asyncio.gather(
                *(ev.tenant.send(room, f"while down #{n}") for n in range(start, start + 10))
            )

        def all_refused(found: list[pb.Delivery]) -> bool:
            return len(found) == 100 and all(d.attempts for d in found)

        down = await ev.wait_for_deliveries(created.webhook.id, all_refused, "100 refused")
        assert {a.status_code for d in down for a in d.attempts} == {0}
        assert {d.status for d in down} == {pb.DELIVERY_STATUS_PENDING}
        assert all(d.attempts[0].error for d in down)

        await receiver.start()  # the same port
        hits = await receiver.wait_for_ok(100)
        contents = [h.verified(created.secret)["data"]["message"]["content"] for h in hits]
        assert sorted(set(contents)) == sorted(m.content for m in sent)
        assert {h.payload["seq"] for h in hits} == set(range(1, 101))
        final = await ev.wait_for_deliveries(created.webhook.id, settled(100), "100 settled")
        assert {d.status for d in final} == {pb.DELIVERY_STATUS_SUCCEEDED}
        assert (await ev.get(created.webhook.id)).state == pb.WEBHOOK_STATE_ACTIVE


async def test_410_disables_the_webhook_until_it_is_set_active(
    ev: Events, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    gone, everything = await receivers(), await receivers()
    gone.default = (410, {})
    created = await ev.create(gone.url, ["message:created"])
    await ev.create(everything.url)
    room = await ev.tenant.group("alice")
    await ev.tenant.send(room, "to a gone endpoint")

    webhook = await ev.wait_for_webhook(
        created.webhook.id, lambda w: w.state == pb.WEBHOOK_STATE_DISABLED, "disabled"
    )
    assert "410" in webhook.disabled_reason
    (delivery,) = await ev.wait_for_deliveries(created.webhook.id, settled(1), "a failed delivery")
    assert delivery.status == pb.DELIVERY_STATUS_FAILED
    assert [a.status_code for a in delivery.attempts] == [410]
    assert len(gone.hits) == 1

    # While disabled, events make no deliveries.
    await ev.tenant.send(room, "while disabled")
    await marker(ev, room, everything)
    assert len(await ev.deliveries(created.webhook.id)) == 1
    assert len(gone.hits) == 1

    # Keel alone disables.
    error = await rpc_error(ev.set_state(created.webhook.id, pb.WEBHOOK_STATE_DISABLED))
    assert error.code() == INVALID
    assert field_violations(error) == ["webhook.state"]

    gone.default = (200, {})
    active = await ev.set_state(created.webhook.id, pb.WEBHOOK_STATE_ACTIVE)
    assert active.state == pb.WEBHOOK_STATE_ACTIVE
    assert active.disabled_reason == "" and active.consecutive_failures == 0
    await ev.tenant.send(room, "welcome back")
    hits = await gone.wait_for_ok(1)
    assert [h.content for h in hits] == ["welcome back"]


async def test_too_many_failed_attempts_in_a_row_disable_the_webhook(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.default = (500, {})
    async with (
        private_keel(database_url, tmp_path, webhook_disable_after_failures=3) as keel,
        events_for(keel) as ev,
    ):
        created = await ev.create(receiver.url, ["message:created"])
        room = await ev.tenant.group("alice")
        await ev.tenant.send(room, "failing")
        webhook = await ev.wait_for_webhook(
            created.webhook.id, lambda w: w.state == pb.WEBHOOK_STATE_DISABLED, "disabled"
        )
        assert webhook.consecutive_failures == 3
        assert "3 attempts in a row failed" in webhook.disabled_reason
        # The delivery is not given up (its schedule is not used up): it waits, unattempted.
        (delivery,) = await ev.deliveries(created.webhook.id)
        assert delivery.status == pb.DELIVERY_STATUS_PENDING
        assert [a.status_code for a in delivery.attempts] == [500, 500, 500]
        assert len(receiver.hits) == 3

        # Set active again, the webhook gets the waiting delivery.
        receiver.default = (200, {})
        active = await ev.set_state(created.webhook.id, pb.WEBHOOK_STATE_ACTIVE)
        assert (active.consecutive_failures, active.disabled_reason) == (0, "")
        (hit,) = await receiver.wait_for_ok(1)
        assert (hit.content, hit.id) == ("failing", delivery.event_id)
        (done,) = await ev.wait_for_deliveries(created.webhook.id, settled(1), "settled")
        assert done.status == pb.DELIVERY_STATUS_SUCCEEDED
        assert [a.status_code for a in done.attempts] == [500, 500, 500, 200]
        assert len(receiver.hits) == 4


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_delays_the_next_attempt(
    ev: Events, receiver: Receiver, status: int
) -> None:
    receiver.script = [(status, {"Retry-After": "1"})]
    created = await ev.create(receiver.url, ["message:created"])
    room = await ev.tenant.group("alice")
    await ev.tenant.send(room, "slow down")

    (delivery,) = await ev.wait_for_deliveries(created.webhook.id, settled(1), "a delivery")
    assert delivery.status == pb.DELIVERY_STATUS_SUCCEEDED
    assert [a.status_code for a in delivery.attempts] == [status, 200]
    first, second = attempt_times(delivery)
    # The schedule alone would wait about 0.2 s.
    assert second - first >= timedelta(seconds=0.999)


async def test_a_paused_webhook_gets_nothing_and_replay_catches_up(
    ev: Events, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    paused, everything = await receivers(), await receivers()
    created = await ev.create(paused.url, ["message:created"])
    await ev.create(everything.url)
    room = await ev.tenant.group("alice")
    before_pause = datetime.now(UTC)
    webhook = await ev.set_state(created.webhook.id, pb.WEBHOOK_STATE_PAUSED)
    assert webhook.state == pb.WEBHOOK_STATE_PAUSED

    for n in range(3):
        await ev.tenant.send(room, f"paused #{n}")
    await marker(ev, room, everything)
    assert await ev.deliveries(created.webhook.id) == []
    assert paused.hits == []

    await ev.set_state(created.webhook.id, pb.WEBHOOK_STATE_ACTIVE)
    replayed = await ev.stub.ReplayEvents(
        pb.ReplayEventsRequest(webhook_id=created.webhook.id, since_time=since(before_pause)),
        metadata=ev.md,
    )
    assert replayed.count == 4  # three messages and the marker; the filter skips the rest
    hits = await paused.wait_for_ok(4)
    assert sorted(str(h.content) for h in hits)[1:] == ["paused #0", "paused #1", "paused #2"]
    for hit in hits:
        hit.verified(created.secret)


# -- rotation, tests, redelivery, replay ----------------------------------------------------


async def test_during_a_rotation_requests_verify_with_either_secret(
    ev: Events, receiver: Receiver
) -> None:
    created = await ev.create(receiver.url, ["message:created"])
    room = await ev.tenant.group("alice")
    rotated = await ev.stub.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(id=created.webhook.id, grace_period_seconds=3600),
        metadata=ev.md,
    )
    old, new = created.secret, rotated.secret
    assert new.startswith("whsec_") and new != old
    assert rotated.webhook.id == created.webhook.id
    expires = rotated.previous_secret_expire_time.ToDatetime(tzinfo=UTC)
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)

    await ev.tenant.send(room, "signed twice")
    (hit,) = await receiver.wait_for_ok(1)
    signatures = hit.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert hit.verified(old) == hit.verified(new)
    for secret, signature in ((new, signatures[0]), (old, signatures[1])):
        alone = hit.headers | {"webhook-signature": signature}
        verify(secret, alone, hit.body)

    # A rotation with a 1 s grace period: once it is over, only the newest secret signs.
    again = await ev.stub.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(id=created.webhook.id, grace_period_seconds=1),
        metadata=ev.md,
    )
    await asyncio.sleep(1.5)
    await ev.tenant.send(room, "after the grace period")
    hits = await receiver.wait_for_ok(2)
    last = next(h for h in hits if h.content == "after the grace period")
    assert len(last.headers["webhook-signature"].split(" ")) == 1
    last.verified(again.secret)
    for stale in (old, new):
        with pytest.raises(WebhookVerificationError):
            last.verified(stale)


@pytest.mark.parametrize("grace", [-1, 604_801])
async def test_rotation_grace_period_is_checked(ev: Events, receiver: Receiver, grace: int) -> None:
    created = await ev.create(receiver.url)
    error = await rpc_error(
        ev.stub.RotateWebhookSecret(
            pb.RotateWebhookSecretRequest(id=created.webhook.id, grace_period_seconds=grace),
            metadata=ev.md,
        )
    )
    assert error.code() == INVALID
    assert field_violations(error) == ["grace_period_seconds"]


async def test_test_webhook_delivers_a_ping(ev: Events, receiver: Receiver) -> None:
    created = await ev.create(receiver.url, ["message:created"])  # ping ignores the filter
    tested = await ev.stub.TestWebhook(pb.TestWebhookRequest(id=created.webhook.id), metadata=ev.md)
    assert tested.delivery.event == "ping"
    assert tested.delivery.webhook_id == created.webhook.id
    # The answer is the delivery as queued: it does not wait for the attempt.
    assert tested.delivery.status == pb.DELIVERY_STATUS_PENDING
    assert list(tested.delivery.attempts) == []

    (hit,) = await receiver.wait_for_ok(1)
    payload = hit.verified(created.secret)
    assert set(payload) == BODY_KEYS
    assert payload["event"] == "ping"
    assert payload["data"] == {"webhook_id": created.webhook.id}
    assert hit.id == payload["event_id"] == tested.delivery.event_id
    (delivery,) = await ev.wait_for_deliveries(created.webhook.id, settled(1), "the ping")
    assert (delivery.id, delivery.event, delivery.status) == (
        tested.delivery.id,
        "ping",
        pb.DELIVERY_STATUS_SUCCEEDED,
    )


async def test_redeliver_sends_the_event_again_with_the_same_id(
    ev: Events, receiver: Receiver
) -> None:
    created = await ev.create(receiver.url, ["message:created"])
    room = await ev.tenant.group("alice")
    await ev.tenant.send(room, "once more")
    (first,) = await receiver.wait_for_ok(1)
    (delivery,) = await ev.wait_for_deliveries(created.webhook.id, settled(1), "a delivery")

    again = await ev.stub.RedeliverEvent(
        pb.RedeliverEventRequest(delivery_id=delivery.id), metadata=ev.md
    )
    assert again.delivery.id != delivery.id
    assert (again.delivery.event_id, again.delivery.event, again.delivery.webhook_id) == (
        delivery.event_id,
        "message:created",
        created.webhook.id,
    )
    assert again.delivery.status == pb.DELIVERY_STATUS_PENDING

    await receiver.wait_until(lambda: len(receiver.ok()) == 2, "the redelivery")
    second = receiver.ok()[1]
    assert second.id == first.id == delivery.event_id
    one, two = first.verified(created.secret), second.verified(created.secret)
    assert one == two  # a redelivery is the same event: the same body, timestamp included
    found = await ev.wait_for_deliveries(created.webhook.id, settled(2), "two deliveries")
    assert {d.id for d in found} == {delivery.id, again.delivery.id}
    assert {d.status for d in found} == {pb.DELIVERY_STATUS_SUCCEEDED}


async def test_redeliver_needs_an_active_webhook(ev: Events, receiver: Receiver) -> None:
    created = await ev.create(receiver.url)
    tested = await ev.stub.TestWebhook(pb.TestWebhookRequest(id=created.webhook.id), metadata=ev.md)
    await ev.wait_for_deliveries(created.webhook.id, settled(1), "the ping")
    await ev.set_state(created.webhook.id, pb.WEBHOOK_STATE_PAUSED)
    error = await rpc_error(
        ev.stub.RedeliverEvent(
            pb.RedeliverEventRequest(delivery_id=tested.delivery.id), metadata=ev.md
        )
    )
    assert error.code() == PRECONDITION


async def test_replay_queues_past_events_again(
    ev: Events, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    everything = await receivers()
    await ev.create(everything.url)
    room = await ev.tenant.group("alice", "bob")
    early = await ev.tenant.send(room, "before the webhook")
    await everything.wait_until(
        lambda: any(h.content == early.content for h in everything.ok()), "the early message"
    )
    # The early events have been fanned out: the new webhook does not get them by itself.
    receiver = await receivers()
    created = await ev.create(receiver.url, ["message:*"])
    late = [await ev.tenant.send(room, f"after #{n}") for n in range(2)]
    await receiver.wait_for_ok(2)

    replayed = await ev.stub.ReplayEvents(
        pb.ReplayEventsRequest(webhook_id=created.webhook.id, since_time=since(start)),
        metadata=ev.md,
    )
    assert replayed.count == 3  # channel:created and user:joined are not selected
    assert sorted(h.content for h in receiver.ok()) == ["after #0", "after #1"]
    await receiver.wait_until(lambda: len(receiver.ok()) == 5, "the replayed events")
    contents = [h.verified(created.secret)["data"]["message"]["content"] for h in receiver.ok()]
    assert sorted(contents) == sorted([early.content, *[m.content for m in late] * 2])
    ids: dict[str, int] = {}
    for hit in receiver.ok():
        ids[hit.id] = ids.get(hit.id, 0) + 1
    assert sorted(ids.values()) == [1, 2, 2]  # replays keep each event's webhook-id

    future = await ev.stub.ReplayEvents(
        pb.ReplayEventsRequest(
            webhook_id=created.webhook.id, since_time=since(datetime.now(UTC) + timedelta(hours=1))
        ),
        metadata=ev.md,
    )
    assert future.count == 0
    error = await rpc_error(
        ev.stub.ReplayEvents(pb.ReplayEventsRequest(webhook_id=created.webhook.id), metadata=ev.md)
    )
    assert error.code() == INVALID
    assert field_violations(error) == ["since_time"]


async def test_list_deliveries_is_newest_first_a_page_at_a_time(
    ev: Events, receiver: Receiver
) -> None:
    created = await ev.create(receiver.url)
    made = []
    for _ in range(5):
        tested = await ev.stub.TestWebhook(
            pb.TestWebhookRequest(id=created.webhook.id), metadata=ev.md
        )
        made.append(tested.delivery.id)
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await ev.stub.ListDeliveries(
            pb.ListDeliveriesRequest(webhook_id=created.webhook.id, page_size=2, page_token=token),
            metadata=ev.md,
        )
        pages.append([d.id for d in page.deliveries])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == made[::-1]


async def test_webhooks_are_listed_in_creation_order_a_page_at_a_time(
    ev: Events, receiver: Receiver
) -> None:
    made = [(await ev.create(receiver.url, description=f"#{n}")).webhook.id for n in range(5)]
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await ev.stub.ListWebhooks(
            pb.ListWebhooksRequest(page_size=2, page_token=token), metadata=ev.md
        )
        pages.append([w.id for w in page.webhooks])
        token = page.next_page_token
        if not token:
            break
    assert [i for p in pages for i in p] == made
    assert [len(p) for p in pages] == [2, 2, 1]

    await ev.stub.DeleteWebhook(pb.DeleteWebhookRequest(id=made[0]), metadata=ev.md)
    assert [w.id for w in await ev.webhooks()] == made[1:]
    error = await rpc_error(ev.get(made[0]))
    assert error.code() == NOT_FOUND
    error = await rpc_error(
        ev.stub.ListDeliveries(pb.ListDeliveriesRequest(webhook_id=made[0]), metadata=ev.md)
    )
    assert error.code() == NOT_FOUND


# -- SubscribeEvents ------------------------------------------------------------------------


class Stream:
    """A SubscribeEvents call read by a background task into a queue (reads are bounded)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.items: asyncio.Queue[pb.SubscribeEventsResponse | BaseException | None] = (
            asyncio.Queue()
        )
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (item := await self.call.read()) is not grpc.aio.EOF:
                await self.items.put(item)
            await self.items.put(None)
        except grpc.aio.AioRpcError as error:
            await self.items.put(error)

    async def live(self) -> None:
        """Wait for the response headers, sent once the stream is open: from then on every
        event committed reaches it. Fails if the stream was refused instead."""
        try:
            await asyncio.wait_for(self.call.initial_metadata(), WAIT)
        except TimeoutError:
            pytest.fail(f"the event stream sent no headers within {WAIT}s")
        if self.call.done():
            pytest.fail(f"the event stream was refused: {await self.call.code()}")

    async def next(self, within: float = WAIT) -> pb.SubscribeEventsResponse:
        try:
            item = await asyncio.wait_for(self.items.get(), within)
        except TimeoutError:
            pytest.fail(f"nothing arrived on the event stream within {within}s")
        if isinstance(item, BaseException):
            raise item
        assert item is not None, "the event stream ended"
        return item

    async def until(
        self, done: Callable[[pb.SubscribeEventsResponse], bool]
    ) -> list[pb.SubscribeEventsResponse]:
        """Items up to and including the first for which ``done`` holds."""
        found = [await self.next()]
        while not done(found[-1]):
            found.append(await self.next())
        return found

    async def error(self) -> grpc.aio.AioRpcError:
        try:
            item = await asyncio.wait_for(self.items.get(), WAIT)
        except TimeoutError:
            pytest.fail(f"the event stream neither failed nor sent anything within {WAIT}s")
        assert isinstance(item, grpc.aio.AioRpcError), f"expected an error, got {item}"
        return item

    async def close(self) -> None:
        self.call.cancel()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump


@contextlib.asynccontextmanager
async def subscribe(ev: Events, **request: Any) -> AsyncIterator[Stream]:
    stream = Stream(ev.stub.SubscribeEvents(pb.SubscribeEventsRequest(**request), metadata=ev.md))
    try:
        yield stream
    finally:
        await stream.close()


def content_of(item: pb.SubscribeEventsResponse) -> str | None:
    message = json_format.MessageToDict(item.data).get("message")
    return message["content"] if isinstance(message, dict) else None


async def cursor_now(ev: Events, channel_id: str) -> str:
    """A cursor after every event of the tenant so far: the cursor of a marker sent once a
    stream without ``after`` is live (its headers arrived)."""
    async with subscribe(ev) as stream:
        await stream.live()
        text = f"sync {uuid.uuid4().hex}"
        await ev.tenant.send(channel_id, text)
        items = await stream.until(lambda item: content_of(item) == text)
        return str(items[-1].cursor)


def summary(items: Iterable[pb.SubscribeEventsResponse]) -> list[tuple[str, str, int, str | None]]:
    return [(i.event, i.channel_id, i.seq, content_of(i)) for i in items]


async def test_subscribe_resumes_from_the_last_cursor_without_loss_or_repeats(
    ev: Events,
) -> None:
    room = await ev.tenant.group("alice", "bob")
    start = await cursor_now(ev, room)
    sent = [await ev.tenant.send(room, f"m{n}") for n in range(10)]

    async with subscribe(ev, after=start) as first:
        got = [await first.next() for _ in range(4)]
    # Disconnected: more happens meanwhile.
    sent += [await ev.tenant.send(room, f"m{n}") for n in range(10, 15)]
    await ev.add_member(room, "carol")
    await ev.remove_member(room, "carol")

    async with subscribe(ev, after=got[-1].cursor) as second:
        caught_up = [await second.next() for _ in range(6 + 5 + 2)]
        # ...and it continues live.
        sent += [await ev.tenant.send(room, f"m{n}") for n in range(15, 17)]
        live = await second.until(lambda item: content_of(item) == "m16")

    union = got + caught_up + live
    expected = [("message:created", room, m.seq, m.content) for m in sent[:15]] + [
        ("user:joined", room, sent[14].seq, None),
        ("user:left", room, sent[14].seq, None),
    ]
    expected += [("message:created", room, m.seq, m.content) for m in sent[15:]]
    assert summary(union) == expected
    assert len({i.event_id for i in union}) == len({i.cursor for i in union}) == len(union)
    for item in union:
        assert item.create_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    joined = json_format.MessageToDict(union[15].data)
    assert joined["member"]["user_id"] == "carol"
    message = json_format.MessageToDict(union[0].data)["message"]
    assert (message["id"], message["content"]) == (sent[0].id, "m0")


async def test_subscribe_filters_by_event_pattern_and_channel(ev: Events) -> None:
    room_a = await ev.tenant.group("alice")
    room_b = await ev.tenant.group("alice")
    start = await cursor_now(ev, room_a)
    async with (
        subscribe(ev, after=start, events=["message:*"], channel_ids=[room_a]) as messages_in_a,
        subscribe(ev, after=start, events=["user:*"]) as users,
        subscribe(ev, after=start, channel_ids=[room_b]) as in_b,
    ):
        first = await ev.tenant.send(room_a, "a1")
        a, b = first.seq, 0  # room A's seq so far (cursor_now wrote there); room B's
        await ev.tenant.stub.EditMessage(
            chat_pb.EditMessageRequest(channel_id=room_a, message_id=first.id, content="a1!"),
            metadata=ev.md,
        )
        await ev.add_member(room_a, "bob")
        await ev.tenant.send(room_b, "b1")
        await ev.add_member(room_b, "carol")
        await ev.remove_member(room_b, "carol")
        await ev.tenant.send(room_a, "a-end")
        await ev.tenant.send(room_b, "b-end")
        await ev.add_member(room_a, "dave")  # the last event

        assert summary(await messages_in_a.until(lambda i: content_of(i) == "a-end")) == [
            ("message:created", room_a, a, "a1"),
            ("message:updated", room_a, a, "a1!"),
            ("message:created", room_a, a + 1, "a-end"),
        ]
        got_users = await users.until(
            lambda i: json_format.MessageToDict(i.data).get("member", {}).get("user_id") == "dave"
        )
        assert [(i.event, i.channel_id) for i in got_users] == [
            ("user:joined", room_a),
            ("user:joined", room_b),
            ("user:left", room_b),
            ("user:joined", room_a),
        ]
        assert summary(await in_b.until(lambda i: content_of(i) == "b-end")) == [
            ("message:created", room_b, b + 1, "b1"),
            ("user:joined", room_b, b + 1, None),
            ("user:left", room_b, b + 1, None),
            ("message:created", room_b, b + 2, "b-end"),
        ]


async def test_subscribe_sees_only_the_tenant_s_own_events(keel: Keel, ev: Events) -> None:
    async with events_for(keel) as other:
        mine = await ev.tenant.group("alice")
        theirs = await other.tenant.group("alice")
        start = await cursor_now(other, theirs)
        async with subscribe(other, after=start) as stream:
            await ev.tenant.send(mine, "not for them")
            await other.tenant.send(theirs, "theirs")
            items = await stream.until(lambda i: content_of(i) == "theirs")
        assert summary(items) == [("message:created", theirs, items[0].seq, "theirs")]


@pytest.mark.parametrize(
    "after",
    [
        "not-a-cursor",
        "12",
        "abc-def",
        "1-2-3",
        "-5",
        "1-",
        "1²-1",
        "99999999999999999999-1",
        "1-9223372036854775808",
    ],
)
async def test_a_malformed_cursor_is_invalid(ev: Events, after: str) -> None:
    async with subscribe(ev, after=after) as stream:
        error = await stream.error()
    assert error.code() == INVALID
    assert field_violations(error) == ["after"]


@pytest.mark.parametrize(
    ("request_fields", "fields"),
    [
        ({"events": ["message:sent"]}, ["events[0]"]),
        ({"events": ["*", "nope:*"]}, ["events[1]"]),
        ({"channel_ids": ["general"]}, ["channel_ids[0]"]),
    ],
)
async def test_bad_stream_filters_are_invalid(
    ev: Events, request_fields: dict[str, Any], fields: list[str]
) -> None:
    async with subscribe(ev, **request_fields) as stream:
        error = await stream.error()
    assert error.code() == INVALID
    assert field_violations(error) == fields


@contextlib.asynccontextmanager
async def pruned(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Events, str, str]]:
    """A server on a private database whose tenant had events, every one of them removed by
    retention (``SqlEventStore.prune``); the tenant, a channel, and a cursor from before."""
    async with private_keel(database_url, tmp_path) as keel, events_for(keel) as ev:
        room = await ev.tenant.group("alice")
        start = await cursor_now(ev, room)
        for n in range(3):
            await ev.tenant.send(room, f"soon pruned #{n}")
        async with subscribe(ev, after=start) as stream:
            await stream.until(lambda i: content_of(i) == "soon pruned #2")
        txid, position = (int(part) for part in start.split("-"))
        assert encode_cursor((txid, position)) == start

        engine = create_engine(keel.settings.database_url)
        try:
            store = SqlEventStore(engine)
            async with asyncio.timeout(WAIT):
                while True:
                    # Retention keeps an event until its deliveries exist (a moment).
                    await store.prune(datetime.now(UTC) + timedelta(days=1))
                    if await store.head(ev.tenant.id) == (0, 0):
                        break
                    await asyncio.sleep(0.1)
            with pytest.raises(OutOfRange):
                await store.events_after(ev.tenant.id, (txid, position), limit=1)
        except TimeoutError:
            pytest.fail(f"pruning never removed the tenant's events within {WAIT}s")
        finally:
            await engine.dispose()
        yield ev, room, start


async def test_a_cursor_older_than_the_event_log_is_out_of_range(
    database_url: str, tmp_path: Path
) -> None:
    async with pruned(database_url, tmp_path) as (ev, _room, start):
        async with subscribe(ev, after=start) as stream:
            error = await stream.error()
        assert error.code() == OUT_OF_RANGE
        assert "older than the event log keeps" in (error.details() or "")


async def test_new_events_stream_after_retention_removed_every_event(
    database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with pruned(database_url, tmp_path) as (ev, room, _start):
        # Starting again without a cursor works, and so does the cursor it hands out.
        fresh = await cursor_now(ev, room)
        async with subscribe(ev, after=fresh) as stream:
            await ev.tenant.send(room, "after pruning")
            item = await stream.next()
        assert content_of(item) == "after pruning"


# -- bad input, tenants, permissions ----------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "fields"),
    [
        ({"url": "ftp://x"}, ["url"]),
        ({"url": "not a url"}, ["url", "url"]),
        ({"url": "http://user:pw@example.com"}, ["url"]),
        ({"url": ""}, ["url"]),
        ({"events": ["message:sent"]}, ["events[0]"]),
        ({"events": ["message:*", "nope:*"]}, ["events[1]"]),
        ({"events": [""]}, ["events[0]"]),
        ({"events": []}, ["events"]),
        ({"channel_ids": ["general"]}, ["channel_ids[0]"]),
        ({"description": "x" * 501}, ["description"]),
        ({"url": "ftp://x", "events": ["nope"]}, ["url", "events[0]"]),
    ],
)
async def test_bad_webhooks_are_invalid_and_nothing_is_stored(
    ev: Events, receiver: Receiver, request_fields: dict[str, Any], fields: list[str]
) -> None:
    request = {"url": receiver.url, "events": ["message:*"], **request_fields}
    error = await rpc_error(
        ev.stub.CreateWebhook(pb.CreateWebhookRequest(**request), metadata=ev.md)
    )
    assert error.code() == INVALID
    assert field_violations(error) == fields
    assert await ev.webhooks() == []


async def test_bad_updates_are_invalid_and_change_nothing(ev: Events, receiver: Receiver) -> None:
    created = await ev.create(receiver.url, ["message:*"])
    before = await ev.get(created.webhook.id)
    for webhook, paths, fields in [
        (pb.Webhook(id=created.webhook.id, url="ftp://x"), ["url"], ["url"]),
        (pb.Webhook(id=created.webhook.id, events=["nope"]), ["events"], ["events[0]"]),
        (pb.Webhook(id=created.webhook.id), ["events"], ["events"]),
        (pb.Webhook(id=created.webhook.id, channel_ids=["x"]), ["channel_ids"], ["channel_ids[0]"]),
        (pb.Webhook(id=created.webhook.id), ["state"], ["webhook.state"]),
        (pb.Webhook(id=created.webhook.id), [], ["update_mask"]),
        (pb.Webhook(id=created.webhook.id), ["id", "url"], ["update_mask", "url"]),
        (pb.Webhook(id="nope", url=receiver.url), ["url"], ["webhook.id"]),
    ]:
        error = await rpc_error(ev.update(webhook, *paths))
        assert error.code() == INVALID, (webhook, paths)
        assert field_violations(error) == fields, (webhook, paths)
    assert await ev.get(created.webhook.id) == before


PRIVATE = [
    ("127.0.0.1", "127.0.0.1"),
    ("10.0.0.1", "10.0.0.1"),
    ("169.254.169.254", "169.254.169.254"),
    ("[::1]", "::1"),
    ("[fd00::1]", "fd00::1"),
    ("localhost", ""),  # whatever it resolves to first
]


async def test_private_addresses_are_refused_unless_the_operator_allows_them(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        private_keel(database_url, tmp_path, webhook_allow_private=False) as keel,
        events_for(keel) as ev,
    ):
        public = await ev.create("https://93.184.215.14/keel", ["message:*"])
        for host, address in PRIVATE:
            url = f"http://{host}:8080/keel"
            error = await rpc_error(ev.create(url))
            assert error.code() == PRECONDITION, host
            details = error.details() or ""
            assert details.startswith(f"url: {host.strip('[]')!r} resolves to {address}"), details
            assert "KEEL_WEBHOOK_ALLOW_PRIVATE" in details

            error = await rpc_error(ev.update(pb.Webhook(id=public.webhook.id, url=url), "url"))
            assert error.code() == PRECONDITION, host
            assert f"resolves to {address}" in (error.details() or "")
        assert await ev.webhooks() == [await ev.get(public.webhook.id)]
        assert (await ev.get(public.webhook.id)).url == "https://93.184.215.14/keel"


async def test_the_destination_is_checked_again_before_every_attempt(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async with private_database(database_url, tmp_path) as url:
        async with serving(url, tmp_path / "allowing") as allowing:
            async with events_for(allowing) as ev:
                created = await ev.create(receiver.url, ["message:created"])
                room = await ev.tenant.group("alice")
                ev.webhook_ids.clear()  # kept for the next server
        # The webhook was made while private addresses were allowed; the operator turns
        # that off.
        async with serving(url, tmp_path / "refusing", webhook_allow_private=False) as refusing:
            ev = Events(
                replace(ev.tenant, stub=refusing.chat),
                events_pb2_grpc.EventServiceStub(refusing.client),
                [created.webhook.id],
            )
            try:
                await ev.tenant.send(room, "to a private address")
                (delivery,) = await ev.wait_for_deliveries(
                    created.webhook.id, settled(1), "a failed delivery"
                )
                assert delivery.status == pb.DELIVERY_STATUS_FAILED
                assert len(delivery.attempts) == len(SCHEDULE) + 1
                assert {a.status_code for a in delivery.attempts} == {0}
                assert all("loopback" in a.error for a in delivery.attempts)
                assert receiver.hits == []
            finally:
                await ev.cleanup()


async def test_another_tenant_s_webhooks_and_deliveries_are_not_found(
    keel: Keel, ev: Events, receiver: Receiver
) -> None:
    created = await ev.create(receiver.url, ["message:created"])
    tested = await ev.stub.TestWebhook(pb.TestWebhookRequest(id=created.webhook.id), metadata=ev.md)
    await ev.wait_for_deliveries(created.webhook.id, settled(1), "the ping")
    before = await ev.get(created.webhook.id)
    hook_id = created.webhook.id

    async with events_for(keel) as other:
        calls = [
            other.stub.GetWebhook(pb.GetWebhookRequest(id=hook_id), metadata=other.md),
            other.update(pb.Webhook(id=hook_id, description="mine now"), "description"),
            other.set_state(hook_id, pb.WEBHOOK_STATE_PAUSED),
            other.stub.RotateWebhookSecret(
                pb.RotateWebhookSecretRequest(id=hook_id), metadata=other.md
            ),
            other.stub.TestWebhook(pb.TestWebhookRequest(id=hook_id), metadata=other.md),
            other.stub.ListDeliveries(
                pb.ListDeliveriesRequest(webhook_id=hook_id), metadata=other.md
            ),
            other.stub.RedeliverEvent(
                pb.RedeliverEventRequest(delivery_id=tested.delivery.id), metadata=other.md
            ),
            other.stub.ReplayEvents(
                pb.ReplayEventsRequest(webhook_id=hook_id, since_time=since(datetime(2000, 1, 1))),
                metadata=other.md,
            ),
            other.stub.DeleteWebhook(pb.DeleteWebhookRequest(id=hook_id), metadata=other.md),
        ]
        for call in calls:
            error = await rpc_error(call)
            assert error.code() == NOT_FOUND
        assert await other.webhooks() == []

    assert await ev.get(hook_id) == before
    assert len(await ev.deliveries(hook_id)) == 1
    # The secret did not change: the next delivery still verifies with the original one.
    room = await ev.tenant.group("alice")
    await ev.tenant.send(room, "still mine")
    hits = await receiver.wait_for_ok(2)
    next(h for h in hits if h.event == "message:created").verified(created.secret)


async def test_chat_read_may_read_but_not_change_webhooks(
    keel: Keel, ev: Events, receiver: Receiver
) -> None:
    async with events_for(keel, "chat:read") as reader:
        error = await rpc_error(reader.create(receiver.url))
        assert error.code() == DENIED
        assert await reader.webhooks() == []

    # A tenant that made a webhook, then lost chat:write.
    created = await ev.create(receiver.url, ["user:left"])
    tested = await ev.stub.TestWebhook(pb.TestWebhookRequest(id=created.webhook.id), metadata=ev.md)
    room = await ev.tenant.group("alice")
    start = await cursor_now(ev, room)
    await ev.tenant.send(room, "before the change")
    await keel.set_permissions(ev.tenant, "chat:read")
    hook_id = created.webhook.id
    try:
        async with asyncio.timeout(WAIT):
            while True:  # the permission change reaches the server's credential cache
                try:
                    await ev.create(receiver.url)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == DENIED
                    break
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"chat:read could still create webhooks after {WAIT}s")

    assert [w.id for w in await ev.webhooks()][:1] == [hook_id]
    assert (await ev.get(hook_id)).id == hook_id
    assert [d.id for d in await ev.deliveries(hook_id)] == [tested.delivery.id]
    async with subscribe(ev, after=start) as stream:
        assert content_of(await stream.next()) == "before the change"
    for call in [
        ev.update(pb.Webhook(id=hook_id, description="x"), "description"),
        ev.stub.DeleteWebhook(pb.DeleteWebhookRequest(id=hook_id), metadata=ev.md),
        ev.stub.RotateWebhookSecret(pb.RotateWebhookSecretRequest(id=hook_id), metadata=ev.md),
        ev.stub.TestWebhook(pb.TestWebhookRequest(id=hook_id), metadata=ev.md),
        ev.stub.RedeliverEvent(
            pb.RedeliverEventRequest(delivery_id=tested.delivery.id), metadata=ev.md
        ),
        ev.stub.ReplayEvents(
            pb.ReplayEventsRequest(webhook_id=hook_id, since_time=since(datetime(2000, 1, 1))),
            metadata=ev.md,
        ),
    ]:
        error = await rpc_error(call)
        assert error.code() == DENIED
    assert [w.id for w in await ev.webhooks()][:1] == [hook_id]
    await keel.set_permissions(ev.tenant, "chat:*")  # so the clean-up may delete


# -- the database under the dispatcher --------------------------------------------------------


async def test_a_write_cancelled_mid_transaction_releases_the_sqlite_lock(tmp_path: Path) -> None:
    path = tmp_path / "cancelled.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate(engine)

        async def write() -> None:
            async with write_transaction(engine) as conn:
                await conn.execute(text(SLOW_QUERY))

        task = asyncio.create_task(write())
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    if sqlite_write_locked(path):
                        break
                    await asyncio.sleep(0.01)
        except TimeoutError:
            pytest.fail("the write transaction never took the lock")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # A correct rollback frees the lock once the statement ends (about a second).
        try:
            async with asyncio.timeout(5.0):
                while True:
                    if not sqlite_write_locked(path):
                        break
                    await asyncio.sleep(0.1)
        except TimeoutError:
            pytest.fail("the database was still write-locked 5 s after the cancellation")
    finally:
        await engine.dispose()
        collect_leaked_connections()
