"""The gateway and the WebSocket bridge: two processes, and the little they share.

``gateway/`` is the gateway process: ``channels/`` serves ``keel.channels.v1.ChannelService``
(users, channels, members, messages, reactions, read state, client tokens, and the
bridges' ``Connect`` stream), ``events/`` serves ``keel.events.v1.EventService``
(webhooks and event subscriptions), and ``outbox.py``/``relay.py`` hold the event log
both read. ``bridge/`` is the bridge process: browsers' WebSockets in front of a gateway.
They talk only over gRPC (``Connect`` and the ``ChannelService`` calls) and share three
small modules: ``vocabulary.py`` (the events' names and which end subscriptions),
``seq_order.py`` (one channel's events in seq order, each once) and ``tokens.py``
(browser client tokens: the gateway issues them, the bridge checks them).
"""
