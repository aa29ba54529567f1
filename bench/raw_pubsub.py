"""A raw pub/sub reader for bench/bench_cluster.py: Redis's side of the fan-out with next to nothing on ours.

The bridge's own Redis side (redis-py parsing every push) costs about 13 µs of CPU a
message, so on this 2-core machine four of them fill the cores long before one Redis
does. These readers count the message pushes in the bytes as they arrive and read one
publish time per read, well under a microsecond a message, so that Redis is what a step
saturates. Same subscriptions as the bridge's: SUBSCRIBE on one server; on a cluster,
SSUBSCRIBE on the primary that owns each channel's slot (one connection per primary,
one command per slot, as SSUBSCRIBE requires).
"""

from __future__ import annotations

import asyncio
from array import array
from typing import Protocol
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis

from marketdata.clock import now_us
from marketdata.slots import key_slot

PTS = b'"pts":'  # the publish time's field in a book, 16 digits of µs after it (bench/cluster_roles.py writes it)


class Counter(Protocol):
    """What a reader counts into (bench.cluster_roles.Counter): messages, and publish-to-read latencies in µs."""

    messages: int
    latency: array  # of "q": µs each




class RawReader(asyncio.Protocol):
    """One pub/sub connection read as bytes: counts the message pushes and samples one publish time per read."""

    def __init__(self, counter: Counter, push: bytes) -> None:
        self.counter, self.push = counter, push
        self.tail = b""
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()  # AUTH answered
        self.confirmed: asyncio.Future[None] = loop.create_future()  # the PING after the subscribes answered
        self.lost: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        seen = self.tail + data
        n = seen.count(self.push)
        self.tail = seen[-len(self.push) + 1 :]
        if not self.ready.done():
            if seen[:1] == b"-":
                self.ready.set_exception(RuntimeError(seen[:200].decode(errors="replace")))
            else:
                self.ready.set_result(None)
            return
        if not self.confirmed.done():
            if b"-" in seen[:1] or b"\r\n-" in seen:
                self.confirmed.set_exception(RuntimeError(seen[:200].decode(errors="replace")))
            elif b"$4\r\npong\r\n" in seen:
                self.confirmed.set_result(None)
        self.counter.messages += n
        at = data.rfind(PTS)
        if n and 0 <= at < len(data) - 22:
            self.counter.latency.append(now_us() - int(data[at + 6 : at + 22]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


async def raw_readers(url: str, counter: Counter, cluster: bool) -> list[RawReader]:
    """One raw connection per server that owns some of the channels, each (S)SUBSCRIBEd to its share."""
    u = urlsplit(url)
    auth = resp(b"AUTH", unquote(u.username or "").encode(), unquote(u.password or "").encode())
    channels = sorted(counter.channels)
    if cluster:
        client = Redis.from_url(url)
        ranges = await client.execute_command("CLUSTER", "SLOTS")
        await client.aclose()
        owner = {}
        for start, end, primary, *_ in ranges:
            for slot in range(int(start), int(end) + 1):
                owner[slot] = (primary[0].decode() if isinstance(primary[0], bytes) else primary[0], int(primary[1]))
        groups: dict[tuple[str, int], list[bytes]] = {}
        for c in channels:
            groups.setdefault(owner[key_slot(c)], []).append(c)
        verb, push = b"SSUBSCRIBE", b"$8\r\nsmessage\r\n"
    else:
        groups, verb, push = {(u.hostname or "127.0.0.1", u.port or 6379): channels}, b"SUBSCRIBE", b"$7\r\nmessage\r\n"
    loop, readers = asyncio.get_running_loop(), []
    for (host, port), mine in groups.items():
        transport, reader = await loop.create_connection(lambda: RawReader(counter, push), host, port)
        transport.write(auth)
        await reader.ready
        # SSUBSCRIBE takes channels of one slot per command; SUBSCRIBE takes any
        by_slot: dict[int, list[bytes]] = {}
        for c in mine:
            by_slot.setdefault(key_slot(c) if cluster else 0, []).append(c)
        transport.write(b"".join(resp(verb, *cs) for cs in by_slot.values()) + resp(b"PING"))
        readers.append(reader)
    await asyncio.gather(*(r.confirmed for r in readers))
    return readers
