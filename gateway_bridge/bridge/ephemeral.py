"""Typing and presence: announced to every bridge over the bus, never stored.

A user is *present* in a channel while one of their connections on some bridge has
a live subscription to it. Each bridge counts its own (:meth:`Ephemeral.change`),
reports a user's first and last local subscription to the shared
:class:`~gateway_bridge.bridge.presence.Presence` store (in order, off the hot path;
the changes that queued meanwhile together, in one batch),
and announces ``presence:online``/``presence:offline`` when that store says the
user came or went across all bridges (those of one batch in one bus message). A
heartbeat keeps this bridge's entries alive and reports users whose bridge died.
``typing`` frames travel on the bus topic :data:`EPHEMERAL_TOPIC`, presence events on
:data:`PRESENCE_TOPIC`, and both are written to the rooms of every bridge: typing to the
live subscribers (but the typist's own connection), presence to the room's watchers
(connections whose tenant may read presence).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any, Final

from gateway_bridge.bridge import protocol as p
from gateway_bridge.bridge.connection import Conn
from gateway_bridge.bridge.fanout import Fanout
from gateway_bridge.bridge.presence import Change, Presence, Presence3
from service_kit.bus import EventBus, Subscription

log = logging.getLogger(__name__)

EPHEMERAL_TOPIC: Final = "bridge.ephemeral"
#: The bus topic of presence announcements, several in one message. (Bridges from before
#: it announced each on :data:`EPHEMERAL_TOPIC`, where they are still read; they do not
#: read this topic, so they miss what newer bridges announce until they are replaced.)
PRESENCE_TOPIC: Final = "bridge.presence"
#: Presence changes applied to the store in one batch at most.
CHANGES_PER_BATCH: Final = 512


class Ephemeral:
    """Typing and presence for one bridge process (see the module docstring)."""

    def __init__(self, *, bus: EventBus, presence: Presence, ttl: float = 30.0) -> None:
        self._bus = bus
        self._presence = presence
        self._ttl = ttl
        self._present: Counter[Presence3] = Counter()
        self._changes: asyncio.Queue[Change] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[Subscription] = []
        self._fanout: Fanout | None = None

    async def start(self, fanout: Fanout) -> None:
        """Write what other bridges announce to ``fanout``'s rooms; start the loops."""
        self._fanout = fanout
        self._subscriptions = [
            await self._bus.subscribe(EPHEMERAL_TOPIC, self._on_ephemeral),
            await self._bus.subscribe(PRESENCE_TOPIC, self._on_presence),
        ]
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="presence-heartbeat"))
        self._tasks.append(asyncio.create_task(self._announce_changes(), name="presence"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for subscription in self._subscriptions:
            await subscription.close()

    async def typing(self, conn: Conn, channel_id: str) -> None:
        """Tell the channel's other live subscribers, on every bridge, that the user types."""
        await self._publish(
            EPHEMERAL_TOPIC,
            {
                "kind": "typing",
                "tenant_id": conn.tenant_id,
                "channel_id": channel_id,
                "user_id": conn.user_id,
                "origin": conn.id,
            },
        )

    async def online(self, tenant_id: str, channel_id: str) -> list[str]:
        """The users online in the channel, across all bridges."""
        return await self._presence.online(tenant_id, channel_id)

    def change(self, who: Presence3, delta: int) -> None:
        """Count a user's live subscriptions here; queue a join/leave on 0 <-> 1."""
        before = self._present[who]
        after = before + delta
        if after > 0:
            self._present[who] = after
        else:
            del self._present[who]
        if before == 0 and after > 0:
            self._changes.put_nowait(("join", who))
        elif before > 0 and after <= 0:
            self._changes.put_nowait(("leave", who))

    async def _announce_changes(self) -> None:
        """Apply queued joins/leaves to the presence store, in order, those queued together
        in one batch; announce the users who came or went, in the same order."""
        while True:
            changes = [await self._changes.get()]
            while len(changes) < CHANGES_PER_BATCH and not self._changes.empty():
                changes.append(self._changes.get_nowait())
            try:
                changed = await self._presence.apply(changes)
                await self._announce(
                    [
                        ("presence:online" if kind == "join" else "presence:offline", who)
                        for (kind, who), came_or_went in zip(changes, changed, strict=True)
                        if came_or_went
                    ]
                )
            except Exception:
                log.warning("presence update failed", exc_info=True)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                gone = await self._presence.heartbeat(list(self._present))
                # A dead bridge's users may be many: no more in one message than in a
                # batch of changes (each bridge parses a message in one go).
                for start in range(0, len(gone), CHANGES_PER_BATCH):
                    batch = gone[start : start + CHANGES_PER_BATCH]
                    await self._announce([("presence:offline", who) for who in batch])
            except Exception:
                log.warning("presence heartbeat failed", exc_info=True)

    async def _announce(self, announcements: list[tuple[str, Presence3]]) -> None:
        """Publish ``announcements`` (event, who), in order, as one bus message (nothing
        when there are none): every bridge reads one message per batch of changes, not
        one per user who came or went."""
        if announcements:
            await self._publish(
                PRESENCE_TOPIC,
                {
                    "events": [
                        {
                            "event": event,
                            "tenant_id": tenant_id,
                            "channel_id": channel_id,
                            "user_id": user_id,
                        }
                        for event, (tenant_id, channel_id, user_id) in announcements
                    ],
                },
            )

    async def _publish(self, topic: str, message: dict[str, Any]) -> None:
        await self._bus.publish(topic, json.dumps(message).encode())

    def _on_ephemeral(self, payload: bytes) -> None:
        """Typing, or one presence event from a bridge from before :data:`PRESENCE_TOPIC`."""
        message = json.loads(payload)
        self._write(message, message.get("origin", "") if message["kind"] == "typing" else None)

    def _on_presence(self, payload: bytes) -> None:
        for event in json.loads(payload)["events"]:
            self._write(event, None)

    def _write(self, message: dict[str, str], skip: str | None) -> None:
        """Write a typing frame (``skip``: the typist's connection id) to the room's live
        subscribers, or a presence event (``skip`` None) to its watchers."""
        assert self._fanout is not None
        room = self._fanout.room(message["tenant_id"], message["channel_id"])
        # A room no one here reads presence in (or no one is live in) has nothing to do.
        if room is None or not (room.live if skip is not None else room.watchers):
            return
        if skip is not None:
            text = p.typing_frame(message["channel_id"], message["user_id"])
        else:
            data = json.dumps({"user_id": message["user_id"]}, separators=(",", ":"))
            text = p.event_frame(message["event"], message["channel_id"], 0, data)
        frame = p.encode_text_frame(text.encode())
        for conn in list(room.live if skip is not None else room.watchers):
            if conn.id != skip:
                self._fanout.write(conn, frame)
