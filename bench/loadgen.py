"""A load-generator worker: many WebSocket connections speaking keel.v1, in one process.

Run by the orchestrator as ``python -m bench.loadgen`` and driven through
:mod:`bench.control` (commands: ``connect``, ``send``, ``stats``, ``drop``,
``wait_seq``, ``close``). It runs on uvloop when that is installed.

Each connection is a small :class:`asyncio.Protocol` with its own RFC 6455
framing (client frames masked, server frames parsed in place) rather than a
full WebSocket library, so that one process can hold ten thousand connections
and read a few hundred thousand frames a second; the *servers* under test use
the ``websockets`` library. With Keel a connection authenticates with an
``auth`` frame carrying a client token, waits for ``welcome``, subscribes (with
``since_seq`` when resuming) and counts the ``ack``; with the baseline server
it names its room in the URL and waits for the server's ready frame.

Messages carry their send time: the content of every message the harness
sends holds ``bt~<monotonic ns>~<sender>~``, so a receiver's latency is its
receive time minus that, on the same host clock. With many connections the
latency is recorded on every ``sample_every``-th connection only (all of them
are counted), to keep the receivers' own cost down. ``message:created`` seqs are
checked per connection: a repeat counts as a duplicate, a jump as a gap.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections import Counter, deque
from typing import Any

from bench.control import serve_commands
from bench.hdr import Histogram

_EVENT = b'{"type":"event"'
_CREATED = b'{"type":"event","event":"message:created"'
_SEQ = b'"seq":'
_MARK = b"bt~"

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def mask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the repeating 4-byte ``key`` (RFC 6455 §5.3)."""
    n = len(data)
    if not n:
        return b""
    k = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return header + key + mask(payload, key)


def message_content(sender: int, pad: int = 0) -> str:
    """A message text carrying its send time and sender (and ``pad`` filler characters)."""
    return f"bt~{time.monotonic_ns()}~{sender}~" + "x" * pad


def baseline_data(channel_id: str, sender: int, pad: int) -> str:
    """What the baseline server is sent and wraps, unchanged, as an event's ``data``.

    Shaped like Keel's ``message:created`` data (same fields, similar sizes), so
    both servers write frames of about the same length.
    """
    now = "2026-01-01T00:00:00.000000Z"
    return json.dumps(
        {
            "message": {
                "id": "00000000-0000-4000-8000-000000000000",
                "channel_id": channel_id,
                "user_id": f"u{sender}",
                "content": message_content(sender, pad),
                "message_type": "text",
                "reply_to": "",
                "attachment_ids": [],
                "seq": 0,
                "created_at": now,
                "updated_at": now,
                "edited": False,
                "deleted": False,
                "reaction_counts": [],
            }
        },
        separators=(",", ":"),
    )


