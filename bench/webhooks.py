"""The webhook scenario's helpers: a local receiver, and the baseline sender.

``python -m bench.webhooks`` runs a helper driven by :mod:`bench.control`:

- ``listen {port, secret}`` starts an aiohttp receiver on ``127.0.0.1:port`` that
  checks every request's Standard Webhooks signature with ``keel.webhooks.verify``
  (the SDK receivers use), answers 204 (401 on a bad signature), counts the
  events and records each one's latency from the send time carried in its
  message content (``bt~<monotonic ns>~``, same host clock);
- ``stats {reset}`` returns what the receiver counted;
- ``send_baseline {url, secret, count, concurrency, pad}``: the baseline sender,
  the least a dispatcher can do — POST ``count`` signed events from memory with
  the same HTTP client (aiohttp) and the same concurrency as Keel's dispatcher,
  no database.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from bench.control import serve_commands
from bench.hdr import Histogram
from bench.loadgen import baseline_data


class Receiver:
    def __init__(self) -> None:
        self.secret = ""
        self.runner: web.AppRunner | None = None
        self.reset()

    def reset(self) -> None:
        self.t_reset = time.monotonic()
        self.events = 0
        self.bad = 0
        self.ids: set[str] = set()
        self.repeats = 0
        self.latency = Histogram()
        self.first = 0.0
        self.last = 0.0
        self.kinds: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.Response:
        from keel.webhooks import WebhookVerificationError, verify

        body = await request.read()
        now = time.monotonic_ns()
        try:
            payload = verify(self.secret, request.headers, body)
        except WebhookVerificationError:
            self.bad += 1
            return web.Response(status=401)
        event_id = request.headers.get("webhook-id", "")
        if event_id in self.ids:
            self.repeats += 1
        self.ids.add(event_id)
        self.events += 1
        self.kinds[str(payload.get("event"))] += 1
        content = str(((payload.get("data") or {}).get("message") or {}).get("content", ""))
        if content.startswith("bt~"):
            sent = int(content.split("~", 2)[1])
            self.latency.record((now - sent) // 1000)
        t = now / 1e9
        self.first = self.first or t
        self.last = t
        return web.Response(status=204)

    async def listen(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.secret = cmd["secret"]
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", int(cmd.get("port", 0)))
        await site.start()
        port = self.runner.addresses[0][1]
        return {"port": port}

    async def set_secret(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.secret = cmd["secret"]
        return {}

    async def stats(self, cmd: dict[str, Any]) -> dict[str, Any]:
        out = {
            "events": self.events,
            "bad_signatures": self.bad,
            "repeats": self.repeats,
            "kinds": dict(self.kinds),
            "latency_us": self.latency.to_dict(),
            "first": self.first,
            "last": self.last,
            "now": time.monotonic(),
        }
        if cmd.get("reset"):
            self.reset()
        return out

    async def send_baseline(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST ``count`` signed events with ``concurrency`` requests in flight."""
        from keel.webhooks import sign

        url, secret = cmd["url"], cmd["secret"]
        count, concurrency = int(cmd["count"]), int(cmd.get("concurrency", 20))
        pad = int(cmd.get("pad", 0))
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)
        failures = 0
        started = time.monotonic()
        async with ClientSession(timeout=ClientTimeout(total=15)) as session:

            async def post_loop() -> None:
                nonlocal failures
                while not queue.empty():
                    queue.get_nowait()
                    event_id = str(uuid.uuid4())
                    data = json.loads(
                        baseline_data("00000000-0000-4000-8000-000000000001", -1, pad)
                    )
                    body = json.dumps(
                        {
                            "event_id": event_id,
                            "event": "message:created",
                            "channel_id": data["message"]["channel_id"],
                            "seq": 0,
                            "data": data,
                            "timestamp": "2026-01-01T00:00:00Z",
                        },
                        separators=(",", ":"),
                    ).encode()
                    timestamp = int(time.time())
                    headers = {
                        "content-type": "application/json",
                        "webhook-id": event_id,
                        "webhook-timestamp": str(timestamp),
                        "webhook-signature": sign([secret], event_id, timestamp, body),
                    }
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if not 200 <= response.status < 300:
                            failures += 1

            await asyncio.gather(*(post_loop() for _ in range(concurrency)))
        return {"elapsed": round(time.monotonic() - started, 4), "failures": failures}

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        return {}


async def main() -> None:
    receiver = Receiver()
    try:
        await serve_commands(
            {
                "listen": receiver.listen,
                "set_secret": receiver.set_secret,
                "stats": receiver.stats,
                "send_baseline": receiver.send_baseline,
                "close": receiver.close,
            }
        )
    finally:
        await receiver.close({})


if __name__ == "__main__":
    asyncio.run(main())
