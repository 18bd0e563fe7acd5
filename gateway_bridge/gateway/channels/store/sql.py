"""``SqlChatStore``: the ``ChatStore`` role (and the relay's ``EventLog``) in SQL.

One class per entity, each over :class:`~.base.SqlStoreBase` and each in its
own module; this class only puts them together. Construct it with the engine
(and, in tests, a clock): ``SqlChatStore(engine, clock=...)``.
"""

from __future__ import annotations

from gateway_bridge.gateway.channels.store.channels import SqlChannels
from gateway_bridge.gateway.channels.store.members import SqlMembers
from gateway_bridge.gateway.channels.store.messages import SqlMessages
from gateway_bridge.gateway.channels.store.outbox import SqlOutbox
from gateway_bridge.gateway.channels.store.reactions import SqlReactions
from gateway_bridge.gateway.channels.store.users import SqlUsers


class SqlChatStore(SqlUsers, SqlChannels, SqlMembers, SqlMessages, SqlReactions, SqlOutbox):
    """Users, channels, members, messages, reactions, read state and the event log, in SQL."""
