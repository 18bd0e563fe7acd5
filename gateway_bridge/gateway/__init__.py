"""The gateway process: ``ChannelService`` (``channels/``) and ``EventService``
(``events/``) over one database, the event log they share (``outbox.py``) and its
publishing to the bus (``relay.py``); ``server.build`` is its one entry."""
