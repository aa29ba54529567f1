"""A tap on the Redis bus for the fault suite: every book on `md:book:*`, verified and in order per channel.

In a Redis Cluster (`ShardTap`) books travel on sharded channels, which a pattern cannot
reach: the tap SSUBSCRIBEs the followed instruments' channels instead, through redis-py's
cluster pub/sub, and starts again from a fresh slot map when a shard's connection fails.

The bridges drop a message that is out of order before any socket sees it, so the
sockets alone could not tell whether a leader paused past its lease wrote anything
when it woke; the tap reads the channels themselves, with the checks every socket
applies (bench.fault_checks), and reconnects by itself when Redis goes away.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from bench.fault_checks import ORDER, OTHER, Order, Verifier, Violations
from marketdata.backoff import Backoff
from marketdata.schema import Keys


class BusTap:
    """Every book on the bus (`md:book:*` pattern), verified and in order per channel; reconnects by itself.

    A repeat of the last (epoch, seq) is allowed: a new leader, or an ingestor that found
    Redis again, republishes every book; anything older is a violation.
    """

    def __init__(self, redis_url: str, pattern: str, verifier: Verifier) -> None:
        self.redis_url = redis_url
        self.pattern = pattern
        self.verifier = verifier
        self.orders: dict[bytes, Order] = {}
        self.violations = Violations()
        self.books = 0

    async def run(self, rng: random.Random) -> None:
        backoff = Backoff(0.1, 1.0, rng)
        while True:
            client = aredis.Redis.from_url(self.redis_url, socket_connect_timeout=1.0)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.psubscribe(self.pattern)
                    backoff.reset()
                    while True:
                        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if msg is not None:
                            self.message(msg["channel"], msg["data"])
            except (RedisError, OSError):
                await asyncio.sleep(backoff.next())
            finally:
                await client.aclose()

    def message(self, channel: bytes, payload: bytes) -> None:
        book = self.verifier.book(payload)
        name = channel.decode(errors="replace")
        if book.problem is not None:
            self.violations.add(book.kind, f"bus {name}: {book.problem}")
            return
        if Keys().instrument_of(name) != book.instrument:
            self.violations.add(OTHER, f"bus {name}: a book of {book.instrument}")
            return
        why = self.orders.setdefault(channel, Order()).check(book.epoch, book.seq, first_on_connection=True)
        if why is not None:
            self.violations.add(ORDER, f"bus {name}: {why} (a writer that should have been fenced off?)")
        self.books += 1


class ShardTap(BusTap):
    """The same checks on a Redis Cluster's sharded channels (`channels`: the book channels to SSUBSCRIBE)."""

    def __init__(self, redis_url: str, channels: Sequence[str], verifier: Verifier) -> None:
        super().__init__(redis_url, "", verifier)
        self.channels = list(channels)

    async def run(self, rng: random.Random) -> None:
        backoff = Backoff(0.1, 1.0, rng)
        while True:
            client = RedisCluster.from_url(self.redis_url, socket_connect_timeout=1.0)
            pubsub = None
            try:
                await client.initialize()
                pubsub = client.pubsub()
                await pubsub.ssubscribe(*self.channels)
                backoff.reset()
                while True:
                    msg = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.05)
                    if msg is not None and msg["type"] == "smessage":
                        self.message(msg["channel"], msg["data"])
            except (RedisError, OSError):
                await asyncio.sleep(backoff.next())
            finally:
                if pubsub is not None:
                    await pubsub.aclose()
                await client.aclose()
