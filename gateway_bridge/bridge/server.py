"""Wiring of the bridge process: :func:`start_bridge` builds and starts a bridge (``keel
serve all`` starts one beside the gateway in its own process); :func:`serve` is
``keel serve bridge``, WebSockets in front of a gateway, with no database of its own.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Final

from redis.asyncio import Redis

from gateway_bridge.bridge.bridge import Bridge
from gateway_bridge.bridge.presence import InMemoryPresence, RedisPresence
from service_kit.auth import Authenticator
from service_kit.bus import EventBus
from service_kit.client_tokens import ClientTokens
from service_kit.config import Settings
from service_kit.file_links import files_base_url
from service_kit.metrics import serve_metrics
from service_kit.server import open_bus, wait_for_stop_signal
from service_kit.tenant_client import remote_authenticator
from service_kit.tls import open_channel, server_ssl_context, ws_scheme

#: The collector's thresholds in ``keel serve bridge`` (Python's: 700, 10, 10). A connect
#: allocates a few hundred objects, most freed at once, some kept for the connection's
#: life: with 700 a young collection ran every few connects and an older one every few
#: dozen, each walking what the connects before had kept.
GC_THRESHOLDS: Final = (10_000, 20, 10)


async def start_bridge(
    settings: Settings,
    bus: EventBus,
    redis: Redis | None,
    authenticator: Authenticator,
    gateway_addr: str,
    *,
    notification_addr: str | None = None,
    files_url: Callable[[], str] | None = None,
    reuse_port: bool = False,
) -> Bridge:
    """A bridge listening on ``KEEL_WS_ADDR``, linked to the gateway at ``gateway_addr``
    and to the notification service at ``notification_addr`` (by default
    ``KEEL_NOTIFICATION_SERVICE_ADDR``; without either, the notification frames answer
    ``not_configured``); presence in Redis when there is one. ``files_url`` answers the
    base URL of the file endpoints that ``welcome`` gives clients (by default
    ``KEEL_FILES_PUBLIC_URL``, or ``http(s)://`` + ``KEEL_FILES_HTTP_ADDR``). With
    ``reuse_port`` it shares ``KEEL_WS_ADDR`` with other workers (``SO_REUSEPORT``). With
    ``KEEL_TLS_CERT`` it serves ``wss://`` and reaches the gateway and the notification
    service over TLS (:mod:`service_kit.tls`). Raises ``RuntimeError`` if it cannot listen."""
    peer_token = settings.peer_token or settings.admin_token
    assert settings.token_secret is not None and peer_token is not None
    notification_addr = notification_addr or settings.notifications.service_addr
    bridge = Bridge(
        settings=settings.bridge,
        tokens=ClientTokens(settings.token_secret, previous=settings.token_secret_previous),
        tenants=authenticator,
        gateway=open_channel(gateway_addr, settings.tls),
        peer_token=peer_token,
        bus=bus,
        presence=RedisPresence(redis) if redis is not None else InMemoryPresence(),
        notifications=open_channel(notification_addr, settings.tls) if notification_addr else None,
        files_url=files_url or _fixed(files_base_url(settings.files, https=settings.tls.enabled)),
    )
    try:
        await bridge.start(
            settings.ws_addr.host,
            settings.ws_addr.port,
            reuse_port=reuse_port,
            tls=server_ssl_context(settings.tls),
        )
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {settings.ws_addr} (KEEL_WS_ADDR): {exc}") from exc
    return bridge


async def serve(
    settings: Settings,
    ready: asyncio.Event | None = None,
    *,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> None:
    """``keel serve bridge`` until ``stop`` is set (by default: until SIGTERM/SIGINT); then
    close every connection with 1012. ``reuse_port``: one worker of several sharing
    ``KEEL_WS_ADDR`` (``keel serve bridge --workers N``)."""
    assert settings.tenant_service_addr is not None and settings.gateway_addr is not None
    bus, redis = await open_bus(settings)
    channel = open_channel(settings.tenant_service_addr, settings.tls)
    authenticator = remote_authenticator(settings, channel)
    await authenticator.follow_changes(bus)
    metrics = (
        serve_metrics(settings.metrics_addr.host, settings.metrics_addr.port)
        if settings.metrics_addr is not None
        else None
    )
    bridge = await start_bridge(
        settings, bus, redis, authenticator, settings.gateway_addr, reuse_port=reuse_port
    )
    # What the process made to start (modules, classes, settings: most of its objects)
    # lives until it exits: out of the collector's sight, a full collection looks only at
    # what came after, mostly connections (they took ~15 % of a connect's CPU).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        scheme = ws_scheme(settings.tls)
        print(f"Keel bridge on {scheme}://{settings.ws_addr.host}:{bridge.port}/ws", flush=True)
        if ready is not None:
            ready.set()
        if stop is None:
            await wait_for_stop_signal()
        else:
            await stop.wait()
    finally:
        await bridge.stop()
        if metrics is not None:
            metrics.close()
        await authenticator.close()
        await channel.close()
        await bus.close()
        if redis is not None:
            await redis.aclose()


def _fixed(url: str) -> Callable[[], str]:
    """``url`` as the callable ``Bridge`` takes: the settings do not change, so neither
    does the URL; worked out once, not for every connection's ``welcome``."""
    return lambda: url
