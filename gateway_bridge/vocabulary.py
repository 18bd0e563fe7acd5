"""The chat events' vocabulary, shared by the gateway and the bridge.

The names are the seed's (``channel:created``, ``message:created``, …); both sides
agree here on what each is called and on the one rule about events that both apply:
which events end subscriptions. The events' data is described in docs/protocol.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

#: The bus topic chat events travel on, from the gateways that record them.
CHAT_EVENTS_TOPIC: Final = "chat.events"

CHANNEL_CREATED: Final = "channel:created"
CHANNEL_UPDATED: Final = "channel:updated"
CHANNEL_DELETED: Final = "channel:deleted"
MESSAGE_CREATED: Final = "message:created"
MESSAGE_UPDATED: Final = "message:updated"
MESSAGE_DELETED: Final = "message:deleted"
REACTION_ADDED: Final = "reaction:added"
REACTION_REMOVED: Final = "reaction:removed"
USER_JOINED: Final = "user:joined"
USER_LEFT: Final = "user:left"

EVENT_NAMES: Final = frozenset(
    {
        CHANNEL_CREATED,
        CHANNEL_UPDATED,
        CHANNEL_DELETED,
        MESSAGE_CREATED,
        MESSAGE_UPDATED,
        MESSAGE_DELETED,
        REACTION_ADDED,
        REACTION_REMOVED,
        USER_JOINED,
        USER_LEFT,
    }
)


@dataclass(frozen=True, slots=True)
class SubscriptionsEnd:
    """Whose subscriptions to a channel an event ends: one user's, or (``None``) all."""

    user_id: str | None

    def includes(self, user_id: str) -> bool:
        return self.user_id is None or self.user_id == user_id


_EVERYONE: Final = SubscriptionsEnd(None)


def subscriptions_ended_by(name: str, data_json: str) -> SubscriptionsEnd | None:
    """Whose subscriptions the event ``name`` (with its data as JSON text) ends.

    After ``user:left`` that user's: the channel may be private, and they may no longer
    read it. After ``channel:deleted`` everyone's. After any other event, nobody's.
    The subscriber receives the ending event itself before its subscription ends."""
    if name == CHANNEL_DELETED:
        return _EVERYONE
    if name == USER_LEFT:
        return SubscriptionsEnd(str(json.loads(data_json).get("user_id", "")))
    return None


#: The initial metadata with which a gateway's ``Connect`` stream says it takes the
#: bridge's sends (``ConnectSend``); a bridge makes unary SendMessage calls to one without.
CONNECT_SENDS: Final = ("x-keel-connect-sends", "1")

#: The initial metadata with which a gateway's ``Connect`` stream says it takes
#: subscriptions in batches (``ConnectSubscribes``); a bridge sends them one by one to one
#: without.
CONNECT_SUBSCRIBES: Final = ("x-keel-connect-subscribes", "1")


def batch_length(sizes: Iterable[int], max_bytes: int, max_items: int) -> int:
    """How many of the items (of these ``sizes``, in order) go in one stream message: up
    to the one that reaches ``max_bytes``, at most ``max_items``, at least one. The
    Connect stream batches sends (bridge) and their answers (gateway) this way."""
    taken = total = 0
    for size in sizes:
        taken += 1
        total += size
        if total >= max_bytes or taken >= max_items:
            break
    return taken
