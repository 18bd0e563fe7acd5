"""A backend client helper: ``ChannelService.SendMessage`` load over gRPC, in one process.

Run as ``python -m bench.grpcload`` and driven through :mod:`bench.control`:

- ``api``: closed loop — ``concurrency`` callers each send, wait for the answer,
  send again, for ``duration`` s, over a set of channels; every call's latency
  goes in a histogram;
- ``publish``: open loop — messages at a steady ``rate`` to one channel whatever
  the answers' pace (at most ``max_in_flight`` outstanding; a tick that finds
  the limit reached counts as ``lagged``), for the fan-out and webhook scenarios;
- ``burst``: ``count`` messages as fast as ``concurrency`` callers go.

Each message's content carries its send time (``bt~<monotonic ns>~-1~``) so the
receivers can measure delivery latency.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import grpc
from keel.channels.v1 import channels_pb2, channels_pb2_grpc

from bench.control import serve_commands
from bench.hdr import Histogram
from bench.loadgen import message_content

PUBLISHER = -1


async def send(
    stub: channels_pb2_grpc.ChannelServiceStub,
    md: tuple[tuple[str, str], ...],
    channel_id: str,
    user_id: str,
    pad: int,
) -> channels_pb2.SendMessageResponse:
    """One timestamped message (see the module docstring); raises ``grpc.aio.AioRpcError``."""
    response: channels_pb2.SendMessageResponse = await stub.SendMessage(
        channels_pb2.SendMessageRequest(
            channel_id=channel_id, user_id=user_id, content=message_content(PUBLISHER, pad)
        ),
        metadata=md,
        timeout=10,
    )
    return response


class Load:
    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, addr: str) -> channels_pb2_grpc.ChannelServiceStub:
        channel = self._channels.get(addr)
        if channel is None:
            channel = self._channels[addr] = grpc.aio.insecure_channel(addr)
        return channels_pb2_grpc.ChannelServiceStub(channel)

    @staticmethod
    def _metadata(cmd: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in cmd.get("metadata", []))

    async def api(self, cmd: dict[str, Any]) -> dict[str, Any]:
        stub = self._stub(cmd["addr"])
        md = self._metadata(cmd)
        channels = list(cmd["channels"])
        user_id = cmd.get("user_id", "")
        concurrency, duration = int(cmd["concurrency"]), float(cmd["duration"])
        pad = int(cmd.get("pad", 0))
        hist = Histogram()
        errors: Counter[str] = Counter()
        ok = 0
        deadline = time.monotonic() + duration

        async def caller(i: int) -> None:
            nonlocal ok
            n = i
            while time.monotonic() < deadline:
                channel_id = channels[n % len(channels)]
                n += concurrency
                started = time.monotonic_ns()
                try:
                    await send(stub, md, channel_id, user_id, pad)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                    await asyncio.sleep(0.01)
                    continue
                hist.record((time.monotonic_ns() - started) // 1000)
                ok += 1

        started = time.monotonic()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        return {
            "ok": ok,
            "errors": dict(errors),
            "elapsed": round(time.monotonic() - started, 4),
            "latency_us": hist.to_dict(),
        }

    async def publish(self, cmd: dict[str, Any]) -> dict[str, Any]:
        stub = self._stub(cmd["addr"])
        md = self._metadata(cmd)
        channel_id, user_id = cmd["channel"], cmd.get("user_id", "")
        rate, duration = float(cmd["rate"]), float(cmd["duration"])
        max_in_flight = int(cmd.get("max_in_flight", 200))
        pad = int(cmd.get("pad", 0))
        errors: Counter[str] = Counter()
        hist = Histogram()
        ok = sent = lagged = 0
        in_flight: set[asyncio.Task[None]] = set()
        last_seq = 0

        async def one() -> None:
            nonlocal ok, last_seq
            started = time.monotonic_ns()
            try:
                response = await send(stub, md, channel_id, user_id, pad)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                return
            hist.record((time.monotonic_ns() - started) // 1000)
            last_seq = max(last_seq, response.message.seq)
            ok += 1

        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= duration:
                break
            due = int(elapsed * rate) + 1 - sent
            for _ in range(max(due, 0)):
                if len(in_flight) >= max_in_flight:
                    lagged += 1
                    sent += 1
                    continue
                task = loop.create_task(one())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                sent += 1
            await asyncio.sleep(min(0.002, max(0.0, (sent / rate) - elapsed)))
        if in_flight:
            await asyncio.wait(in_flight, timeout=15)
        return {
            "sent": sent - lagged,
            "ok": ok,
            "lagged": lagged,
            "errors": dict(errors),
            "elapsed": round(time.monotonic() - t0, 4),
            "last_seq": last_seq,
            "latency_us": hist.to_dict(),
        }

    async def burst(self, cmd: dict[str, Any]) -> dict[str, Any]:
        stub = self._stub(cmd["addr"])
        md = self._metadata(cmd)
        channel_id, user_id = cmd["channel"], cmd.get("user_id", "")
        count, concurrency = int(cmd["count"]), int(cmd.get("concurrency", 20))
        pad = int(cmd.get("pad", 0))
        errors: Counter[str] = Counter()
        remaining = count
        last_seq = 0
        ok = 0

        async def caller() -> None:
            nonlocal remaining, last_seq, ok
            while remaining > 0:
                remaining -= 1
                try:
                    response = await send(stub, md, channel_id, user_id, pad)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                    continue
                ok += 1
                last_seq = max(last_seq, response.message.seq)

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return {
            "ok": ok,
            "errors": dict(errors),
            "elapsed": round(time.monotonic() - started, 4),
            "last_seq": last_seq,
        }

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        return {}


async def main() -> None:
    load = Load()
    try:
        await serve_commands(
            {"api": load.api, "publish": load.publish, "burst": load.burst, "close": load.close}
        )
    finally:
        await load.close({})


if __name__ == "__main__":
    asyncio.run(main())
