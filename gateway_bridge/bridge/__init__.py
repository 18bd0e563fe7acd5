"""The WebSocket bridge process: browsers speak ``keel.v1`` (``protocol``) to it, it
speaks gRPC to a gateway (``link``). ``room`` is the socket-free core that orders each
channel's events; ``bridge`` owns the sockets; ``server`` is its entry
(``start_bridge``, ``serve``)."""
