"""The notification scenario: in-app fan-out, many small sends, email and Web Push.

Keel runs as a cluster would: ``keel serve notification-service`` (one process, on the
run's PostgreSQL database and Redis, reaching the gateway and the tenant service), a
fresh ``keel serve bridge``, and a tenant of its own with ``chat:*`` and ``send:*``.
The load and the receivers are :mod:`bench.notification_load` processes.

- **fan-out**: one ``SendNotification`` to U users, each with an open bridge
  connection; per-connection latency from the send time in the title to the
  ``notification`` frame, the time until the last connection has it, and
  notifications stored and delivered per second (U ÷ that time). Several rounds.
  Baseline: :mod:`bench.baseline_server` writing one frame to U connections of a room
  (the raw transport, the same WebSocket library and loop), measured the same way.
- **small sends**: closed-loop ``SendNotification`` calls of one in-app notification
  to one user each, for a while; notifications/s of the one notification-service
  process, and whether the frames arrived. Baseline: the same client and concurrency
  against a ``NotificationService`` that answers without work.
- **10-user sends**: the same callers, each call to ``group_users`` (10) users at once;
  in-app notifications stored and delivered live per second (calls/s times 10), and their
  frames. Its ratio is to the do-nothing service's *calls*/s of the small sends: how
  many notifications Keel stores and delivers per call the bare gRPC server can answer
  (above 1: sending to several users per call beats the per-call ceiling of gRPC).
  The goal (≥ 2,000 in-app notifications/s per process) is reported for one-user
  sends, 10-user sends and the fan-out, so the three can be compared.
- **email**: one send to U users by email, delivered by the notification-service's
  job worker to a local aiosmtpd; emails/s accepted by the server. Baseline: as many
  raw messages of the same size over one aiosmtplib connection.
- **push**: one send to U users with a push subscription each, to a local endpoint
  answering 201; pushes/s. Baseline: as many raw POSTs of the same size, with as many
  in flight as the notification job worker runs (``KEEL_NOTIFICATION_CONCURRENCY``).

``--set notifications.deliveries=false`` leaves out email and push (and the addresses
they need): the in-app figures alone, in less time. ``--py-spy FILE`` records the
notification-service process through Keel's steps (fan-out, small sends, email, push).
"""

from __future__ import annotations

import asyncio
import base64
import math
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import field_mask_pb2
from keel.notifications.v1 import notifications_pb2 as n
from keel.notifications.v1 import notifications_pb2_grpc
from keel.tenants.v1 import tenants_pb2, tenants_pb2_grpc

from bench import cluster as kc
from bench.control import Helper
from bench.hdr import Histogram
from bench.profiles import CONNS_PER_WORKER
from bench.scenarios import (
    Context,
    _rate,
    _receiver_wait,
    baseline,
    bridges,
    core_pids,
    fleet,
    gather_stats,
    meter,
    ms,
    open_connections,
    py_spy_record,
    ratio,
    target,
    wait_seq,
)

HELPER = "bench.notification_load"
#: The notification-service's job worker runs this many deliveries at a time (the default).
DELIVERY_CONCURRENCY = 16
#: About what the baseline's headers add to its body, so that its messages are as long as
#: Keel's (multipart text + HTML with Keel's headers) on the wire.
SMTP_HEADER_BYTES = 300


# -- set-up ---------------------------------------------------------------------------------


def _sending_tenant(cluster: kc.KeelCluster) -> kc.Tenant:
    """A tenant that may send notifications of every kind to many users at once."""
    assert cluster.tenant_service is not None
    with grpc.insecure_channel(cluster.tenant_service.addr) as channel:
        created = tenants_pb2_grpc.TenantServiceStub(channel).CreateTenant(
            tenants_pb2.CreateTenantRequest(
                tenant=tenants_pb2.Tenant(
                    name=f"bench-notify-{uuid.uuid4().hex[:6]}", permissions=["chat:*", "send:*"]
                )
            ),
            metadata=(("authorization", f"Bearer {cluster.admin_token}"),),
            timeout=30,
        )
    return kc.Tenant(
        created.tenant.id,
        (
            ("x-client-id", created.tenant.client_id),
            ("x-client-secret", created.client_secret),
        ),
    )


