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

import socketio

from bench.peers import serve


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
    serve.main(argv, create_app, "python-socketio + AsyncRedisManager as a benchmark peer", port=8003, source="redis")


if __name__ == "__main__":
    main()
