"""The notification scenario's helper process: inbox connections, senders, receivers.

``python -m bench.notification_load`` is driven through :mod:`bench.control`:

- ``connect {host, port, conns: [{gid, token}], source, concurrency}`` opens WebSocket
  connections that speak ``keel.v1`` like a browser with an inbox: ``auth`` frame,
  ``welcome``, and nothing else (notification frames need no subscription). Each
  ``notification`` frame is counted, and its latency recorded from the send time
  carried in the notification's title (``bt~<CLOCK_MONOTONIC ns>~``, same host clock);
  the framing is :class:`bench.loadgen.Conn`'s.
- ``wait_frames {count, max_wait}``: until ``count`` connections got a notification
  since the last reset (bounded); ``inbox_stats {reset}``: what the connections saw.
- ``send {addr, metadata, users, channels}``: one ``SendNotification`` to ``users``
  (1,000 a call at the most), its title stamped with the send time;
  ``send_small {addr, metadata, users, concurrency, duration, group}``: closed-loop
  sends of one in-app notification to ``group`` users each (1 by default), the users of
  one call consecutive in ``users``.
- ``noop_listen``: the baseline of ``send_small``, a ``NotificationService`` on grpc.aio
  whose ``SendNotification`` answers at once without any work.
- ``smtp_listen``: an aiosmtpd server on ``127.0.0.1`` accepting every message;
  ``push_listen``: an aiohttp push endpoint answering 201 to every ``POST /push/<id>``;
  ``stats {reset}``: what either one counted (``events``, ``first``, ``last``, as
  :mod:`bench.webhooks`' receiver answers).
- ``smtp_baseline {port, count, size}``: the same number of raw messages of the same
  size over one aiosmtplib connection (as Keel's mailer holds one), no database, no
  rendering; ``push_baseline {url, count, concurrency, size}``: raw POSTs of that many
  random bodies of that size, with that many in flight (as Keel's delivery worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import uuid
from collections import Counter
from email.message import EmailMessage
from typing import Any

import grpc
from keel.notifications.v1 import notifications_pb2 as n
from keel.notifications.v1 import notifications_pb2_grpc

from bench.control import serve_commands
from bench.hdr import Histogram
from bench.loadgen import Conn

_STAMP = re.compile(rb"bt~(\d+)~")
MAX_USERS_PER_SEND = 1000


def stamp(tag: str) -> str:
    """A title carrying its send time (see the module docstring)."""
    return f"bt~{time.monotonic_ns()}~{tag}~"


class InboxConn(Conn):
    """A browser tab with an inbox: authenticates and listens for ``notification`` frames."""

    __slots__ = ()

    def _control(self, payload: bytes, now: int) -> None:
        w: Inboxes = self.w  # type: ignore[assignment]
        try:
            frame = json.loads(payload)
        except ValueError:
            w.errors["bad json"] += 1
            return
        kind = frame.get("type")
        if kind == "welcome":
            self.live = True
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "notification":
            w.notified(self.gid, str(frame["notification"].get("title", "")), now)
        elif kind == "error":
            w.errors[str(frame.get("code"))] += 1
            if not self.ready.done():
                self._fail(f"refused: {frame.get('code')} {frame.get('message')}")
        else:
            w.other += 1

    def _event(self, payload: bytes, now: int) -> None:
        self.w.other += 1  # type: ignore[attr-defined]


class Inboxes:
    """The connections of this process and the notification frames they got."""

    def __init__(self) -> None:
        self.conns: list[InboxConn] = []
        self.closes: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        self.frames = 0  # every frame (read by Conn)
        self.bytes = 0  # every byte (read by Conn)
        self.notifications = 0
        self.seen: set[int] = set()  # connections that got a notification
        self.latency = Histogram()
        self.other = 0
        self.errors: Counter[str] = Counter()
        self.first_ns = 0
        self.last_ns = 0
        self.wanted = 0  # wait_frames: how many connections it waits for
        self.enough = asyncio.Event()

    def notified(self, gid: int, title: str, now: int) -> None:
        self.notifications += 1
        self.seen.add(gid)
        if len(self.seen) >= self.wanted:
            self.enough.set()
        match = _STAMP.match(title.encode())
        if match:
            self.latency.record((now - int(match[1])) // 1000)
        self.first_ns = self.first_ns or now
        self.last_ns = now

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        host, port = cmd["host"], int(cmd["port"])
        gate = asyncio.Semaphore(int(cmd.get("concurrency", 100)))
        failures: Counter[str] = Counter()

        async def open_one(spec: dict[str, Any]) -> None:
            conn = InboxConn(self, int(spec["gid"]), spec["token"], "", None, "keel")  # type: ignore[arg-type]
            conn.host = f"{host}:{port}"
            async with gate:
                try:
                    async with asyncio.timeout(float(cmd.get("conn_timeout", 60))):
                        await loop.create_connection(
                            lambda: conn, host, port, local_addr=(cmd["source"], 0)
                        )
                        await conn.ready
                except Exception as exc:
                    failures[conn.failure or type(exc).__name__] += 1
                    conn.abort()
                    return
            self.conns.append(conn)

        started = time.monotonic()
        await asyncio.gather(*(open_one(spec) for spec in cmd["conns"]))
        return {
            "opened": len(self.conns),
            "failed": sum(failures.values()),
            "failures": dict(failures),
            "seconds": round(time.monotonic() - started, 3),
        }

    async def wait_frames(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.wanted = int(cmd["count"])
        if len(self.seen) < self.wanted:
            self.enough.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.enough.wait(), float(cmd.get("max_wait", 30)))
        return {"reached": len(self.seen)}

    async def stats(self, cmd: dict[str, Any]) -> dict[str, Any]:
        out = {
            "live": sum(1 for c in self.conns if c.live),
            "notifications": self.notifications,
            "connections_notified": len(self.seen),
            "latency_us": self.latency.to_dict(),
            "first": self.first_ns / 1e9,
            "last": self.last_ns / 1e9,
            "other_frames": self.other,
            "errors": dict(self.errors),
            "closes": dict(self.closes),
        }
        if cmd.get("reset"):
            self.reset()
        return out

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        for conn in self.conns:
            conn.abort()
        count = len(self.conns)
        self.conns.clear()
        return {"closed": count}


# -- senders --------------------------------------------------------------------------------


class Senders:
    """gRPC calls to a NotificationService (Keel's or the no-op baseline)."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, addr: str) -> notifications_pb2_grpc.NotificationServiceStub:
        if addr not in self._channels:
            self._channels[addr] = grpc.aio.insecure_channel(addr)
        return notifications_pb2_grpc.NotificationServiceStub(self._channels[addr])

    async def send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        stub = self._stub(cmd["addr"])
        md = tuple((k, v) for k, v in cmd["metadata"])
        users = list(cmd["users"])
        channels = list(cmd["channels"])  # enum value names
        started = time.monotonic_ns()
        sent = 0
        for i in range(0, len(users), MAX_USERS_PER_SEND):
            response = await stub.SendNotification(
                n.SendNotificationRequest(
                    user_ids=users[i : i + MAX_USERS_PER_SEND],
                    title=stamp("f"),
                    body="A benchmark notification.",
                    category="bench",
                    channels=channels,
                ),
                metadata=md,
                timeout=60,
            )
            sent += len(response.notifications)
        return {
            "sent": sent,
            "started": started / 1e9,
            "rpc_seconds": round((time.monotonic_ns() - started) / 1e9, 4),
        }

    async def send_small(self, cmd: dict[str, Any]) -> dict[str, Any]:
        stub = self._stub(cmd["addr"])
        md = tuple((k, v) for k, v in cmd["metadata"])
        users = list(cmd["users"])
        concurrency, duration = int(cmd["concurrency"]), float(cmd["duration"])
        offset = int(cmd.get("offset", 0))
        group = int(cmd.get("group", 1))
        hist = Histogram()
        errors: Counter[str] = Counter()
        ok = 0
        deadline = time.monotonic() + duration

        async def caller(i: int) -> None:
            nonlocal ok
            k = offset + i
            while time.monotonic() < deadline:
                first = (k * group) % len(users)
                recipients = [users[(first + j) % len(users)] for j in range(group)]
                k += concurrency
                t0 = time.monotonic_ns()
                try:
                    await stub.SendNotification(
                        n.SendNotificationRequest(
                            user_ids=recipients,
                            title=stamp("s"),
                            category="bench",
                            channels=[n.NOTIFICATION_CHANNEL_IN_APP],
                        ),
                        metadata=md,
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                    await asyncio.sleep(0.01)
                    continue
                hist.record((time.monotonic_ns() - t0) // 1000)
                ok += 1

        started = time.monotonic()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        return {
            "ok": ok,
            "notifications": ok * group,
            "errors": dict(errors),
            "elapsed": round(time.monotonic() - started, 4),
            "latency_us": hist.to_dict(),
        }

    async def smtp_baseline(self, cmd: dict[str, Any]) -> dict[str, Any]:
        import aiosmtplib

        count, size = int(cmd["count"]), int(cmd.get("size", 2000))
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=int(cmd["port"]), start_tls=False)
        started = time.monotonic()
        await smtp.connect()
        try:
            for i in range(count):
                message = EmailMessage()
                message["From"] = "Keel <keel@localhost>"
                message["To"] = f"baseline-{i}@example.com"
                message["Subject"] = stamp("b")
                message.set_content("x" * size)
                await smtp.send_message(message)
        finally:
            await smtp.quit()
        return {"elapsed": round(time.monotonic() - started, 4)}

    async def push_baseline(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from aiohttp import ClientSession, ClientTimeout

        url, count = cmd["url"], int(cmd["count"])
        concurrency, size = int(cmd.get("concurrency", 16)), int(cmd.get("size", 200))
        queue = list(range(count))
        failures = 0
        started = time.monotonic()
        async with ClientSession(timeout=ClientTimeout(total=15)) as session:

            async def poster() -> None:
                nonlocal failures
                while queue:
                    i = queue.pop()
                    headers = {
                        "Content-Type": "application/octet-stream",
                        "Content-Encoding": "aes128gcm",
                        "TTL": "86400",
                        "Urgency": "normal",
                        "Authorization": "vapid t=baseline, k=baseline",
                    }
                    async with session.post(
                        f"{url}/{i}", data=os.urandom(size), headers=headers
                    ) as response:
                        await response.read()
                        failures += response.status != 201

            await asyncio.gather(*(poster() for _ in range(concurrency)))
        return {"elapsed": round(time.monotonic() - started, 4), "failures": failures}

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


# -- receivers --------------------------------------------------------------------------------


class Receivers:
    """The local SMTP server, push endpoint and no-op NotificationService."""

    def __init__(self) -> None:
        self.smtp: asyncio.Server | None = None
        self.push: Any = None
        self.grpc: grpc.aio.Server | None = None
        self.reset()

    def reset(self) -> None:
        self.events = 0
        self.bytes = 0
        self.latency = Histogram()
        self.first = 0.0
        self.last = 0.0

    def got(self, size: int, content: bytes = b"") -> None:
        now = time.monotonic_ns()
        self.events += 1
        self.bytes += size
        match = _STAMP.search(content)
        if match:
            self.latency.record((now - int(match[1])) // 1000)
        self.first = self.first or now / 1e9
        self.last = now / 1e9

    async def smtp_listen(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from aiosmtpd.smtp import SMTP

        receivers = self

        class Accept:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                content = envelope.content or b""
                receivers.got(len(content), content[:4000])
                return "250 OK"

        loop = asyncio.get_running_loop()
        self.smtp = await loop.create_server(
            lambda: SMTP(Accept(), hostname="bench.localhost"), "127.0.0.1", 0
        )
        return {"port": self.smtp.sockets[0].getsockname()[1]}

    async def push_listen(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from aiohttp import web

        async def accept(request: web.Request) -> web.Response:
            body = await request.read()
            self.got(len(body))
            return web.Response(status=201)

        app = web.Application()
        app.router.add_post("/push/{id}", accept)
        self.push = web.AppRunner(app, access_log=None)
        await self.push.setup()
        site = web.TCPSite(self.push, "127.0.0.1", 0)
        await site.start()
        return {"port": self.push.addresses[0][1]}

    async def noop_listen(self, cmd: dict[str, Any]) -> dict[str, Any]:
        class NoWork(notifications_pb2_grpc.NotificationServiceServicer):
            async def SendNotification(
                self, request: n.SendNotificationRequest, context: Any
            ) -> n.SendNotificationResponse:
                return n.SendNotificationResponse(
                    notifications=[
                        n.Notification(id=str(uuid.uuid4()), user_id=u, title=request.title)
                        for u in request.user_ids
                    ]
                )

        self.grpc = grpc.aio.server()
        notifications_pb2_grpc.add_NotificationServiceServicer_to_server(
            NoWork(),  # type: ignore[abstract]  # the stubs declare every method abstract
            self.grpc,
        )
        port = self.grpc.add_insecure_port("127.0.0.1:0")
        await self.grpc.start()
        return {"addr": f"127.0.0.1:{port}"}

    async def stats(self, cmd: dict[str, Any]) -> dict[str, Any]:
        out = {
            "events": self.events,
            "bytes": self.bytes,
            "latency_us": self.latency.to_dict(),
            "first": self.first,
            "last": self.last,
        }
        if cmd.get("reset"):
            self.reset()
        return out

    async def close(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
        if self.push is not None:
            await self.push.cleanup()
        if self.grpc is not None:
            await self.grpc.stop(0)


async def main() -> None:
    inboxes, senders, receivers = Inboxes(), Senders(), Receivers()
    try:
        await serve_commands(
            {
                "connect": inboxes.connect,
                "wait_frames": inboxes.wait_frames,
                "inbox_stats": inboxes.stats,
                "close": inboxes.close,
                "send": senders.send,
                "send_small": senders.send_small,
                "smtp_baseline": senders.smtp_baseline,
                "push_baseline": senders.push_baseline,
                "smtp_listen": receivers.smtp_listen,
                "push_listen": receivers.push_listen,
                "noop_listen": receivers.noop_listen,
                "stats": receivers.stats,
            }
        )
    finally:
        await inboxes.close({})
        await senders.close()
        await receivers.close()


if __name__ == "__main__":
    asyncio.run(main())