def _start_service(cluster: kc.KeelCluster, smtp_port: int) -> kc.Process:
    """``keel serve notification-service`` on the cluster, mailing to ``smtp_port``."""
    assert cluster.tenant_service is not None
    addr = f"127.0.0.1:{kc.free_port()}"
    process = kc.launch(
        "notification-service",
        [*kc.KEEL, "serve", "notification-service"],
        cluster.base_env
        | {
            "KEEL_GRPC_ADDR": addr,
            "KEEL_GATEWAY_ADDR": cluster.gateway_addr,
            "KEEL_TENANT_SERVICE_ADDR": cluster.tenant_service.addr,
            "KEEL_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
            "KEEL_NOTIFICATION_CONCURRENCY": str(DELIVERY_CONCURRENCY),
        },
        cluster.log_dir,
    )
    process.addr = addr
    try:
        kc.wait_until(
            lambda: kc.health_serving(addr), process, "notification-service", kc.START_TIMEOUT
        )
    except BaseException:
        process.stop()
        raise
    return process


def _browser_keys() -> tuple[str, str]:
    """A browser's ``p256dh`` and ``auth`` (one pair serves every subscription here: the
    benchmark's endpoint does not decrypt)."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return b64(point), b64(b"0123456789abcdef")


def _addresses(addr: str, md: kc.Metadata, users: Sequence[str], push_url: str) -> None:
    """An email address and a push subscription for every user."""
    p256dh, auth = _browser_keys()
    with grpc.insecure_channel(addr) as channel:
        stub = notifications_pb2_grpc.NotificationServiceStub(channel)
        kc.bounded(
            lambda u=u: stub.UpdatePreferences.future(
                n.UpdatePreferencesRequest(
                    preferences=n.Preferences(user_id=u, email=f"{u}@example.com"),
                    update_mask=field_mask_pb2.FieldMask(paths=["email"]),
                ),
                metadata=md,
                timeout=60,
            )
            for u in users
        )
        kc.bounded(
            lambda i=i, u=u: stub.RegisterPushSubscription.future(
                n.RegisterPushSubscriptionRequest(
                    subscription=n.PushSubscription(
                        user_id=u, endpoint=f"{push_url}/{i}", p256dh=p256dh, auth=auth
                    )
                ),
                metadata=md,
                timeout=60,
            )
            for i, u in enumerate(users)
        )


# -- measuring --------------------------------------------------------------------------------

#: One send to every connection, waited for: its latencies and how many connections it reached.
Round = Callable[[], Awaitable[tuple[Histogram, int]]]


async def _rounds(one_round: Round, connections: int, rounds: int) -> dict[str, Any]:
    """``rounds`` sends to every connection, each waited for; the time until the last
    connection had a send is that round's highest latency."""
    latency = Histogram()
    until_last, complete = [], 0
    for _ in range(rounds):
        hist, reached = await one_round()
        latency.merge(hist)
        until_last.append(hist.max / 1000)
        complete += reached >= connections
    median = statistics.median(until_last)
    return {
        "connections": connections,
        "rounds": rounds,
        "complete_rounds": complete,
        "latency_ms": ms(latency),
        "until_last_ms": {
            "median": round(median, 2),
            "max": round(max(until_last), 2),
            "each": [round(x, 2) for x in until_last],
        },
        "per_second": round(connections / (median / 1000)) if median > 0 else None,
    }


