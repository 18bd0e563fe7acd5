"""The six scenarios, each measured on Keel and on its baseline in the same invocation.

Every scenario returns a dict: ``params``, ``keel`` and ``baseline`` figures,
``ratios`` (Keel ÷ baseline), ``targets`` (the issue's, with ``met`` true,
false, or null when this profile does not run the target's size) and ``notes``.
Memory and CPU are the kernel's figures for the server processes
(:mod:`bench.osstats`); latencies come from the send times carried in the
messages (:mod:`bench.loadgen`), in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import cluster as kc
from bench.control import Helper
from bench.hdr import Histogram
from bench.osstats import PeakSampler, ProcessMeter, cpu_seconds, rss_bytes
from bench.profiles import CONNS_PER_WORKER

MIB = 2**20
#: Latency is recorded on about this many connections (every one is counted).
LATENCY_SAMPLED_CONNECTIONS = 2000
#: Memory per idle subscribed connection, KiB, at 15,000 per bridge (issue 13; it was 16).
IDLE_KIB_TARGET = 12


@dataclass
class Context:
    """What the scenarios of one invocation share."""

    profile: str
    log_dir: Path
    cluster: kc.KeelCluster
    log_level: str = "INFO"
    py_spy: Path | None = None
    _next_source: int = 2
    _names: int = 0
    helpers: list[Helper] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)

    def source(self) -> str:
        """A loopback source address of its own for the next load-generator process."""
        octet = self._next_source
        self._next_source = 2 + (self._next_source - 1) % 250
        return f"127.0.0.{octet}"

    async def helper(self, module: str) -> Helper:
        self._names += 1
        helper = Helper(
            f"{module.rsplit('.', 1)[-1]}-{self._names}", ["-m", module], self.log_dir / "helpers"
        )
        await helper.start()
        self.helpers.append(helper)
        return helper

    async def stop_helpers(self, helpers: Sequence[Helper]) -> None:
        await asyncio.gather(*(h.stop() for h in helpers), return_exceptions=True)
        for helper in helpers:
            if helper in self.helpers:
                self.helpers.remove(helper)


# -- small tools ---------------------------------------------------------------------------


def ms(hist: Histogram) -> dict[str, float | int]:
    return hist.summary(scale=1000.0)


def ratio(keel: float | None, base: float | None) -> float | None:
    if keel is None or base is None or base == 0:
        return None
    return round(keel / base, 3)


def target(name: str, wanted: str, value: Any, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"name": name, "target": wanted, "value": value, "met": met, "note": note}


@dataclass
class Fleet:
    """Load-generator workers and the connections they hold."""

    workers: list[Helper]
    opened: dict[str, Any]


async def open_connections(
    ctx: Context,
    targets: Sequence[tuple[int, list[dict[str, Any]]]],
    *,
    mode: str,
    concurrency: int = 100,
    path: str = "/ws",
    pids: dict[str, int] | None = None,
    min_workers: int = 1,
) -> Fleet:
    """For each (port, connection specs): start workers (≤ CONNS_PER_WORKER connections each,
    one source address each) and open every connection; wait until all are subscribed."""
    jobs = []
    workers = []
    for port, specs in targets:
        n_workers = max(min_workers, math.ceil(len(specs) / CONNS_PER_WORKER))
        per = math.ceil(len(specs) / n_workers)
        for k in range(n_workers):
            part = specs[k * per : (k + 1) * per]
            if not part:
                continue
            worker = await ctx.helper("bench.loadgen")
            workers.append(worker)
            jobs.append((worker, port, part))
    per_worker_concurrency = max(10, concurrency // max(1, len(jobs)))
    total_specs = sum(len(part) for _, _, part in jobs)
    sample_every = max(1, math.ceil(total_specs / LATENCY_SAMPLED_CONNECTIONS))
    usage = meter(pids or {})
    results = await asyncio.gather(
        *(
            w.call(
                "connect",
                wait=600,
                host="127.0.0.1",
                port=port,
                path=path,
                mode=mode,
                conns=part,
                sources=[ctx.source()],
                concurrency=per_worker_concurrency,
                conn_timeout=60,
                sample_every=sample_every,
            )
            for w, port, part in jobs
        )
    )
    opened = merge_connect(results)
    opened["latency_sampled_every"] = sample_every
    if pids:
        opened["cpu_while_connecting"] = usage.stop()
    return Fleet(workers, opened)


def merge_connect(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    failures: dict[str, int] = {}
    for r in results:
        for k, v in r.get("failures", {}).items():
            failures[k] = failures.get(k, 0) + v
    hist = Histogram.merged(r["handshake_us"] for r in results)
    elapsed = max((r["elapsed"] for r in results), default=0.0)
    subscribed = sum(r["subscribed"] for r in results)
    return {
        "subscribed": subscribed,
        "failed": sum(r["failed"] for r in results),
        "failures": failures,
        "seconds": elapsed,
        "per_second": round(subscribed / elapsed, 1) if elapsed else None,
        "connect_subscribe_ms": ms(hist),
    }


async def gather_stats(workers: Sequence[Helper], reset: bool = False) -> dict[str, Any]:
    parts = await asyncio.gather(*(w.call("stats", reset=reset) for w in workers))
    total: dict[str, Any] = {}
    for key in (
        "live",
        "events",
        "echoes",
        "other_events",
        "frames",
        "bytes",
        "gaps",
        "dups",
        "acks",
        "sent",
        "send_skipped",
        "caught",
    ):
        total[key] = sum(p[key] for p in parts)
    errors: dict[str, int] = {}
    closes: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for k, v in p["closes"].items():
            closes[k] = closes.get(k, 0) + v
    total["errors"] = errors
    total["closes"] = closes
    total["latency"] = Histogram.merged(p["latency_us"] for p in parts)
    total["ack_latency"] = Histogram.merged(p["ack_latency_us"] for p in parts)
    total["catchup"] = Histogram.merged(p["catchup_us"] for p in parts)
    total["last_receive"] = max((p["last_receive"] for p in parts), default=0.0)
    return total


async def wait_quiet(workers: Sequence[Helper], quiet: float = 0.5, limit: float = 15) -> None:
    await asyncio.gather(
        *(w.call("wait_quiet", wait=limit + 30, quiet=quiet, max_wait=limit) for w in workers)
    )


async def wait_seq(workers: Sequence[Helper], seq: int, limit: float) -> list[dict[str, Any]]:
    return list(
        await asyncio.gather(
            *(w.call("wait_seq", wait=limit + 30, target=seq, max_wait=limit) for w in workers)
        )
    )


def meter(processes: dict[str, int]) -> ProcessMeter:
    m = ProcessMeter(processes)
    m.start()
    return m


@contextlib.asynccontextmanager
async def bridges(ctx: Context, count: int) -> AsyncIterator[list[kc.Process]]:
    started = await ctx.cluster.start_bridges(count)
    try:
        yield started
    finally:
        await ctx.cluster.stop_bridges(started)


@contextlib.asynccontextmanager
async def baseline(ctx: Context, mode: str, loop: str = "asyncio") -> AsyncIterator[kc.Process]:
    server = await asyncio.to_thread(kc.start_baseline, mode, ctx.log_dir, loop=loop)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def fleet(ctx: Context, *args: Any, **kwargs: Any) -> AsyncIterator[Fleet]:
    opened = await open_connections(ctx, *args, **kwargs)
    try:
        yield opened
    finally:
        await asyncio.gather(
            *(w.call("close", wait=60) for w in opened.workers), return_exceptions=True
        )
        await ctx.stop_helpers(opened.workers)


async def users_and_tokens(ctx: Context, n: int) -> tuple[list[str], list[str]]:
    """``n`` users of the benchmark tenant and a client token for each. Users and tokens
    are made once per invocation and shared by the scenarios (each has channels of its
    own), since issuing them is set-up, not what is measured."""
    assert ctx.cluster.tenant is not None
    have = len(ctx.tokens)
    if n > have:
        users = [f"user-{i}" for i in range(have, n)]
        t0 = time.monotonic()
        ctx.tokens += await asyncio.to_thread(
            kc.issue_tokens, ctx.cluster.gateway_addr, ctx.cluster.tenant.metadata, users
        )
        elapsed = time.monotonic() - t0
        ctx.setup["client_tokens_issued"] = ctx.setup.get("client_tokens_issued", 0) + n - have
        ctx.setup["client_token_seconds"] = round(
            ctx.setup.get("client_token_seconds", 0) + elapsed, 2
        )
        print(f"[bench]   {n - have} client tokens in {elapsed:.1f} s", file=sys.stderr, flush=True)
    users = [f"user-{i}" for i in range(n)]
    tokens = ctx.tokens[:n]
    return users, tokens


async def public_channels(ctx: Context, prefix: str, n: int) -> list[str]:
    assert ctx.cluster.tenant is not None
    specs = [(f"{prefix}-{i}", kc.PUBLIC, "", ()) for i in range(n)]
    return await asyncio.to_thread(
        kc.create_channels, ctx.cluster.gateway_addr, ctx.cluster.tenant.metadata, specs
    )


def core_pids(ctx: Context) -> dict[str, int]:
    assert ctx.cluster.gateway is not None and ctx.cluster.tenant_service is not None
    return {"gateway": ctx.cluster.gateway.pid, "tenant_service": ctx.cluster.tenant_service.pid}


async def settle(seconds: float = 1.0) -> None:
    await asyncio.sleep(seconds)


@contextlib.asynccontextmanager
async def py_spy_record(ctx: Context, pid: int, seconds: float) -> AsyncIterator[None]:
    """Sample ``pid`` with py-spy (non-blocking, raw collapsed stacks to ``ctx.py_spy``)."""
    exe = Path(sys.executable).parent / "py-spy"
    if ctx.py_spy is None or not exe.exists():
        yield
        return
    ctx.py_spy.parent.mkdir(parents=True, exist_ok=True)
    with (ctx.log_dir / "py-spy.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--output",
            str(ctx.py_spy),
            "--format",
            "raw",
            "--rate",
            "250",
            "--duration",
            str(max(1, int(seconds))),
            "--nonblocking",
            stdout=log,
            stderr=log,
        )
        try:
            yield
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# -- 1. idle connections -------------------------------------------------------------------


async def idle(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    n_bridges, per_bridge, window = p["bridges"], p["conns_per_bridge"], p["idle_seconds"]
    total = n_bridges * per_bridge
    per_channel = 100
    channels = await public_channels(ctx, "idle", max(1, math.ceil(total / per_channel)))
    _, tokens = await users_and_tokens(ctx, total)
    specs = [
        {"gid": i, "token": tokens[i], "channel": channels[i // per_channel]} for i in range(total)
    ]
    keel: dict[str, Any] = {}
    async with bridges(ctx, n_bridges) as started:
        await settle(1.0)
        before = {b.pid: rss_bytes(b.pid) for b in started}
        targets = [
            (b.ws_port, specs[k * per_bridge : (k + 1) * per_bridge]) for k, b in enumerate(started)
        ]
        pids = {f"bridge{k}": b.pid for k, b in enumerate(started)} | core_pids(ctx)
        async with fleet(ctx, targets, mode="keel", concurrency=100, pids=pids) as opened:
            await settle(2.0)
            m = meter(pids)
            await asyncio.sleep(window)
            usage = m.stop()
            stats = await gather_stats(opened.workers)
            per_bridge_figures = []
            for k, b in enumerate(started):
                after = rss_bytes(b.pid)
                conns = kc.metric_value(b.metrics_port, "keel_bridge_connections")
                held = int(conns) if conns else per_bridge
                per_bridge_figures.append(
                    {
                        "connections": held,
                        "rss_before_mib": round(before[b.pid] / MIB, 1),
                        "rss_after_mib": round(after / MIB, 1),
                        "kib_per_connection": round((after - before[b.pid]) / 1024 / held, 2),
                        "idle_cpu_percent": usage[f"bridge{k}"]["cpu_percent"],
                    }
                )
            keel = {
                "connections": stats["live"],
                "connect": opened.opened,
                "bridges": per_bridge_figures,
                "kib_per_connection": round(
                    sum(b["kib_per_connection"] for b in per_bridge_figures) / n_bridges, 2
                ),
                "idle_cpu_percent_per_bridge": round(
                    sum(b["idle_cpu_percent"] for b in per_bridge_figures) / n_bridges, 2
                ),
                "gateway": usage["gateway"],
                "closes": stats["closes"],
                "errors": stats["errors"],
            }
    base: dict[str, Any] = {}
    async with baseline(ctx, "ws", p.get("baseline_loop", "asyncio")) as server:
        await settle(0.5)
        before_b = rss_bytes(server.pid)
        bspecs = [{"gid": i, "channel": f"room{i // per_channel}"} for i in range(per_bridge)]
        async with fleet(
            ctx,
            [(server.ws_port, bspecs)],
            mode="base",
            concurrency=100,
            pids={"baseline": server.pid},
        ) as opened:
            await settle(2.0)
            m = meter({"baseline": server.pid})
            await asyncio.sleep(window)
            usage = m.stop()
            after_b = rss_bytes(server.pid)
            stats = await gather_stats(opened.workers)
            base = {
                "connections": stats["live"],
                "connect": opened.opened,
                "rss_before_mib": round(before_b / MIB, 1),
                "rss_after_mib": round(after_b / MIB, 1),
                "kib_per_connection": round((after_b - before_b) / 1024 / max(1, stats["live"]), 2),
                "idle_cpu_percent": usage["baseline"]["cpu_percent"],
            }
    full_size = per_bridge >= 15000
    return {
        "title": "Idle connections",
        "params": p | {"connections_total": total, "subscribers_per_channel": per_channel},
        "keel": keel,
        "baseline": base,
        "ratios": {
            "kib_per_connection": ratio(keel["kib_per_connection"], base["kib_per_connection"]),
            "connects_per_second": ratio(
                keel["connect"]["per_second"], base["connect"]["per_second"]
            ),
        },
        "targets": [
            target(
                "memory per idle subscribed connection",
                f"≤ {IDLE_KIB_TARGET} KiB at 15,000 per bridge process",
                keel["kib_per_connection"],
                (keel["kib_per_connection"] <= IDLE_KIB_TARGET) if full_size else None,
                ""
                if full_size
                else f"measured at {per_bridge:,} per bridge ({ctx.profile} profile)",
            ),
            target(
                "connections held",
                "15,000 per bridge process; 60,000 across 4",
                keel["connections"],
                (keel["connections"] >= 60000 and n_bridges >= 4) if n_bridges >= 4 else None,
                "" if n_bridges >= 4 else "only the full profile opens 60,000",
            ),
        ],
        "notes": [],
    }


# -- 2. broadcast fan-out ------------------------------------------------------------------


async def _fanout_steps(
    ctx: Context,
    workers: Sequence[Helper],
    publish: Any,
    subscribers: int,
    rates: Sequence[float],
    step: float,
    pids: dict[str, int],
) -> list[dict[str, Any]]:
    steps = []
    for rate in rates:
        await wait_quiet(workers)
        await gather_stats(workers, reset=True)
        m = meter(pids)
        t0 = time.monotonic()
        sent = await publish(rate, step)
        await wait_quiet(workers, quiet=0.5, limit=max(10.0, step * 3))
        stats = await gather_stats(workers)
        usage = m.stop()
        window = max(stats["last_receive"] - t0, step) if stats["last_receive"] else step
        delivered = stats["events"]
        expected = sent["ok"] * subscribers
        lat = ms(stats["latency"])
        steps.append(
            {
                "rate": rate,
                "published": sent["ok"],
                "publish_lagged": sent.get("lagged", 0),
                "expected_deliveries": expected,
                "deliveries": delivered,
                "completion": round(delivered / expected, 4) if expected else None,
                "deliveries_per_second": round(delivered / window),
                "offered_deliveries_per_second": round(rate * subscribers),
                "latency_ms": lat,
                "gaps": stats["gaps"],
                "dups": stats["dups"],
                "closes": stats["closes"],
                "cpu": usage,
            }
        )
        saturated = (
            (expected and delivered / expected < 0.97)
            or delivered / window < 0.9 * rate * subscribers
            or lat["p99"] > 1000
            or sent.get("lagged", 0) > 0
            or stats["closes"]
        )
        if saturated:
            break
    return steps


def _fanout_summary(steps: list[dict[str, Any]], server: str, subscribers: int) -> dict[str, Any]:
    best = max(steps, key=lambda s: s["deliveries_per_second"])
    cpu = best["cpu"][server]["cpu_seconds"]
    reference = min(steps, key=lambda s: abs(s["offered_deliveries_per_second"] - 100_000))
    at10 = next((s for s in steps if s["rate"] == 10), steps[0])
    return {
        "subscribers": subscribers,
        "max_deliveries_per_second": best["deliveries_per_second"],
        "at_rate": best["rate"],
        "deliveries_per_cpu_second": round(best["deliveries"] / cpu) if cpu > 0 else None,
        "cpu_percent_at_max": best["cpu"][server]["cpu_percent"],
        "latency_at_10_msgs_ms": at10["latency_ms"],
        "reference_step": {
            "rate": reference["rate"],
            "offered_deliveries_per_second": reference["offered_deliveries_per_second"],
            "latency_ms": reference["latency_ms"],
        },
        "steps": steps,
    }


async def fanout(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    subs, rates, step = p["subscribers"], p["rates"], p["step_seconds"]
    assert ctx.cluster.tenant is not None
    md = [list(kv) for kv in ctx.cluster.tenant.metadata]
    (channel,) = await public_channels(ctx, "fanout", 1)
    _, tokens = await users_and_tokens(ctx, subs)
    specs = [{"gid": i, "token": tokens[i], "channel": channel} for i in range(subs)]
    publisher = await ctx.helper("bench.grpcload")
    try:

        async def publish_keel(rate: float, seconds: float) -> dict[str, Any]:
            return await publisher.call(
                "publish",
                wait=seconds + 60,
                addr=ctx.cluster.gateway_addr,
                metadata=md,
                channel=channel,
                rate=rate,
                duration=seconds,
                max_in_flight=500,
            )

        async with bridges(ctx, 1) as (bridge,):
            async with fleet(
                ctx, [(bridge.ws_port, specs)], mode="keel", concurrency=100, min_workers=2
            ) as f:
                await publish_keel(5, 1.0)
                pids = {"bridge": bridge.pid} | core_pids(ctx)
                async with py_spy_record(ctx, bridge.pid, len(rates) * (step + 15)):
                    steps = await _fanout_steps(
                        ctx, f.workers, publish_keel, subs, rates, step, pids
                    )
                keel = _fanout_summary(steps, "bridge", subs) | {"connect": f.opened}
    finally:
        await ctx.stop_helpers([publisher])

    async with baseline(ctx, "ws", p.get("baseline_loop", "asyncio")) as server:
        bspecs = [{"gid": i, "channel": "fan"} for i in range(subs)]
        async with fleet(
            ctx, [(server.ws_port, bspecs)], mode="base", concurrency=100, min_workers=2
        ) as f:
            pub = await open_connections(
                ctx, [(server.ws_port, [{"gid": -1, "channel": "fan"}])], mode="pub"
            )
            try:

                async def publish_base(rate: float, seconds: float) -> dict[str, Any]:
                    sent = await pub.workers[0].call(
                        "send", wait=seconds + 60, rate=rate, duration=seconds
                    )
                    return {"ok": sent["sent"]}

                await publish_base(5, 1.0)
                steps = await _fanout_steps(
                    ctx, f.workers, publish_base, subs, rates, step, {"baseline": server.pid}
                )
                base = _fanout_summary(steps, "baseline", subs) | {"connect": f.opened}
            finally:
                await ctx.stop_helpers(pub.workers)
    full_size = subs >= 10000
    ref = keel["reference_step"]
    return {
        "title": "Broadcast fan-out",
        "params": p,
        "keel": keel,
        "baseline": base,
        "ratios": {
            "max_deliveries_per_second": ratio(
                keel["max_deliveries_per_second"], base["max_deliveries_per_second"]
            ),
            "deliveries_per_cpu_second": ratio(
                keel["deliveries_per_cpu_second"], base["deliveries_per_cpu_second"]
            ),
            "p99_at_10_msgs": ratio(
                keel["latency_at_10_msgs_ms"]["p99"], base["latency_at_10_msgs_ms"]["p99"]
            ),
        },
        "targets": [
            target(
                "deliveries/s per bridge process at saturation",
                "≥ 500,000",
                keel["max_deliveries_per_second"],
                keel["max_deliveries_per_second"] >= 500_000,
                "highest rate reached; see the steps for where it stopped",
            ),
            target(
                "p99 latency at 100,000 deliveries/s",
                "≤ 20 ms (10 msg/s x 10,000 subscribers)",
                ref["latency_ms"]["p99"],
                (ref["latency_ms"]["p99"] <= 20) if full_size else None,
                ""
                if full_size
                else (
                    f"{ctx.profile} profile: {subs:,} subscribers at {ref['rate']} msg/s ="
                    f" {ref['offered_deliveries_per_second']:,} deliveries/s offered"
                ),
            ),
        ],
        "notes": [],
    }


# -- 3. chat mix ---------------------------------------------------------------------------


async def _chat_steps(
    workers: Sequence[Helper],
    conns_per_worker: Sequence[int],
    rates: Sequence[float],
    step: float,
    members: int,
    pids: dict[str, int],
) -> list[dict[str, Any]]:
    total_conns = sum(conns_per_worker)
    steps = []
    for rate in rates:
        await wait_quiet(workers)
        await gather_stats(workers, reset=True)
        m = meter(pids)
        t0 = time.monotonic()
        await asyncio.gather(
            *(
                w.call("send", wait=step + 60, rate=rate * n / total_conns, duration=step)
                for w, n in zip(workers, conns_per_worker, strict=True)
            )
        )
        send_end = time.monotonic()
        await wait_quiet(workers, quiet=0.5, limit=max(10.0, step * 3))
        stats = await gather_stats(workers)
        usage = m.stop()
        acked = stats["acks"] if stats["acks"] else stats["sent"]
        expected = acked * (members - 1)
        window = max(send_end - t0, 1e-9)
        lat = ms(stats["latency"])
        steps.append(
            {
                "rate": rate,
                "sent": stats["sent"],
                "acked": stats["acks"],
                "skipped_busy": stats["send_skipped"],
                "msgs_per_second": round(acked / window, 1),
                "deliveries": stats["events"],
                "expected_deliveries": expected,
                "completion": round(stats["events"] / expected, 4) if expected else None,
                "latency_ms": lat,
                "ack_latency_ms": ms(stats["ack_latency"]),
                "errors": stats["errors"],
                "closes": stats["closes"],
                "gaps": stats["gaps"],
                "dups": stats["dups"],
                "cpu": usage,
            }
        )
        if (
            lat["p99"] > 1000
            or (expected and stats["events"] / expected < 0.9)
            or stats["send_skipped"] > 0.2 * max(1, stats["sent"])
        ):
            break
    return steps


def _chat_summary(steps: list[dict[str, Any]], limit_ms: float = 50.0) -> dict[str, Any]:
    good = [
        s
        for s in steps
        if s["latency_ms"]["p99"] <= limit_ms
        and (s["completion"] or 0) >= 0.99
        and s["skipped_busy"] <= 0.01 * max(1, s["sent"])
    ]
    sustained = max(good, key=lambda s: s["msgs_per_second"]) if good else None
    best = max(steps, key=lambda s: s["msgs_per_second"])
    return {
        "sustained_msgs_per_second": sustained["msgs_per_second"] if sustained else 0.0,
        "sustained_step": sustained["rate"] if sustained else None,
        "latency_at_sustained_ms": sustained["latency_ms"] if sustained else None,
        "max_msgs_per_second": best["msgs_per_second"],
        "latency_at_max_ms": best["latency_ms"],
        "steps": steps,
    }


async def chat(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    n_channels, members, rates, step = p["channels"], p["members"], p["rates"], p["step_seconds"]
    n_bridges = int(p.get("bridges", 1))
    assert ctx.cluster.tenant is not None
    total = n_channels * members
    users, tokens = await users_and_tokens(ctx, total)
    specs_c = [
        (f"chat-{c}", kc.GROUP, users[c * members], users[c * members + 1 : (c + 1) * members])
        for c in range(n_channels)
    ]
    channels = await asyncio.to_thread(
        kc.create_channels, ctx.cluster.gateway_addr, ctx.cluster.tenant.metadata, specs_c
    )
    specs = [
        {"gid": i, "token": tokens[i], "channel": channels[i // members]} for i in range(total)
    ]
    async with bridges(ctx, n_bridges) as started:
        targets = [(b.ws_port, specs[k::n_bridges]) for k, b in enumerate(started)]
        async with fleet(ctx, targets, mode="keel", concurrency=100) as f:
            per_worker = await _per_worker_conns(f.workers)
            pids = {f"bridge{k}": b.pid for k, b in enumerate(started)} | core_pids(ctx)
            steps = await _chat_steps(f.workers, per_worker, rates, step, members, pids)
            keel = _chat_summary(steps) | {"connect": f.opened, "connections": total}
    async with baseline(ctx, "ws", p.get("baseline_loop", "asyncio")) as server:
        bspecs = [{"gid": i, "channel": f"room{i // members}"} for i in range(total)]
        async with fleet(ctx, [(server.ws_port, bspecs)], mode="base", concurrency=100) as f:
            per_worker = await _per_worker_conns(f.workers)
            steps = await _chat_steps(
                f.workers, per_worker, rates, step, members, {"baseline": server.pid}
            )
            base = _chat_summary(steps) | {"connect": f.opened, "connections": total}
    full_size = n_channels >= 2000
    return {
        "title": "Chat mix",
        "params": p | {"connections": total, "bridges": n_bridges},
        "keel": keel,
        "baseline": base,
        "ratios": {
            "sustained_msgs_per_second": ratio(
                keel["sustained_msgs_per_second"], base["sustained_msgs_per_second"]
            ),
            "max_msgs_per_second": ratio(keel["max_msgs_per_second"], base["max_msgs_per_second"]),
        },
        "targets": [
            # Issue 13: >= 1,500 in the quick profile (200 channels x 10); the full profile's
            # figure is reported against the original 3,000.
            target(
                "sustained messages/s with p99 send→deliver ≤ 50 ms",
                "≥ 3,000 (2,000 channels x 10)" if full_size else "≥ 1,500 (200 channels x 10)",
                keel["sustained_msgs_per_second"],
                keel["sustained_msgs_per_second"] >= (3000 if full_size else 1500),
                "" if full_size else f"{ctx.profile} profile: {n_channels} channels x {members}",
            )
        ],
        "notes": [],
    }


async def _per_worker_conns(workers: Sequence[Helper]) -> list[int]:
    parts = await asyncio.gather(*(w.call("stats") for w in workers))
    return [max(1, p["live"]) for p in parts]


# -- 4. backend API ------------------------------------------------------------------------


async def _api_load(
    ctx: Context,
    addr: str,
    md: list[list[str]],
    channels: list[str],
    user: str,
    p: dict[str, Any],
    pids: dict[str, int],
    pg_database: str | None = None,
) -> dict[str, Any]:
    workers = [await ctx.helper("bench.grpcload") for _ in range(p["workers"])]
    sessions0 = await kc.pg_sessions(pg_database) if pg_database else None
    try:
        # a short warm-up: connections, caches
        await asyncio.gather(
            *(
                w.call(
                    "api",
                    addr=addr,
                    metadata=md,
                    channels=channels,
                    user_id=user,
                    concurrency=2,
                    duration=0.5,
                )
                for w in workers
            )
        )
        m = meter(pids)
        parts = await asyncio.gather(
            *(
                w.call(
                    "api",
                    wait=p["seconds"] + 120,
                    addr=addr,
                    metadata=md,
                    channels=channels,
                    user_id=user,
                    concurrency=p["concurrency"],
                    duration=p["seconds"],
                )
                for w in workers
            )
        )
        usage = m.stop()
    finally:
        await ctx.stop_helpers(workers)
    extra: dict[str, Any] = {}
    if pg_database and sessions0 is not None:
        await asyncio.sleep(1.0)  # PostgreSQL publishes its session counts about once a second
        sessions1 = await kc.pg_sessions(pg_database)
        if sessions1 is not None:
            extra["postgresql_sessions_opened"] = sessions1 - sessions0
    ok = sum(x["ok"] for x in parts)
    elapsed = max(x["elapsed"] for x in parts)
    errors: dict[str, int] = {}
    for x in parts:
        for k, v in x["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "msgs_per_second": round(ok / elapsed, 1),
        "calls": ok,
        "errors": errors,
        "latency_ms": ms(Histogram.merged(x["latency_us"] for x in parts)),
        "cpu": usage,
        **extra,
    }


async def api(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    assert ctx.cluster.tenant is not None
    user = "api-user"
    await asyncio.to_thread(
        kc.issue_tokens, ctx.cluster.gateway_addr, ctx.cluster.tenant.metadata, [user]
    )
    specs = [(f"api-{i}", kc.GROUP, user, ()) for i in range(p["channels"])]
    channels = await asyncio.to_thread(
        kc.create_channels, ctx.cluster.gateway_addr, ctx.cluster.tenant.metadata, specs
    )
    md = [list(kv) for kv in ctx.cluster.tenant.metadata]
    pg = await _api_load(
        ctx,
        ctx.cluster.gateway_addr,
        md,
        channels,
        user,
        p,
        core_pids(ctx),
        pg_database=ctx.cluster.db_name,
    )

    embedded = await kc.start_embedded(ctx.log_dir, log_level=ctx.log_level)
    try:
        await asyncio.to_thread(kc.issue_tokens, embedded.addr, embedded.tenant.metadata, [user])
        sq_channels = await asyncio.to_thread(
            kc.create_channels, embedded.addr, embedded.tenant.metadata, specs
        )
        sq_md = [list(kv) for kv in embedded.tenant.metadata]
        sqlite = await _api_load(
            ctx, embedded.addr, sq_md, sq_channels, user, p, {"serve_all": embedded.process.pid}
        )
    finally:
        await asyncio.to_thread(embedded.process.stop)

    async with baseline(ctx, "grpc") as server:
        base = await _api_load(ctx, server.addr, md, channels, user, p, {"baseline": server.pid})
    return {
        "title": "Backend API (gRPC SendMessage)",
        "params": p | {"callers": p["workers"] * p["concurrency"]},
        "keel": {"postgresql": pg, "sqlite": sqlite},
        "baseline": base,
        "ratios": {
            "postgresql_msgs_per_second": ratio(pg["msgs_per_second"], base["msgs_per_second"]),
            "sqlite_msgs_per_second": ratio(sqlite["msgs_per_second"], base["msgs_per_second"]),
            "postgresql_p99": ratio(pg["latency_ms"]["p99"], base["latency_ms"]["p99"]),
        },
        "targets": [
            target(
                "SendMessage throughput on PostgreSQL",
                "≥ 5,000 msgs/s",
                pg["msgs_per_second"],
                pg["msgs_per_second"] >= 5000,
            )
        ],
        "notes": [],
    }


# -- 5. webhooks ---------------------------------------------------------------------------


async def _receiver_wait(receiver: Helper, count: int, limit: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        stats = await receiver.call("stats")
        if stats["events"] >= count or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


def _rate(stats: dict[str, Any]) -> float:
    span = stats["last"] - stats["first"]
    return round((stats["events"] - 1) / span, 1) if stats["events"] > 1 and span > 0 else 0.0


async def webhooks(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    assert ctx.cluster.tenant is not None
    md = [list(kv) for kv in ctx.cluster.tenant.metadata]
    (channel,) = await public_channels(ctx, "hooks", 1)
    receiver = await ctx.helper("bench.webhooks")
    publisher = await ctx.helper("bench.grpcload")
    sender = await ctx.helper("bench.webhooks")
    try:
        port = kc.free_port()
        url = f"http://127.0.0.1:{port}/hook"
        secret = await asyncio.to_thread(
            kc.create_webhook, ctx.cluster.gateway_addr, ctx.cluster.tenant.metadata, url, channel
        )
        await receiver.call("listen", port=port, secret=secret)
        pids = core_pids(ctx)
        # steady: latency at a rate the dispatcher keeps up with
        sent = await publisher.call(
            "publish",
            wait=p["steady_seconds"] + 60,
            addr=ctx.cluster.gateway_addr,
            metadata=md,
            channel=channel,
            rate=p["steady_rate"],
            duration=p["steady_seconds"],
        )
        steady = await _receiver_wait(receiver, sent["ok"], 60)
        await receiver.call("stats", reset=True)
        # burst: throughput of the dispatcher with a backlog
        m = meter(pids)
        t0 = time.monotonic()
        burst = await publisher.call(
            "burst",
            wait=300,
            addr=ctx.cluster.gateway_addr,
            metadata=md,
            channel=channel,
            count=p["burst"],
            concurrency=20,
        )
        got = await _receiver_wait(receiver, burst["ok"], 120)
        usage = m.stop()
        keel = {
            "steady": {
                "rate": p["steady_rate"],
                "sent": sent["ok"],
                "delivered": steady["events"],
                "latency_ms": ms(Histogram.from_dict(steady["latency_us"])),
            },
            "burst": {
                "events": burst["ok"],
                "delivered": got["events"],
                "events_per_second": _rate(got),
                "all_delivered_seconds": round(got["last"] - t0, 3) if got["last"] else None,
                "publish_seconds": burst["elapsed"],
                "latency_ms": ms(Histogram.from_dict(got["latency_us"])),
                "bad_signatures": got["bad_signatures"],
                "repeats": got["repeats"],
                "cpu": usage,
            },
        }
        await receiver.call("stats", reset=True)
        done = await sender.call(
            "send_baseline",
            wait=300,
            url=url,
            secret=secret,
            count=p["burst"],
            concurrency=20,
        )
        bgot = await _receiver_wait(receiver, p["burst"], 60)
        base = {
            "events": p["burst"],
            "delivered": bgot["events"],
            "events_per_second": _rate(bgot),
            "send_seconds": done["elapsed"],
            "latency_ms": ms(Histogram.from_dict(bgot["latency_us"])),
            "bad_signatures": bgot["bad_signatures"],
        }
    finally:
        await ctx.stop_helpers([receiver, publisher, sender])
    return {
        "title": "Webhooks",
        "params": p | {"dispatcher_concurrency": 20},
        "keel": keel,
        "baseline": base,
        "ratios": {
            "events_per_second": ratio(
                keel["burst"]["events_per_second"], base["events_per_second"]
            ),
        },
        "targets": [],
        "notes": [],
    }


# -- 6. resume storm -----------------------------------------------------------------------


async def _storm(
    workers: Sequence[Helper],
    parts: Sequence[tuple[Helper, int, str]],
    target_seq: int,
    concurrency: int,
    pids: dict[str, int],
    limit: float,
    missed: int,
) -> dict[str, Any]:
    sampler = PeakSampler(pids)
    before = {name: rss_bytes(pid) for name, pid in pids.items()}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    sampler.start()
    t0 = time.monotonic()
    per = max(10, concurrency // max(1, len(parts)))
    connected = await asyncio.gather(
        *(
            w.call(
                "connect",
                wait=limit + 60,
                host="127.0.0.1",
                port=port,
                path="/ws",
                mode=mode,
                conns=[],
                resume=True,
                target=target_seq,
                concurrency=per,
                conn_timeout=limit,
            )
            for w, port, mode in parts
        )
    )
    done = await wait_seq(workers, target_seq, limit)
    elapsed = time.monotonic() - t0
    peak = await sampler.stop()
    stats = await gather_stats(workers)
    return {
        "reconnected": sum(c["subscribed"] for c in connected),
        "failed": sum(c["failed"] for c in connected),
        "failures": merge_connect(connected)["failures"],
        "caught_up": sum(d["reached"] for d in done),
        "behind": sum(d["behind"] for d in done),
        "all_caught_up_seconds": round(elapsed, 3),
        "replayed_messages_per_second": round(sum(d["reached"] for d in done) * missed / elapsed)
        if elapsed > 0
        else None,
        "catchup_ms": ms(stats["catchup"]),
        "gaps": stats["gaps"],
        "dups": stats["dups"],
        "memory": {
            name: {
                "before_mib": round(before[name] / MIB, 1),
                "peak_mib": round(peak[name] / MIB, 1),
                "growth_mib": round((peak[name] - before[name]) / MIB, 1),
            }
            for name in pids
        },
        "cpu_seconds": {
            name: round(cpu_seconds(pid) - cpu0[name], 2) for name, pid in pids.items()
        },
    }


async def resume(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    clients, missed, conc = p["clients"], p["missed"], p["storm_concurrency"]
    assert ctx.cluster.tenant is not None
    md = [list(kv) for kv in ctx.cluster.tenant.metadata]
    (channel,) = await public_channels(ctx, "resume", 1)
    _, tokens = await users_and_tokens(ctx, clients)
    specs = [{"gid": i, "token": tokens[i], "channel": channel} for i in range(clients)]
    timeout = 120.0 if ctx.profile != "full" else 1800.0
    publisher = await ctx.helper("bench.grpcload")
    try:
        async with bridges(ctx, 1) as (bridge,):
            async with fleet(ctx, [(bridge.ws_port, specs)], mode="keel", concurrency=100) as f:
                first = await publisher.call(
                    "burst",
                    addr=ctx.cluster.gateway_addr,
                    metadata=md,
                    channel=channel,
                    count=3,
                    concurrency=1,
                )
                await wait_seq(f.workers, first["last_seq"], 30)
                await asyncio.gather(*(w.call("drop") for w in f.workers))
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    left = kc.metric_value(bridge.metrics_port, "keel_bridge_connections")
                    if not left:
                        break
                    await asyncio.sleep(0.1)
                await settle(1.0)
                burst = await publisher.call(
                    "burst",
                    wait=300,
                    addr=ctx.cluster.gateway_addr,
                    metadata=md,
                    channel=channel,
                    count=missed,
                    concurrency=20,
                )
                parts = [(w, bridge.ws_port, "keel") for w in f.workers]
                keel = await _storm(
                    f.workers,
                    parts,
                    burst["last_seq"],
                    conc,
                    {"bridge": bridge.pid, "gateway": core_pids(ctx)["gateway"]},
                    timeout,
                    burst["ok"],
                )
                keel["missed"] = burst["ok"]
    finally:
        await ctx.stop_helpers([publisher])

    async with baseline(ctx, "ws", p.get("baseline_loop", "asyncio")) as server:
        bspecs = [{"gid": i, "channel": "storm"} for i in range(clients)]
        async with fleet(ctx, [(server.ws_port, bspecs)], mode="base", concurrency=100) as f:
            pub = await open_connections(
                ctx, [(server.ws_port, [{"gid": -1, "channel": "storm"}])], mode="pub"
            )
            try:
                await pub.workers[0].call("send", count=3)
                await wait_seq(f.workers, 3, 30)
                await asyncio.gather(*(w.call("drop") for w in f.workers))
                await settle(1.0)
                sent = await pub.workers[0].call("send", wait=120, count=missed)
                parts = [(w, server.ws_port, "base") for w in f.workers]
                base = await _storm(
                    f.workers,
                    parts,
                    3 + sent["sent"],
                    conc,
                    {"baseline": server.pid},
                    timeout,
                    sent["sent"],
                )
                base["missed"] = sent["sent"]
            finally:
                await ctx.stop_helpers(pub.workers)
    return {
        "title": "Resume storm",
        "params": p,
        "keel": keel,
        "baseline": base,
        "ratios": {
            "all_caught_up_seconds": ratio(
                keel["all_caught_up_seconds"], base["all_caught_up_seconds"]
            ),
            "bridge_memory_growth": ratio(
                keel["memory"]["bridge"]["growth_mib"], base["memory"]["baseline"]["growth_mib"]
            ),
        },
        "targets": [],
        "notes": [],
    }


SCENARIO_FUNCTIONS = {
    "idle": idle,
    "fanout": fanout,
    "chat": chat,
    "api": api,
    "webhooks": webhooks,
    "resume": resume,
}
