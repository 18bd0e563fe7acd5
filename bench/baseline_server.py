"""The baselines Keel is measured against: the least a server can do for each scenario.

``--mode ws``: a WebSocket server on the same library (``websockets``), the
same event loop as Keel's processes and the same server options that matter
(no compression, the same frame-size limit and write limit). It accepts every
connection on ``/ws?room=R[&since=N]`` with no authentication, puts it in room
``R``, replays the room's stored frames after ``N`` from memory (for the resume
scenario) and sends a small ready frame. Each text frame a client sends is
taken as a message's data, unparsed: the server wraps it in an ``event`` frame
with the room's next seq, encodes that frame once and writes the same bytes to
every connection in the room (the one-frame-per-message fan-out Keel's bridge
does, without auth, persistence, gRPC or a bus). Connections whose URL has
``&pub=1`` only publish.

``--mode grpc``: a ``keel.channels.v1.ChannelService`` on the same grpc.aio whose
``SendMessage`` answers at once with a made-up message: no auth, no database.

It prints ``READY <port>`` on stdout when listening, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from collections import defaultdict, deque
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway_bridge.bridge.protocol import encode_text_frame

_RING = 20_000


class Rooms:
    def __init__(self) -> None:
        self.members: dict[str, set[Any]] = defaultdict(set)
        self.seq: dict[str, int] = defaultdict(int)
        self.ring: dict[str, deque[tuple[int, bytes]]] = defaultdict(lambda: deque(maxlen=_RING))

    def publish(self, room: str, data: str | bytes) -> None:
        if isinstance(data, bytes):
            data = data.decode()
        self.seq[room] += 1
        seq = self.seq[room]
        frame = encode_text_frame(
            (
                '{"type":"event","event":"message:created","channel_id":"'
                + room
                + '","seq":'
                + str(seq)
                + ',"event_id":"","data":'
                + data
                + "}"
            ).encode()
        )
        self.ring[room].append((seq, frame))
        for ws in self.members.get(room, ()):
            ws.transport.write(frame)


async def serve_ws(host: str, port: int, write_limit: int, max_size: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    rooms = Rooms()

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        room = query.get("room", ["main"])[0]
        publisher = query.get("pub", ["0"])[0] == "1"
        if not publisher:
            since = query.get("since")
            if since is not None:
                after = int(since[0])
                for seq, frame in rooms.ring.get(room, ()):
                    if seq > after:
                        ws.transport.write(frame)
            rooms.members[room].add(ws)
            await ws.send(
                '{"type":"ack","id":"s","result":{"last_seq":' + str(rooms.seq[room]) + "}}"
            )
        try:
            async for message in ws:
                rooms.publish(room, message)
        except ConnectionClosed:
            pass
        finally:
            rooms.members[room].discard(ws)

    server = await serve(
        handler,
        host,
        port,
        subprotocols=["keel.v1"],  # type: ignore[list-item]
        compression=None,
        max_size=max_size,
        write_limit=write_limit,
        ping_interval=20,
        ping_timeout=20,
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    await _until_stopped()
    server.close()
    await server.wait_closed()


async def serve_grpc(host: str, port: int) -> None:
    import grpc
    from keel.channels.v1 import channels_pb2, channels_pb2_grpc

    class Minimal(channels_pb2_grpc.ChannelServiceServicer):
        def __init__(self) -> None:
            self.seq: dict[str, int] = defaultdict(int)

        async def SendMessage(self, request: Any, context: Any) -> Any:
            self.seq[request.channel_id] += 1
            return channels_pb2.SendMessageResponse(
                message=channels_pb2.Message(
                    id=str(uuid.uuid4()),
                    channel_id=request.channel_id,
                    user_id=request.user_id,
                    content=request.content,
                    message_type=request.message_type or "text",
                    seq=self.seq[request.channel_id],
                )
            )

    server = grpc.aio.server()
    channels_pb2_grpc.add_ChannelServiceServicer_to_server(Minimal(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"READY {bound}", flush=True)
    await _until_stopped()
    await server.stop(1)


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("ws", "grpc"), default="ws")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop; Keel's processes run asyncio's default loop",
    )
    parser.add_argument("--write-limit", type=int, default=1 << 20)
    parser.add_argument("--max-size", type=int, default=65536)
    args = parser.parse_args(argv)
    if args.mode == "ws":
        coro = serve_ws(args.host, args.port, args.write_limit, args.max_size)
    else:
        coro = serve_grpc(args.host, args.port)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
    sys.exit(0)


if __name__ == "__main__":
    main()