@dataclass
class Inboxes:
    """The helpers holding the recipients' bridge connections, and how many each holds."""

    helpers: list[Helper]
    counts: list[int]

    async def open(self, ctx: Context, port: int, tokens: Sequence[str]) -> dict[str, Any]:
        workers = math.ceil(len(tokens) / CONNS_PER_WORKER)
        per = math.ceil(len(tokens) / workers)
        opened = []
        for k in range(workers):
            helper = await ctx.helper(HELPER)
            specs = [
                {"gid": i, "token": tokens[i]}
                for i in range(k * per, min(len(tokens), (k + 1) * per))
            ]
            self.helpers.append(helper)
            self.counts.append(len(specs))
            opened.append(
                await helper.call(
                    "connect",
                    wait=300,
                    host="127.0.0.1",
                    port=port,
                    conns=specs,
                    source=ctx.source(),
                    concurrency=100,
                )
            )
        failures: dict[str, int] = {}
        for o in opened:
            for key, value in o["failures"].items():
                failures[key] = failures.get(key, 0) + value
        return {
            "opened": sum(o["opened"] for o in opened),
            "failed": sum(o["failed"] for o in opened),
            "failures": failures,
        }

    async def stats(self, reset: bool = False) -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(*(h.call("inbox_stats", reset=reset) for h in self.helpers))
        )

    async def wait_total(self, count: int, limit: float) -> None:
        """Until the connections got ``count`` notifications since the last reset (or
        ``limit`` s passed)."""
        deadline = time.monotonic() + limit
        while True:
            got = sum(s["notifications"] for s in await self.stats())
            if got >= count or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)

    async def wait(self, limit: float) -> int:
        parts = await asyncio.gather(
            *(
                h.call("wait_frames", wait=limit + 30, count=count, max_wait=limit)
                for h, count in zip(self.helpers, self.counts, strict=True)
            )
        )
        return sum(p["reached"] for p in parts)


async def _keel_fanout(
    inboxes: Inboxes,
    sender: Helper,
    service: str,
    md: list[list[str]],
    users: list[str],
    rounds: int,
) -> dict[str, Any]:
    answered: list[float] = []

    async def one_round() -> tuple[Histogram, int]:
        await inboxes.stats(reset=True)
        sent = await sender.call(
            "send", addr=service, metadata=md, users=users, channels=["NOTIFICATION_CHANNEL_IN_APP"]
        )
        answered.append(sent["rpc_seconds"] * 1000)
        reached = await inboxes.wait(30)
        stats = await inboxes.stats()
        return Histogram.merged(s["latency_us"] for s in stats), reached

    await _rounds(one_round, len(users), 1)  # warm-up: connections, caches, statements
    answered.clear()
    result = await _rounds(one_round, len(users), rounds)
    return result | {"answer_ms_median": round(statistics.median(answered), 2)}


async def _baseline_fanout(ctx: Context, connections: int, rounds: int) -> dict[str, Any]:
    async with baseline(ctx, "ws") as server:
        specs = [{"gid": i, "channel": "inbox"} for i in range(connections)]
        async with fleet(ctx, [(server.ws_port, specs)], mode="base", concurrency=100) as f:
            pub = await open_connections(
                ctx, [(server.ws_port, [{"gid": -1, "channel": "inbox"}])], mode="pub"
            )
            seq = 0
            try:

                async def one_round() -> tuple[Histogram, int]:
                    nonlocal seq
                    await gather_stats(f.workers, reset=True)
                    await pub.workers[0].call("send", count=1)
                    seq += 1
                    await wait_seq(f.workers, seq, 30)
                    stats = await gather_stats(f.workers)
                    return stats["latency"], stats["events"]

                await _rounds(one_round, connections, 1)
                result = await _rounds(one_round, connections, rounds)
            finally:
                await ctx.stop_helpers(pub.workers)
            return result | {"connect": f.opened}


