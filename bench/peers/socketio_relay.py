"""The relay that feeds peer (c): our Redis book channels in, Socket.IO emits out.

An external process, as Socket.IO's docs describe for emitting from outside a
server: a write-only AsyncRedisManager on the same Redis. It pattern-subscribes to
`md:book:*`, decodes each snapshot and emits it as event `book` to the room named
after the instrument; every socketio_app replica then sends it to its members.

    python -m bench.peers.socketio_relay --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import orjson
import redis.asyncio as aredis
import socketio

from marketdata.schema import Keys

log = logging.getLogger("socketio_relay")


async def relay(redis_url: str, prefix: str = "md") -> None:
    keys = Keys(prefix)
    external = socketio.AsyncRedisManager(redis_url, write_only=True)
    client = aredis.Redis.from_url(redis_url)
    async with client.pubsub() as pubsub:
        await pubsub.psubscribe(keys.book_pattern)
        log.info("relaying %s to socket.io rooms", keys.book_pattern)
        async for message in pubsub.listen():
            if message["type"] == "pmessage":
                await external.emit("book", orjson.loads(message["data"]), room=keys.instrument_of(message["channel"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="relay md:book:* into python-socketio rooms")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    async def run() -> None:
        task = asyncio.create_task(relay(args.redis_url))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    import uvloop

    uvloop.run(run())


if __name__ == "__main__":
    main()
