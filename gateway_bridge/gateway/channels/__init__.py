"""``keel.channels.v1.ChannelService``: ``servicer`` (protobuf in and out) over
``service`` (input rules) over ``store`` (the ``ChatStore`` role, in SQL, split by entity);
``models``, ``rules`` and ``drafts`` are the domain; ``hub``, ``routes`` and ``streams``
serve the bridges' ``Connect`` stream."""