async def _small_sends(
    senders: Sequence[Helper],
    addr: str,
    md: list[list[str]],
    users: list[str],
    p: dict[str, Any],
    pids: dict[str, int],
    inboxes: Inboxes | None = None,
    *,
    group: int = 1,
) -> dict[str, Any]:
    """Closed-loop sends of one notification to ``group`` users each (``inboxes``: the
    users' connections, whose frames are counted)."""

    async def load(duration: float, concurrency: int) -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(
                *(
                    s.call(
                        "send_small",
                        wait=duration + 120,
                        addr=addr,
                        metadata=md,
                        users=users,
                        concurrency=concurrency,
                        duration=duration,
                        offset=k * concurrency,
                        group=group,
                    )
                    for k, s in enumerate(senders)
                )
            )
        )

    if inboxes is not None:
        await inboxes.stats(reset=True)
    warm = await load(0.5, 2)
    if inboxes is not None:
        await inboxes.wait_total(sum(x["notifications"] for x in warm), 10)
        await inboxes.stats(reset=True)
    m = meter(pids)
    parts = await load(p["small_seconds"], p["small_concurrency"])
    usage = m.stop()
    frames: dict[str, Any] = {}
    if inboxes is not None:
        await inboxes.wait_total(sum(x["notifications"] for x in parts), 10)
        stats = await inboxes.stats()
        frames = {
            "frames": sum(s["notifications"] for s in stats),
            "frame_latency_ms": ms(Histogram.merged(s["latency_us"] for s in stats)),
        }
    ok = sum(x["ok"] for x in parts)
    notified = sum(x["notifications"] for x in parts)
    elapsed = max(x["elapsed"] for x in parts)
    errors: dict[str, int] = {}
    for x in parts:
        for key, value in x["errors"].items():
            errors[key] = errors.get(key, 0) + value
    return {
        "users_per_send": group,
        "sent": ok,
        "calls_per_second": round(ok / elapsed, 1),
        "notifications": notified,
        # in-app notifications stored (and, with inboxes, delivered live) per second
        "per_second": round(notified / elapsed, 1),
        "errors": errors,
        "rpc_latency_ms": ms(Histogram.merged(x["latency_us"] for x in parts)),
        "cpu": usage,
        # CPU-normalised: what one send (one notification) costs each server process (a
        # loaded machine slows the rate, much less the CPU each send takes)
        "cpu_ms_per_send": {
            name: round(usage[name]["cpu_seconds"] * 1000 / ok, 3) if ok else None for name in pids
        },
        "cpu_ms_per_notification": {
            name: round(usage[name]["cpu_seconds"] * 1000 / notified, 3) if notified else None
            for name in pids
        },
        **frames,
    }


def _throughput(got: dict[str, Any], started: float, sent: int) -> dict[str, Any]:
    return {
        "sent": sent,
        "delivered": got["events"],
        "per_second": _rate(got) or None,
        "all_delivered_seconds": round(got["last"] - started, 3) if got["last"] else None,
        "bytes_each": round(got["bytes"] / got["events"]) if got["events"] else 0,
        "latency_ms": ms(Histogram.from_dict(got["latency_us"])),
    }


async def _keel_channel(
    sender: Helper,
    receiver: Helper,
    service: str,
    md: list[list[str]],
    users: list[str],
    channel: str,
    pids: dict[str, int],
    limit: float,
) -> dict[str, Any]:
    """One send to ``users`` by ``channel``; how fast the deliveries reach ``receiver``."""
    await receiver.call("stats", reset=True)
    m = meter(pids)
    sent = await sender.call("send", addr=service, metadata=md, users=users, channels=[channel])
    got = await _receiver_wait(receiver, sent["sent"], limit)
    return _throughput(got, sent["started"], sent["sent"]) | {
        "rpc_seconds": sent["rpc_seconds"],
        "cpu": m.stop(),
    }


async def _baseline_channels(
    sender: Helper,
    mail: Helper,
    push: Helper,
    smtp_port: int,
    push_url: str,
    keel: dict[str, Any],
    count: int,
) -> dict[str, Any]:
    await mail.call("stats", reset=True)
    t0 = time.monotonic()
    await sender.call(
        "smtp_baseline",
        wait=300,
        port=smtp_port,
        count=count,
        size=max(0, keel["email"]["bytes_each"] - SMTP_HEADER_BYTES),
    )
    email = _throughput(await _receiver_wait(mail, count, 60), t0, count)
    await push.call("stats", reset=True)
    t0 = time.monotonic()
    await sender.call(
        "push_baseline",
        wait=300,
        url=push_url,
        count=count,
        concurrency=DELIVERY_CONCURRENCY,
        size=keel["push"]["bytes_each"],
    )
    pushed = _throughput(await _receiver_wait(push, count, 60), t0, count)
    return {"email": email, "push": pushed}


