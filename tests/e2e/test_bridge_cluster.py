"""Two ``keel serve bridge`` processes in front of two gateways, on one PostgreSQL and Redis.

The cluster: a tenant service, gateways G1 and G2, bridge B1 (linked to G1) and
bridge B2 (linked to G2). Browsers are played by WebSocket clients speaking
``keel.v1``. Every client checks, frame by frame, that the channel's
``message:created`` events arrive with seqs exactly one more than the last it
saw: a duplicate or a gap is recorded as a violation and fails the test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from keel.channels.v1 import channels_pb2 as pb
from keel.channels.v1 import channels_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ADMIN_TOKEN, free_port, unique
from tests.e2e.conftest import KeelProcess, PgCluster, bearer, client_metadata

pytestmark = pytest.mark.e2e

PEER_TOKEN = "test-peer-token-0123456789abcdef"
USERS = ("u1", "u2", "u3", "u4")
#: Bounds for every wait in this file (none of them is asserted on).
BRIDGE_START = 20.0
DELIVERY_WAIT = 20.0
REPLY_WAIT = 10.0
#: The longest a gateway may take to stop and start again (a bound, never asserted on).
RESTART_WAIT = 60.0


# --- the cluster ---------------------------------------------------------------------------


@dataclass
class Cluster:
    processes: PgCluster
    g1: KeelProcess
    g2: KeelProcess
    tenant_id: str
    md: tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def cluster(pg_cluster: Callable[..., PgCluster]) -> Cluster:
    """Tenant service + G1 + G2 on one database and Redis, and a tenant with chat and presence."""
    processes = pg_cluster("bridges", KEEL_PEER_TOKEN=PEER_TOKEN)
    g1, g2 = processes.start("gateway"), processes.start("gateway")
    with grpc.insecure_channel(processes.tenant_service.addr) as admin:
        created = tenants_pb2_grpc.TenantServiceStub(admin).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(
                    name=unique("bridges"), permissions=["chat:*", "presence:*"]
                )
            ),
            metadata=bearer(ADMIN_TOKEN),
            timeout=30,
        )
    return Cluster(
        processes,
        g1,
        g2,
        created.tenant.id,
        tuple(client_metadata(created.tenant.client_id, created.client_secret)),
    )


@dataclass
class Room:
    """A group channel with members u1..u4 and a client token for each of them."""

    channel_id: str
    tokens: dict[str, str]


@pytest.fixture
def room(cluster: Cluster) -> Room:
    with grpc.insecure_channel(cluster.g1.addr) as channel:
        stub = channels_pb2_grpc.ChannelServiceStub(channel)
        created = stub.CreateChannel(
            pb.CreateChannelRequest(
                name=unique("room"), created_by=USERS[0], member_ids=list(USERS[1:])
            ),
            metadata=cluster.md,
            timeout=30,
        )
        tokens = {
            user: stub.IssueClientToken(
                pb.IssueClientTokenRequest(user_id=user, ttl_seconds=600),
                metadata=cluster.md,
                timeout=30,
            ).token
            for user in USERS
        }
    return Room(created.channel.id, tokens)


@dataclass
class BridgeProcess:
    keel: KeelProcess
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        return self.keel.process.pid


def healthz(port: int) -> int | None:
    """The status of ``GET /healthz`` on the bridge's WS port (None: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1.0) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def launch_bridge(cluster: Cluster, gateway: KeelProcess, port: int | None = None) -> BridgeProcess:
    """Run ``keel serve bridge`` linked to ``gateway`` (not waiting for it), on ``port``
    (by default a free one)."""
    port = port or free_port()
    keel = cluster.processes.launch(
        "bridge",
        KEEL_GATEWAY_ADDR=gateway.addr,
        KEEL_WS_ADDR=f"127.0.0.1:{port}",
        KEEL_METRICS_ADDR="off",
    )
    return BridgeProcess(keel, port)


def wait_until_healthy(bridges: list[BridgeProcess]) -> None:
    """Poll each bridge's /healthz until it answers 200 (its gateway link is up); bounded."""
    deadline = time.monotonic() + BRIDGE_START
    waiting = list(bridges)
    while waiting:
        for bridge in list(waiting):
            if bridge.keel.process.poll() is not None:
                pytest.fail(f"the bridge exited while starting: {bridge.keel.describe()}")
            if healthz(bridge.port) == 200:
                waiting.remove(bridge)
        if not waiting:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"no 200 from /healthz within {BRIDGE_START}s: {waiting[0].keel.describe()}"
            )
        time.sleep(0.1)