class Worker:
    """The connections of this process and what they saw."""

    def __init__(self) -> None:
        self.conns: dict[int, Conn] = {}
        self.specs: dict[int, dict[str, Any]] = {}
        self.sources = ["127.0.0.1"]
        self.sample_every = 1
        self.last_seq: dict[int, int] = {}  # gid -> last seq seen (kept across reconnects)
        self.target = 0
        self.storm_t0 = 0
        self.reset()

    def reset(self) -> None:
        self.t_reset = time.monotonic()
        self.events = 0  # message:created frames from others (latency recorded)
        self.echoes = 0  # a connection's own messages coming back
        self.other_events = 0  # other event frames (presence, ...)
        self.frames = 0
        self.bytes = 0
        self.gaps = 0
        self.dups = 0
        self.acks = 0
        self.sent = 0
        self.send_skipped = 0
        self.errors: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.latency = Histogram()
        self.ack_latency = Histogram()
        self.catchup = Histogram()
        self.caught = 0
        self.last_ns = 0

    # -- commands -----------------------------------------------------------------------

    async def connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open ``cmd["conns"]`` connections (bounded concurrency) and wait until subscribed."""
        loop = asyncio.get_running_loop()
        host, port, path = cmd["host"], int(cmd["port"]), cmd.get("path", "/ws")
        mode = cmd.get("mode", "keel")
        timeout = float(cmd.get("conn_timeout", 60.0))
        gate = asyncio.Semaphore(int(cmd.get("concurrency", 100)))
        resume = bool(cmd.get("resume", False))
        if "sample_every" in cmd:
            self.sample_every = max(1, int(cmd["sample_every"]))
        sample_every = self.sample_every
        if cmd.get("sources"):
            self.sources = list(cmd["sources"])
        sources = self.sources
        specs = list(cmd.get("conns") or [])
        if resume and not specs:  # reconnect every connection dropped before
            specs = [self.specs[gid] for gid in self.last_seq]
        for spec in specs:
            self.specs[int(spec["gid"])] = spec
        if "target" in cmd:
            self.target = int(cmd["target"])
            self.storm_t0 = time.monotonic_ns()
            self.caught = 0
            self.catchup = Histogram()
        results: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        handshake = Histogram()

        async def open_one(i: int, spec: dict[str, Any]) -> None:
            gid = int(spec["gid"])
            since = self.last_seq.get(gid) if resume else spec.get("since")
            conn_path = path
            if mode in ("base", "pub"):
                conn_path = (
                    f"{path}?room={spec['channel']}"
                    + (f"&since={since}" if since is not None else "")
                    + ("&pub=1" if mode == "pub" else "")
                )
            conn = Conn(self, gid, spec.get("token", ""), spec["channel"], since, mode)
            conn.path = conn_path
            conn.host = f"{host}:{port}"
            conn.sampled = gid % sample_every == 0
            async with gate:
                started = time.monotonic_ns()
                try:
                    async with asyncio.timeout(timeout):
                        await loop.create_connection(
                            lambda: conn, host, port, local_addr=(sources[i % len(sources)], 0)
                        )
                        await conn.ready
                except Exception as exc:
                    failures[conn.failure or type(exc).__name__] += 1
                    conn.abort()
                    return
            handshake.record((time.monotonic_ns() - started) // 1000)
            self.conns[gid] = conn
            results["subscribed"] += 1

        started = time.monotonic()
        await asyncio.gather(*(open_one(i, spec) for i, spec in enumerate(specs)))
        return {
            "subscribed": results["subscribed"],
            "failed": sum(failures.values()),
            "failures": dict(failures),
            "elapsed": round(time.monotonic() - started, 3),
            "handshake_us": handshake.to_dict(),
        }

    async def send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Send ``rate`` messages/s in all, round-robin over the live connections, for
        ``duration`` s; a connection whose previous send is unanswered is skipped."""
        rate, duration = float(cmd.get("rate", 0)), float(cmd.get("duration", 0))
        pad = int(cmd.get("pad", 0))
        conns = [c for c in self.conns.values() if c.live]
        if "count" in cmd:  # exactly ``count`` messages, at once
            for i in range(int(cmd["count"])):
                conns[i % len(conns)].send_message(pad)
                if i % 100 == 99:
                    await asyncio.sleep(0)
            return {"sent": int(cmd["count"])}
        if not conns or rate <= 0:
            await asyncio.sleep(duration)
            return {"sent": 0}
        t0 = time.monotonic()
        sent = 0
        turn = 0
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= duration:
                break
            due = int(elapsed * rate) + 1 - sent
            for _ in range(due):
                for _ in range(len(conns)):
                    conn = conns[turn % len(conns)]
                    turn += 1
                    if conn.live and not conn.pending:
                        conn.send_message(pad)
                        break
                else:
                    self.send_skipped += 1
                sent += 1
            await asyncio.sleep(0.002)
        return {"sent": sent}

    async def stats(self, cmd: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        live = sum(1 for c in self.conns.values() if c.live)
        out = {
            "window": round(now - self.t_reset, 4),
            "live": live,
            "events": self.events,
            "echoes": self.echoes,
            "other_events": self.other_events,
            "frames": self.frames,
            "bytes": self.bytes,
            "gaps": self.gaps,
            "dups": self.dups,
            "acks": self.acks,
            "sent": self.sent,
            "send_skipped": self.send_skipped,
            "errors": dict(self.errors),
            "closes": dict(self.closes),
            "latency_us": self.latency.to_dict(),
            "ack_latency_us": self.ack_latency.to_dict(),
            "catchup_us": self.catchup.to_dict(),
            "caught": self.caught,
            "last_receive": self.last_ns / 1e9,
        }
        if cmd.get("reset"):
            self.reset()
        return out

    async def wait_quiet(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait until nothing arrived for ``quiet`` s (at most ``timeout`` s)."""
        quiet, timeout = float(cmd.get("quiet", 0.5)), float(cmd.get("max_wait", 10))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_ns / 1e9 >= quiet:
                return {"quiet": True}
            await asyncio.sleep(0.05)
        return {"quiet": False}

    async def wait_seq(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Wait until every connection saw seq ``target`` (at most ``timeout`` s)."""
        target, timeout = int(cmd["target"]), float(cmd.get("max_wait", 30))
        deadline = time.monotonic() + timeout
        while True:
            behind = [c for c in self.conns.values() if c.last_seq < target]
            if not behind or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        return {
            "reached": len(self.conns) - len(behind),
            "behind": len(behind),
            "elapsed_since_storm": round((time.monotonic_ns() - self.storm_t0) / 1e9, 4)
            if self.storm_t0
            else None,
        }

    async def drop(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Cut every connection at once (no close handshake), keeping each one's last seq."""
        count = 0
        for gid, conn in list(self.conns.items()):
            self.last_seq[gid] = conn.last_seq
            conn.abort()
            count += 1
        self.conns.clear()
        return {"dropped": count}

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        for conn in list(self.conns.values()):
            conn.abort()
        count = len(self.conns)
        self.conns.clear()
        await asyncio.sleep(0.1)
        return {"closed": count}


class Conn(asyncio.Protocol):
    """One WebSocket connection (see the module docstring)."""

    __slots__ = (
        "channel",
        "failure",
        "frag",
        "gid",
        "host",
        "last_seq",
        "live",
        "mode",
        "path",
        "pending",
        "ready",
        "rest",
        "sampled",
        "since",
        "state",
        "token",
        "transport",
        "w",
    )

    def __init__(
        self, w: Worker, gid: int, token: str, channel: str, since: int | None, mode: str
    ) -> None:
        self.w = w
        self.gid = gid
        self.token = token
        self.channel = channel
        self.since = since
        self.mode = mode
        self.last_seq = since or 0
        self.state = 0  # 0 connecting, 1 handshake sent, 2 open, 3 closed
        self.rest = b""
        self.frag = b""
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.live = False
        self.pending: deque[int] = deque()
        self.failure = ""
        self.path = "/ws"
        self.host = ""
        self.sampled = True

    # -- transport callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(  # type: ignore[union-attr]
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: keel.v1\r\n\r\n"
            ).encode()
        )
        self.state = 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.live:
            self.w.closes["lost"] += 1
        self.live = False
        self.state = 3
        if not self.ready.done():
            self.failure = self.failure or "connection lost before subscribed"
            self.ready.set_exception(ConnectionError(self.failure))

    def abort(self) -> None:
        self.live = False
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        w = self.w
        now = time.monotonic_ns()
        w.bytes += len(data)
        if self.rest:
            data = self.rest + data
            self.rest = b""
        if self.state == 1:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.rest = data
                return
            status = data[: data.find(b"\r\n")]
            if b" 101 " not in status + b" ":
                self._fail("handshake: " + status.decode(errors="replace")[:80])
                return
            self.state = 2
            data = data[end + 4 :]
            self._opened()
        pos, n = 0, len(data)
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            key = b""
            if b1 & 0x80:
                key = data[pos + head : pos + head + 4]
                head += 4
            end = pos + head + length
            if end > n:
                break
            payload = data[pos + head : end]
            if key:
                payload = mask(payload, key)
            pos = end
            opcode = b0 & 0x0F
            if not b0 & 0x80:  # a fragment: keep until the final one
                self.frag += payload
                continue
            if opcode == OP_CONT:
                payload, self.frag = self.frag + payload, b""
            w.frames += 1
            if opcode == OP_TEXT or (opcode == OP_CONT and payload):
                if payload.startswith(_EVENT):
                    self._event(payload, now)
                else:
                    self._control(payload, now)
            elif opcode == OP_PING:
                self.transport.write(client_frame(OP_PONG, payload))  # type: ignore[union-attr]
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                w.closes[str(code)] += 1
                self.failure = f"closed {code} {payload[2:].decode(errors='replace')}"
                self.live = False
                try:
                    self.transport.write(client_frame(OP_CLOSE, payload[:2]))  # type: ignore[union-attr]
                finally:
                    self.transport.close()  # type: ignore[union-attr]
                return
        if pos < n:
            self.rest = data[pos:]

    # -- keel.v1 ------------------------------------------------------------------------

    def _opened(self) -> None:
        if self.mode == "keel":
            self._send({"type": "auth", "token": self.token})
        elif self.mode == "pub":  # a baseline publisher: nothing to wait for
            self.live = True
            self.ready.set_result(None)

    def _send(self, frame: dict[str, Any]) -> None:
        assert self.transport is not None
        text = json.dumps(frame, separators=(",", ":")).encode()
        self.transport.write(client_frame(OP_TEXT, text))

    def send_message(self, pad: int) -> None:
        """Send one chat message through this connection (keel: a ``send`` frame)."""
        assert self.transport is not None
        w = self.w
        if self.mode == "keel":
            text = json.dumps(
                {
                    "type": "send",
                    "id": "m",
                    "channel_id": self.channel,
                    "content": message_content(self.gid, pad),
                },
                separators=(",", ":"),
            ).encode()
            self.pending.append(time.monotonic_ns())
        else:
            text = baseline_data(self.channel, self.gid, pad).encode()
        self.transport.write(client_frame(OP_TEXT, text))
        w.sent += 1

    def _fail(self, reason: str) -> None:
        self.failure = reason
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        self.abort()

    def _control(self, payload: bytes, now: int) -> None:
        w = self.w
        try:
            frame = json.loads(payload)
        except ValueError:
            w.errors["bad json"] += 1
            return
        kind = frame.get("type")
        if kind == "ack":
            ident = frame.get("id")
            if ident == "s":
                result = frame.get("result") or {}
                self.last_seq = max(self.last_seq, int(result.get("last_seq", 0)))
                self.live = True
                if not self.ready.done():
                    self.ready.set_result(None)
            elif ident == "m":
                w.acks += 1
                if self.pending:
                    w.ack_latency.record((now - self.pending.popleft()) // 1000)
        elif kind == "welcome":
            sub: dict[str, Any] = {"type": "subscribe", "id": "s", "channel_id": self.channel}
            if self.since is not None:
                sub["since_seq"] = self.since
            self._send(sub)
        elif kind == "error":
            w.errors[str(frame.get("code"))] += 1
            if frame.get("id") == "m" and self.pending:
                self.pending.popleft()
            elif frame.get("id") == "s" and not self.ready.done():
                self._fail(f"subscribe refused: {frame.get('code')} {frame.get('message')}")
        elif kind == "typing" or kind == "presence" or kind == "pong":
            w.other_events += 1
        else:
            w.errors[f"unexpected {kind}"] += 1

    def _event(self, payload: bytes, now: int) -> None:
        w = self.w
        if not payload.startswith(_CREATED):
            w.other_events += 1
            return
        i = payload.find(_SEQ, 40)
        j = payload.find(b",", i)
        seq = int(payload[i + 6 : j])
        last = self.last_seq
        if seq <= last:
            w.dups += 1
            return
        if last and seq > last + 1:
            w.gaps += seq - last - 1
        self.last_seq = seq
        w.last_ns = now
        if w.target and seq >= w.target and last < w.target:
            w.caught += 1
            w.catchup.record((now - w.storm_t0) // 1000)
        m = payload.find(_MARK, j)
        if m < 0:
            w.other_events += 1
            return
        e = payload.find(b"~", m + 3)
        e2 = payload.find(b"~", e + 1)
        latency = (now - int(payload[m + 3 : e])) // 1000 if self.sampled else 0
        if int(payload[e + 1 : e2]) == self.gid:
            w.echoes += 1
        else:
            w.events += 1
            if self.sampled:
                w.latency.record(latency)


async def main() -> None:
    worker = Worker()
    await serve_commands(
        {
            "connect": worker.connect,
            "send": worker.send,
            "stats": worker.stats,
            "wait_quiet": worker.wait_quiet,
            "wait_seq": worker.wait_seq,
            "drop": worker.drop,
            "close": worker.close,
        }
    )


def run() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        asyncio.run(main())
    else:
        uvloop.run(main())


if __name__ == "__main__":
    run()
