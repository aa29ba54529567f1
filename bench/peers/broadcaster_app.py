"""Peer (b): a FastAPI bridge on encode/broadcaster with its Redis backend.

Built as broadcaster's README shows it: one `Broadcast` connected in the app's
lifespan, and per WebSocket a task group that runs a receiver (to notice the
close) and a sender that iterates `broadcast.subscribe(channel)` and forwards each
event with `send_text`. It subscribes to the same `md:book:{id}` channels our
ingestor publishes. broadcaster keeps one Redis subscription per channel and an
unbounded asyncio.Queue per socket.

Two fixes were needed, or broadcaster 0.3.1 delivers next to nothing here:

- its RedisBackend wakes its listener *before* redis-py records the first
  subscription; the listener sees none, sleeps again and never wakes for that
  channel. `_RedisBackend` wakes it after the subscription (Broadcast's public
  `backend=` parameter).
- `Broadcast.subscribe` registers the first subscriber of a channel only after
  awaiting the Redis SUBSCRIBE, so sockets that connect together each replace the
  set of the others and all but one get nothing. Entering `subscribe` under a
  per-channel lock serialises that first await (later entries do not await).

    python -m bench.peers.broadcaster_app --port 8002 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
from broadcaster import Broadcast
from broadcaster._backends.redis import RedisBackend
from fastapi import FastAPI, WebSocket

from bench.peers import serve
from marketdata.schema import Keys


class _RedisBackend(RedisBackend):
    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        self._ready.set()


def create_app(redis_url: str, prefix: str = "md") -> FastAPI:
    broadcast = Broadcast(backend=_RedisBackend(redis_url))
    keys = Keys(prefix)
    first_subscribe: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with broadcast:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/market_data/{instrument}")
    async def market_data(websocket: WebSocket, instrument: str) -> None:
        await websocket.accept()

        async def receive() -> None:
            async for _ in websocket.iter_text():
                pass

        async def send() -> None:
            channel = keys.book(instrument)
            async with contextlib.AsyncExitStack() as stack:
                async with first_subscribe.setdefault(channel, asyncio.Lock()):
                    subscriber = await stack.enter_async_context(broadcast.subscribe(channel=channel))
                async for event in subscriber:  # type: ignore[union-attr]
                    await websocket.send_text(event.message)

        async with anyio.create_task_group() as group:

            async def receive_then_stop() -> None:
                await receive()
                group.cancel_scope.cancel()

            group.start_soon(receive_then_stop)
            await send()

    return app


def main(argv: list[str] | None = None) -> None:
    serve.main(argv, create_app, "FastAPI + broadcaster (Redis) as a benchmark peer", port=8002, source="redis")


if __name__ == "__main__":
    main()