async def notifications(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    """The scenario (see the module docstring): Keel's four figures, then the baselines'."""
    cluster = ctx.cluster
    users = [f"notify-{i}" for i in range(p["users"])]
    tenant = await asyncio.to_thread(_sending_tenant, cluster)
    md = [list(kv) for kv in tenant.metadata]
    tokens = await asyncio.to_thread(kc.issue_tokens, cluster.gateway_addr, tenant.metadata, users)
    mail, push, noop = [await ctx.helper(HELPER) for _ in range(3)]
    senders = [await ctx.helper(HELPER) for _ in range(p["senders"])]
    smtp_port = (await mail.call("smtp_listen"))["port"]
    push_url = f"http://127.0.0.1:{(await push.call('push_listen'))['port']}/push"
    service = await asyncio.to_thread(_start_service, cluster, smtp_port)
    keel: dict[str, Any] = {}
    deliveries = bool(p.get("deliveries", True))
    try:
        if deliveries:
            await asyncio.to_thread(_addresses, service.addr, tenant.metadata, users, push_url)
        # --py-spy FILE records the notification service through Keel's steps here.
        await _keel_steps(ctx, p, service, senders, mail, push, md, users, tokens, keel)
    finally:
        await asyncio.to_thread(service.stop)
    noop_addr = (await noop.call("noop_listen"))["addr"]
    base = {
        "fanout": await _baseline_fanout(ctx, len(users), p["rounds"]),
        "small": await _small_sends(senders, noop_addr, md, users, p, {"noop_service": noop.pid}),
    }
    if deliveries:
        base |= await _baseline_channels(
            senders[0], mail, push, smtp_port, push_url, keel, len(users)
        )
    await ctx.stop_helpers([mail, push, noop, *senders])
    return _result(ctx, p, keel, base)


async def _keel_steps(
    ctx: Context,
    p: dict[str, Any],
    service: kc.Process,
    senders: Sequence[Helper],
    mail: Helper,
    push: Helper,
    md: list[list[str]],
    users: list[str],
    tokens: Sequence[str],
    keel: dict[str, Any],
) -> None:
    """Keel's figures (``keel`` filled in), the notification service recorded by py-spy
    when the run asks for it."""
    deliveries = bool(p.get("deliveries", True))
    pids = {"notification_service": service.pid} | core_pids(ctx)
    async with py_spy_record(ctx, service.pid, seconds=3600):
        async with bridges(ctx, 1) as (bridge,):
            inboxes = Inboxes([], [])
            try:
                connect = await inboxes.open(ctx, bridge.ws_port, tokens)
                keel["fanout"] = await _keel_fanout(
                    inboxes, senders[0], service.addr, md, users, p["rounds"]
                ) | {"connect": connect}
                keel["small"] = await _small_sends(
                    senders, service.addr, md, users, p, pids | {"bridge": bridge.pid}, inboxes
                )
                keel["group"] = await _small_sends(
                    senders,
                    service.addr,
                    md,
                    users,
                    p,
                    pids | {"bridge": bridge.pid},
                    inboxes,
                    group=_group_users(p),
                )
            finally:
                await ctx.stop_helpers(inboxes.helpers)
        if deliveries:
            keel["email"] = await _keel_channel(
                senders[0], mail, service.addr, md, users, "NOTIFICATION_CHANNEL_EMAIL", pids, 120
            )
            keel["push"] = await _keel_channel(
                senders[0], push, service.addr, md, users, "NOTIFICATION_CHANNEL_PUSH", pids, 120
            )


def _group_users(p: dict[str, Any]) -> int:
    """Users per call of the 10-user sends (``group_users``, at most the users there are)."""
    return max(1, min(int(p.get("group_users", 10)), int(p["users"])))


def _result(
    ctx: Context, p: dict[str, Any], keel: dict[str, Any], base: dict[str, Any]
) -> dict[str, Any]:
    fan, small, group = keel["fanout"], keel["small"], keel["group"]
    full_size = p["users"] >= 1000
    ratios = {
        "fanout_p99": ratio(fan["latency_ms"]["p99"], base["fanout"]["latency_ms"]["p99"]),
        "fanout_until_last": ratio(
            fan["until_last_ms"]["median"], base["fanout"]["until_last_ms"]["median"]
        ),
        "fanout_per_second": ratio(fan["per_second"], base["fanout"]["per_second"]),
        "small_sends_per_second": ratio(small["per_second"], base["small"]["per_second"]),
        # notifications/s of the 10-user sends per call/s of the do-nothing service
        "group_notifications_per_noop_call": ratio(
            group["per_second"], base["small"]["calls_per_second"]
        ),
    }
    if "email" in keel:
        ratios["emails_per_second"] = ratio(
            keel["email"]["per_second"], base["email"]["per_second"]
        )
        ratios["pushes_per_second"] = ratio(keel["push"]["per_second"], base["push"]["per_second"])
    goal = "in-app notifications/s per notification-service process on PostgreSQL"
    callers = f"{p['senders']} x {p['small_concurrency']} callers"
    return {
        "title": "Notifications",
        "params": p
        | {"delivery_concurrency": DELIVERY_CONCURRENCY, "group_users": group["users_per_send"]},
        "keel": keel,
        "baseline": base,
        "ratios": ratios,
        "targets": [
            target(
                "in-app notification visible in every client (p99)",
                "≤ 250 ms, one send to 1,000 users",
                fan["latency_ms"]["p99"],
                fan["latency_ms"]["p99"] <= 250 if full_size else None,
                "" if full_size else f"{ctx.profile} profile: {p['users']} users",
            ),
            target(
                goal,
                "≥ 2,000",
                small["per_second"],
                small["per_second"] >= 2000,
                f"{callers}, one user each",
            ),
            target(
                goal,
                "≥ 2,000",
                group["per_second"],
                group["per_second"] >= 2000,
                f"{callers}, {group['users_per_send']} users each",
            ),
            target(
                goal,
                "≥ 2,000",
                fan["per_second"],
                fan["per_second"] >= 2000 if fan["per_second"] is not None else None,
                f"one send to {fan['connections']} connected users",
            ),
        ],
        "notes": [
            "Keel: `keel serve notification-service` (one process) on PostgreSQL and Redis, "
            "with `keel serve gateway`, `tenant-service` and one `bridge`; latencies run from "
            "the send time stamped in the title to the frame, email or POST.",
        ],
    }


# -- the report's section ---------------------------------------------------------------------


def report_section(r: dict[str, Any]) -> list[str]:
    """The Markdown of this scenario in ``docs/benchmarks.md`` (see :mod:`bench.report`)."""
    from bench.report import _lat, _n, _table

    k, b = r["keel"], r["baseline"]
    fan, bfan = k["fanout"], b["fanout"]

    def last(x: dict[str, Any]) -> str:
        return f"{_n(x['until_last_ms']['median'], 2)} / {_n(x['until_last_ms']['max'], 2)}"

    def per_send(x: dict[str, Any], process: str) -> str:
        cost = x["cpu_ms_per_send"].get(process)
        return f"{_n(cost, 3)} ({_n(round(1000 / cost) if cost else None)}/s)"

    # Reports written before the 10-user step have no "group" figures.
    group = k.get("group")
    each = group["users_per_send"] if group else None

    def rate(x: dict[str, Any]) -> str:
        return f"{_n(x['per_second'])} ({_n(x['delivered'])} / {_n(x['sent'])})"

    rows = [
        [
            f"one send to {_n(fan['connections'])} open connections: per-connection "
            "latency p50 / p99 / p99.9 (ms)",
            _lat(fan["latency_ms"]),
            _lat(bfan["latency_ms"]),
        ],
        ["time until the last connection had it, median / max (ms)", last(fan), last(bfan)],
        ["SendNotification answered after, median (ms)", _n(fan["answer_ms_median"], 2), "—"],
        [
            "notifications stored + delivered per second (one send)",
            _n(fan["per_second"]),
            _n(bfan["per_second"]),
        ],
        [
            "rounds where every connection got it",
            f"{fan['complete_rounds']} / {fan['rounds']}",
            f"{bfan['complete_rounds']} / {bfan['rounds']}",
        ],
        [
            "small sends (1 user each): in-app notifications/s",
            _n(k["small"]["per_second"]),
            _n(b["small"]["per_second"]),
        ],
        [
            "small sends: call latency p50 / p99 / p99.9 (ms)",
            _lat(k["small"]["rpc_latency_ms"]),
            _lat(b["small"]["rpc_latency_ms"]),
        ],
        [
            "small sends: CPU-ms per send of the service process (sends/s it could serve "
            "with one core)",
            per_send(k["small"], "notification_service"),
            per_send(b["small"], "noop_service"),
        ],
        [
            "small sends: frames received / send → frame p50 / p99 / p99.9 (ms)",
            f"{_n(k['small']['frames'])} / {_lat(k['small']['frame_latency_ms'])}",
            "—",
        ],
    ]
    if group:
        rows += [
            [
                f"{each}-user sends: in-app notifications stored + delivered live/s (calls/s); "
                "baseline: the do-nothing service's calls/s above",
                f"{_n(group['per_second'])} ({_n(group['calls_per_second'])})",
                _n(b["small"]["calls_per_second"]),
            ],
            [
                f"{each}-user sends: call latency p50 / p99 / p99.9 (ms)",
                _lat(group["rpc_latency_ms"]),
                "—",
            ],
            [
                f"{each}-user sends: CPU-ms per notification of the service process",
                _n(group["cpu_ms_per_notification"].get("notification_service"), 3),
                "—",
            ],
            [
                f"{each}-user sends: frames received / send → frame p50 / p99 / p99.9 (ms)",
                f"{_n(group['frames'])} / {_lat(group['frame_latency_ms'])}",
                "—",
            ],
        ]
    if "email" in k:
        rows += [
            [
                "emails/s accepted by the SMTP server (delivered / sent)",
                rate(k["email"]),
                rate(b["email"]),
            ],
            ["pushes/s answered 201 (delivered / sent)", rate(k["push"]), rate(b["push"])],
            [
                "send → last email / last push (s)",
                f"{_n(k['email']['all_delivered_seconds'], 2)} / "
                f"{_n(k['push']['all_delivered_seconds'], 2)}",
                f"{_n(b['email']['all_delivered_seconds'], 2)} / "
                f"{_n(b['push']['all_delivered_seconds'], 2)}",
            ],
        ]
    out = _table(["", "Keel", "baseline"], rows)
    cpu = k["small"]["cpu"]
    out += [
        "Baselines: the fan-out is `bench/baseline_server.py` writing one frame to every "
        "connection of a room; small sends call a `NotificationService` that answers without "
        "work (same client, same callers); email is raw messages of the same size over one "
        "aiosmtplib connection to the same aiosmtpd; push is raw POSTs of the same size to the "
        f"same endpoint, {r['params']['delivery_concurrency']} in flight. "
        "CPU during the small sends: "
        + ", ".join(f"{name} {_n(v['cpu_percent'])} %" for name, v in cpu.items())
        + "; CPU-ms per send: "
        + ", ".join(f"{name} {_n(v, 3)}" for name, v in k["small"]["cpu_ms_per_send"].items())
        + ". "
        + (
            f"The {each}-user sends' ratio (`group_notifications_per_noop_call`) divides "
            "Keel's in-app notifications/s by the do-nothing service's calls/s: notifications "
            "stored and delivered per call the bare gRPC server answers; above 1, sending to "
            "several users per call beats the per-call ceiling of gRPC in Python on this "
            "machine. The goal of ≥ 2,000 in-app notifications/s per process is reported for "
            f"one-user sends, {each}-user sends and the fan-out (targets above)."
            if group
            else ""
        ),
        "",
    ]
    return out
