"""Where chat lives: the ``ChatStore`` role and its SQL implementation.

Every method is scoped by ``tenant_id``. Every mutation runs in one
transaction that also records its events in the event log (the outbox) and
returns them, so the caller can publish them after commit. A channel's
message ``seq`` is taken from ``channels.last_seq`` inside the sending
transaction, under the channel row's lock (``UPDATE ... SET last_seq = last_seq
+ 1``, or, for a batch of concurrent sends stored together, ``SELECT ... FOR
UPDATE`` in channel id order and one write for the whole batch): the lock serializes
senders of one channel (PostgreSQL; SQLite serializes all writers), a rollback
gives the numbers back, and so seqs are gap-free.

Rules that need the stored state to decide (membership, who may edit or
delete) are checked inside the transaction, with the predicates of
:mod:`gateway_bridge.gateway.channels.rules`.

Modules: :mod:`.interface` (the ``ChatStore`` role), :mod:`.sql` (``SqlChatStore``,
composed of :mod:`.users`, :mod:`.channels`, :mod:`.members`, :mod:`.messages`,
:mod:`.reactions` and :mod:`.outbox` over :mod:`.base`), :mod:`.rows` (rows to
domain values and back), :mod:`.group_commit` (a batch's decisions, no I/O),
:mod:`.send_batch` (a batch's statements, per database).
"""

from __future__ import annotations

from gateway_bridge.gateway.channels.store.interface import ChatStore, Sent
from gateway_bridge.gateway.channels.store.sql import SqlChatStore

__all__ = ["ChatStore", "Sent", "SqlChatStore"]
