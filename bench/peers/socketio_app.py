"""Peer (c): python-socketio with AsyncRedisManager, the usual Socket.IO recipe.

A Socket.IO server (ASGI, under uvicorn) whose client manager is an
AsyncRedisManager, so any number of replicas share emits through Redis. A client
joins the room of its instrument by emitting `subscribe` with the id; books
reach the rooms from an external process (bench/peers/socketio_relay.py) that
emits into the same Redis manager, as Socket.IO's docs describe for emitting from
outside the server.

    python -m bench.peers.socketio_app --port 8003 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import logging

import socketio
import uvicorn

log = logging.getLogger("socketio_app")


def create_app(redis_url: str) -> socketio.ASGIApp:
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=socketio.AsyncRedisManager(redis_url),
                               cors_allowed_origins="*")

    @sio.event
    async def subscribe(sid: str, instrument: str) -> None:
        await sio.enter_room(sid, instrument)

    @sio.event
    async def unsubscribe(sid: str, instrument: str) -> None:
        await sio.leave_room(sid, instrument)

    return socketio.ASGIApp(sio)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="python-socketio + AsyncRedisManager as a benchmark peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--ws", default="websockets-sansio")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    uvicorn.run(create_app(args.redis_url), host=args.host, port=args.port, ws=args.ws, loop="uvloop",
                log_level="warning", backlog=4096, timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