def kill(bridge: BridgeProcess) -> None:
    if bridge.keel.process.poll() is None:
        bridge.keel.process.kill()
    bridge.keel.process.wait()
    bridge.keel.close_files()


@dataclass
class Bridges:
    b1: BridgeProcess
    b2: BridgeProcess


@pytest.fixture
def bridges(cluster: Cluster) -> Iterator[Bridges]:
    """B1 → G1 and B2 → G2, fresh for each test (it may kill or stop them); killed after it."""
    started: list[BridgeProcess] = []
    try:
        started.append(launch_bridge(cluster, cluster.g1))
        started.append(launch_bridge(cluster, cluster.g2))
        wait_until_healthy(started)
        yield Bridges(*started)
    finally:
        for bridge in started:
            kill(bridge)


# --- a browser -----------------------------------------------------------------------------


class Violation(AssertionError):
    pass


@dataclass
class Client:
    """One browser: follows one channel, checks every message seq, reconnects on request.

    ``last_seq`` is the last contiguous seq seen; an event with any other seq than
    ``last_seq + 1`` is a violation (a duplicate or a gap), recorded, never skipped.
    """

    name: str
    token: str
    channel_id: str
    urls: list[str]
    messages: list[tuple[int, str]] = field(default_factory=list)  # (seq, message id)
    events: list[dict[str, Any]] = field(default_factory=list)  # every other event frame
    violations: list[str] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    moves: list[tuple[str, int]] = field(default_factory=list)  # (url, since_seq)
    last_seq: int = 0
    url_index: int = 0

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self.disconnected = asyncio.Event()
        self.stopping = False

    @property
    def url(self) -> str:
        return self.urls[self.url_index]

    async def open(self) -> dict[str, Any]:
        """Connect to the current URL; return the welcome frame."""
        ws = await connect(
            f"{self.url}?token={self.token}",
            subprotocols=["keel.v1"],  # type: ignore[list-item]
            open_timeout=REPLY_WAIT,
            close_timeout=2,
        )
        async with asyncio.timeout(REPLY_WAIT):
            welcome: dict[str, Any] = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        self._ws = ws
        self.disconnected.clear()
        self._reader = asyncio.create_task(self._read(ws), name=f"reader-{self.name}")
        return welcome

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame with a fresh id; return the reply (ack/presence) or fail on an error."""
        assert self._ws is not None
        frame_id = f"{self.name}-{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[frame_id] = future
        try:
            await self._ws.send(json.dumps({**frame, "id": frame_id}))
            async with asyncio.timeout(REPLY_WAIT):
                reply = await future
        finally:
            self._pending.pop(frame_id, None)
        if reply["type"] == "error":
            raise AssertionError(f"{self.name}: {frame['type']} refused: {reply}")
        return reply

    async def subscribe(self) -> dict[str, Any]:
        """Subscribe from ``last_seq``; the replay arrives before the ack."""
        reply = await self.request(
            {"type": "subscribe", "channel_id": self.channel_id, "since_seq": self.last_seq}
        )
        assert reply["type"] == "ack", reply
        assert reply["result"]["channel_id"] == self.channel_id, reply
        return reply

    async def send(self, content: str, client_msg_id: str) -> dict[str, Any]:
        reply = await self.request(
            {
                "type": "send",
                "channel_id": self.channel_id,
                "content": content,
                "client_msg_id": client_msg_id,
            }
        )
        result: dict[str, Any] = reply["result"]
        return result

    async def close(self) -> None:
        self.stopping = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._on_frame(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"{self.name}: connection closed"))
            self.disconnected.set()

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind in ("ack", "error", "presence", "pong") and frame.get("id") in self._pending:
            future = self._pending[frame["id"]]
            if not future.done():
                future.set_result(frame)
            return
        if kind == "error":
            self.violations.append(f"unexpected error frame: {frame}")
            return
        if kind != "event" or frame["channel_id"] != self.channel_id:
            return
        if frame["event"] != "message:created":
            self.events.append(frame)
            return
        seq = frame["seq"]
        self.messages.append((seq, frame["data"]["message"]["id"]))
        if seq == self.last_seq + 1:
            self.last_seq = seq
        elif seq <= self.last_seq:
            self.violations.append(f"duplicate: seq {seq} after {self.last_seq} on {self.url}")
        else:
            self.violations.append(
                f"gap: seq {seq} after {self.last_seq} on {self.url}"
                f" (missing {self.last_seq + 1}..{seq - 1})"
            )
            self.last_seq = seq

    async def stay_subscribed(self) -> None:
        """Whenever the connection drops (and we are not stopping): connect to the next
        bridge and resubscribe from the last seq seen. Bounded attempts."""
        while True:
            await self.disconnected.wait()
            if self.stopping:
                return
            deadline = time.monotonic() + REPLY_WAIT
            while True:
                self.url_index = (self.url_index + 1) % len(self.urls)
                try:
                    await self.open()
                    self.moves.append((self.url, self.last_seq))
                    await self.subscribe()
                    break
                except (OSError, ConnectionError, ConnectionClosed, TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)

    def check(self) -> None:
        if self.violations:
            raise Violation(f"{self.name}: {self.violations[:5]}")

    async def wait_for_seq(self, seq: int) -> None:
        """Wait (bounded) until every message through ``seq`` arrived; fail on a violation."""
        deadline = time.monotonic() + DELIVERY_WAIT
        while self.last_seq < seq:
            self.check()
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.name} on {self.url} has seqs through {self.last_seq},"
                    f" not {seq}, after {DELIVERY_WAIT}s"
                )
            await asyncio.sleep(0.02)
        self.check()

    async def wait_for_event(
        self, match: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """The first non-message event matching ``match`` (bounded wait)."""
        deadline = time.monotonic() + REPLY_WAIT
        while True:
            for event in self.events:
                if match(event):
                    return event
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} never got {what}; it got {self.events}")
            await asyncio.sleep(0.02)


async def joined(name: str, room: Room, *bridges: BridgeProcess) -> Client:
    """A client for ``name`` on the first bridge (the others are where it would move)."""
    client = Client(name, room.tokens[name], room.channel_id, [b.url for b in bridges])
    await client.open()
    ack = await client.subscribe()
    assert ack["result"]["last_seq"] >= 0
    return client


async def close_all(clients: list[Client], followers: list[asyncio.Task[None]]) -> None:
    """Close the clients and stop their reconnecting tasks (``stay_subscribed``)."""
    for client in clients:
        await client.close()
    for task in followers:
        task.cancel()
    await asyncio.gather(*followers, return_exceptions=True)


def assert_exactly(client: Client, expected: dict[int, str]) -> None:
    """The client saw each message once, in seq order 1..N, with the ids the senders got."""
    client.check()
    want = [(seq, expected[seq]) for seq in range(1, len(expected) + 1)]
    assert [seq for seq, _ in client.messages] == list(range(1, len(expected) + 1)), client.name
    assert client.messages == want, client.name


# --- the tests -----------------------------------------------------------------------------


async def test_clients_on_two_bridges_see_every_message_once_in_order(
    room: Room, bridges: Bridges
) -> None:
    clients = [
        await joined("u1", room, bridges.b1),
        await joined("u2", room, bridges.b1),
        await joined("u3", room, bridges.b2),
        await joined("u4", room, bridges.b2),
    ]
    try:

        async def sender(client: Client) -> list[dict[str, Any]]:
            acks = []
            for n in range(25):
                acks.append(await client.send(f"{client.name} #{n}", f"{client.name}-{n}"))
            return acks

        batches = await asyncio.gather(*(sender(c) for c in clients))
        expected = {ack["seq"]: ack["message_id"] for batch in batches for ack in batch}
        assert sorted(expected) == list(range(1, 101))
        for batch in batches:  # one sender's messages are stored in the order it sent them
            assert [a["seq"] for a in batch] == sorted(a["seq"] for a in batch)

        for client in clients:
            await client.wait_for_seq(100)
        # Whatever else was going to arrive (a late duplicate) has had its chance: a ping
        # round trip through each bridge comes after every frame written before it.
        for client in clients:
            assert (await client.request({"type": "ping"}))["type"] == "pong"
        for client in clients:
            assert_exactly(client, expected)
    finally:
        for client in clients:
            await client.close()


async def test_clients_of_a_killed_bridge_resume_on_the_other_without_loss_or_repeats(
    room: Room, bridges: Bridges
) -> None:
    total, half = 200, 120
    movers = [
        await joined("u1", room, bridges.b1, bridges.b2),
        await joined("u2", room, bridges.b1, bridges.b2),
    ]
    senders = [await joined("u3", room, bridges.b2), await joined("u4", room, bridges.b2)]
    everyone = movers + senders
    followers = [asyncio.create_task(m.stay_subscribed()) for m in movers]
    killed = asyncio.Event()
    sent = 0
    try:

        async def sender(client: Client, count: int) -> list[dict[str, Any]]:
            nonlocal sent
            acks = []
            for n in range(count):
                if sent >= half and not killed.is_set():
                    # Keep sending only once B1 is gone, so the kill lands mid-stream.
                    async with asyncio.timeout(DELIVERY_WAIT):
                        await killed.wait()
                acks.append(await client.send(f"{client.name} #{n}", f"{client.name}-{n}"))
                sent += 1
                await asyncio.sleep(0.04)  # a steady pace, under the per-connection limit
            return acks

        async def killer() -> None:
            await movers[0].wait_for_seq(60)
            os.kill(bridges.b1.pid, signal.SIGKILL)
            killed.set()

        batches, _ = await asyncio.gather(
            asyncio.gather(*(sender(c, total // len(senders)) for c in senders)), killer()
        )
        expected = {ack["seq"]: ack["message_id"] for batch in batches for ack in batch}
        assert sorted(expected) == list(range(1, total + 1))

        for client in everyone:
            await client.wait_for_seq(total)
        for client in everyone:
            assert (await client.request({"type": "ping"}))["type"] == "pong"
        for mover in movers:
            assert mover.close_codes[0] == 1006, mover.close_codes  # the TCP connection died
            assert [url for url, _ in mover.moves] == [bridges.b2.url], mover.moves
            assert 60 <= mover.moves[0][1] < total, mover.moves
        for client in everyone:
            assert_exactly(client, expected)
        assert bridges.b1.keel.process.wait(timeout=5) == -signal.SIGKILL
    finally:
        await close_all(everyone, followers)


async def test_presence_crosses_bridges(room: Room, bridges: Bridges) -> None:
    u1 = await joined("u1", room, bridges.b1)
    u2: Client | None = None
    try:
        u2 = await joined("u2", room, bridges.b2)
        online = await u1.wait_for_event(
            lambda e: e["event"] == "presence:online" and e["data"]["user_id"] == "u2",
            "presence:online for u2 (on B2)",
        )
        assert online["channel_id"] == room.channel_id

        listed = await u1.request({"type": "presence", "channel_id": room.channel_id})
        assert listed["type"] == "presence", listed
        assert listed["channel_id"] == room.channel_id
        assert sorted(listed["users"]) == ["u1", "u2"]

        await u2.close()
        await u1.wait_for_event(
            lambda e: e["event"] == "presence:offline" and e["data"]["user_id"] == "u2",
            "presence:offline for u2 after it disconnected from B2",
        )
        listed = await u1.request({"type": "presence", "channel_id": room.channel_id})
        assert listed["users"] == ["u1"], listed
    finally:
        await u1.close()
        if u2 is not None:
            await u2.close()


async def test_sigterm_closes_a_bridges_clients_with_1012_and_exits_0(
    room: Room, bridges: Bridges
) -> None:
    on_b2 = [await joined("u3", room, bridges.b2), await joined("u4", room, bridges.b2)]
    on_b1 = await joined("u1", room, bridges.b1)
    try:
        bridges.b2.keel.signal(signal.SIGTERM)
        for client in on_b2:
            async with asyncio.timeout(REPLY_WAIT):
                await client.disconnected.wait()
            assert client.close_codes == [1012], client.close_codes
        code = await asyncio.to_thread(bridges.b2.keel.process.wait, 15)
        assert code == 0, bridges.b2.keel.describe()
        # B1 was not touched.
        assert not on_b1.disconnected.is_set()
        assert (await on_b1.request({"type": "ping"}))["type"] == "pong"
    finally:
        for client in [*on_b2, on_b1]:
            await client.close()


async def test_a_bridges_log_stays_json_lines_when_connections_close(
    room: Room, bridges: Bridges
) -> None:
    clients = [await joined(USERS[n % len(USERS)], room, bridges.b1) for n in range(24)]
    for client in clients:
        await client.close()
    bridges.b1.keel.signal(signal.SIGTERM)
    code = await asyncio.to_thread(bridges.b1.keel.wait, 15)
    assert code == 0, bridges.b1.keel.describe()
    stderr = bridges.b1.keel.stderr()
    not_json = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not_json == [], "\n".join(not_json[:40])
    closed = [r for r in bridges.b1.keel.log_records() if r["message"] == "connection closed"]
    assert len(closed) >= len(clients)


async def test_a_rolling_restart_of_a_bridge_and_a_gateway_loses_no_message(
    cluster: Cluster, room: Room
) -> None:
    """What an operator's rolling update does — a bridge, then a gateway, stopped with
    SIGTERM and started again on its address while browsers keep sending — costs no
    message: every client sees every seq once, in order. Clients of a stopping bridge
    (closed with 1012) move to the other and resume from their last seq; a bridge whose
    gateway restarts reopens its link and resumes its rooms; a send refused or cut off
    meanwhile is retried with the same client_msg_id, and stored once."""
    # Gateways and bridges of this test's own: the module's G1 and G2 stay as they are.
    # A stopping gateway refuses new calls at once and keeps its Connect streams for the
    # grace period; each bridge here knows only its own gateway's address (no load
    # balancer to try the other), so a short grace keeps the test short.
    grace = {"KEEL_SHUTDOWN_GRACE_SECONDS": "2"}
    g3, g4 = (
        cluster.processes.start("gateway", **grace),
        cluster.processes.start("gateway", **grace),
    )
    b3, b4 = launch_bridge(cluster, g3), launch_bridge(cluster, g4)
    wait_until_healthy([b3, b4])
    clients = [
        await joined("u1", room, b3, b4),
        await joined("u2", room, b4, b3),
        await joined("u3", room, b3, b4),
        await joined("u4", room, b4, b3),
    ]
    senders = clients[2:]
    followers = [asyncio.create_task(c.stay_subscribed()) for c in clients]
    restarted = asyncio.Event()
    acks: list[dict[str, Any]] = []
    retried: list[str] = []
    try:

        async def send_until_restarted(client: Client) -> None:
            for n in itertools.count():
                if restarted.is_set() and n >= 40:
                    return
                msg_id = f"{client.name}-{n}"
                deadline = time.monotonic() + RESTART_WAIT
                while True:
                    try:
                        acks.append(await client.send(f"{client.name} #{n}", msg_id))
                        break
                    except (AssertionError, ConnectionError, ConnectionClosed, TimeoutError):
                        # Refused while its gateway restarts, or cut off by its bridge's
                        # stop: the same client_msg_id again, once it is connected.
                        retried.append(msg_id)
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.1)  # retry pacing, bounded by the deadline
                await asyncio.sleep(0.06)  # a steady pace, under the per-connection limit

        async def restart_each() -> None:
            nonlocal b3, g4
            await clients[0].wait_for_seq(20)
            # B3 first: its clients (u1, u3) move to B4 and resume there.
            assert await asyncio.to_thread(b3.keel.stop) == 0, b3.keel.describe()
            b3 = launch_bridge(cluster, g3, b3.port)
            await asyncio.to_thread(wait_until_healthy, [b3])
            await clients[0].wait_for_seq(clients[0].last_seq + 10)
            # Then G4, the gateway of the bridge every client is on now: B4 reopens its
            # stream and resumes its rooms; sends refused meanwhile are retried.
            assert await asyncio.to_thread(g4.stop) == 0, g4.describe()
            g4 = await asyncio.to_thread(
                cluster.processes.start, "gateway", KEEL_GRPC_ADDR=g4.addr, **grace
            )
            await asyncio.to_thread(wait_until_healthy, [b3, b4])
            await clients[0].wait_for_seq(clients[0].last_seq + 10)
            restarted.set()

        await asyncio.gather(restart_each(), *(send_until_restarted(c) for c in senders))

        expected = {ack["seq"]: ack["message_id"] for ack in acks}
        total = len(expected)
        # Every send was stored once, retries included: the seqs are 1..N without a hole.
        assert sorted(expected) == list(range(1, total + 1))
        assert len(acks) == total
        for client in clients:
            await client.wait_for_seq(total)
        for client in clients:
            assert (await client.request({"type": "ping"}))["type"] == "pong"
        for client in clients:
            assert_exactly(client, expected)
        # B3's clients were moved by its stop (1012) and resumed where they were.
        for client in (clients[0], clients[2]):
            assert 1012 in client.close_codes, (client.name, client.close_codes)
    finally:
        await close_all(clients, followers)
        for bridge in (b3, b4):
            kill(bridge)
