"""The child processes of bench/bench_cluster.py: one publisher and the bridges' Redis side.

Each runs alone in its own process (the cores are shared as in production) and obeys
one-line commands on stdin, answering one JSON line on stdout:

- `prime` (publisher only): publish every book once (the last values bridges fetch);
- `rate R` (publisher only): publish R books/s from now on;
- `mark`: the counters since the previous mark (messages, CPU seconds, latency
  percentiles of what arrived in between), then start counting afresh.

The publisher stamps its publish time into every payload (the book's `pts`, 16 digits
patched into a prebuilt snapshot, so stamping costs a byte copy, not an encode) and
writes each drain through the ingestor's own path: `publish_queue.drain_commands`
(fenced scripts, SET + PUBLISH per book) for one server, the slot-grouped SPUBLISH
form for a cluster. Like the ingestor it keeps one pipeline in flight: when Redis is
slower than the offered rate, drains grow, and an instrument due twice before its
drain goes out is published once (coalescing, counted as `coalesced`).

A subscriber is a bridge's Redis side and nothing else: `bridge.subscriptions.Subscriptions`
(or its sharded form for a cluster) subscribed to every book channel, with a listener
that counts what arrives and reads the `pts` of each payload (no verify, no sockets:
the bridge's per-book check is measured in docs/performance.md, "Verifying books").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from array import array
from collections.abc import Collection
from decimal import Decimal

from bench.raw_pubsub import raw_readers
from marketdata import schema
from marketdata.book import checksum
from marketdata.clock import now_us
from marketdata.instruments import Instrument, universe

TICK = 0.005  # seconds between drains when Redis keeps up (the ingestor drains as often as events arrive)
DEPTH = 25
PTS = b'"pts":'
LEASE_VALUE = b"1 bench-cluster"


def percentile(values: array, q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb() -> float:
    """This process's resident set now (MB), from /proc: the high-water mark would hide a fall."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def book_templates(instruments: Collection[Instrument], cluster: bool) -> list[tuple[bytes, bytes, bytes]]:
    """(channel, payload before the pts digits, after them) of a realistic 25-level book per instrument."""
    keys = schema.Keys(cluster=cluster)
    out = []
    for inst in instruments:
        mid = max(int(Decimal(inst.reference_price) / Decimal(inst.tick_size)), DEPTH + 2)
        bids = [(mid - 1 - i, 3 + (7 * i) % 40) for i in range(DEPTH)]
        asks = [(mid + 1 + i, 5 + (11 * i) % 40) for i in range(DEPTH)]
        pts = now_us()
        payload = schema.encode_snapshot(inst, pts, 1, bids, asks, pts, pts, checksum(bids, asks))
        at = payload.index(PTS) + len(PTS)
        assert payload[at : at + 16] == b"%d" % pts, "pts is 16 digits"
        out.append((keys.book(inst.id).encode(), payload[:at], payload[at + 16 :]))
    return out


# -- the publisher ---------------------------------------------------------------------------


class Publisher:
    """Publishes round-robin over every instrument at the offered rate, one drain in flight."""

    def __init__(self, send, templates: list[tuple[bytes, bytes, bytes]]) -> None:  # type: ignore[no-untyped-def]
        self.send = send  # async (books) -> books published
        self.templates = templates
        self.rate = 0.0
        self.next = 0
        self.books = self.drains = self.coalesced = self.errors = 0
        self.rtt = array("d")

    async def run(self) -> None:
        due, last, n_inst = 0.0, time.perf_counter(), len(self.templates)
        while True:
            now = time.perf_counter()
            due += self.rate * (now - last)
            last = now
            if due < 1:
                await asyncio.sleep(TICK)
                continue
            n = int(due)
            if n > n_inst:  # every instrument is in this drain already: the rest coalesce into it
                self.coalesced += n - n_inst
                n = n_inst
            due -= int(due)
            stamp = b"%d" % now_us()
            t, books = self.templates, []
            for _ in range(n):
                channel, head, tail = t[self.next]
                books.append((channel, head + stamp + tail))
                self.next = (self.next + 1) % n_inst
            t0 = time.perf_counter()
            try:
                self.books += await self.send(books)
            except Exception as exc:  # noqa: BLE001 - counted and shown; the run goes on
                self.errors += 1
                print(f"publisher: {exc!r}", file=sys.stderr, flush=True)
            self.rtt.append(time.perf_counter() - t0)
            self.drains += 1
            spent = time.perf_counter() - now
            if spent < TICK:
                await asyncio.sleep(TICK - spent)

    def mark(self) -> dict:
        rtt, self.rtt = self.rtt, array("d")
        out = {"books": self.books, "drains": self.drains, "coalesced": self.coalesced, "errors": self.errors,
               "rtt_p50_ms": _ms(percentile(rtt, 0.5)), "rtt_p99_ms": _ms(percentile(rtt, 0.99))}  # fmt: skip
        return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


async def single_sender(url: str):  # type: ignore[no-untyped-def]
    """The single server's publish path: drain_commands' fenced scripts in one pipeline, as the ingestor sends them."""
    from redis.asyncio import Redis

    from marketdata.ingest.lease import Fence
    from marketdata.ingest.publish_queue import (
        Drain,
        IngestStats,
        drain_commands,
        tally,
    )

    redis = Redis.from_url(url)
    keys, stats = schema.Keys(), IngestStats()
    fence, instruments_key = Fence(keys.leader.encode(), LEASE_VALUE), keys.instruments.encode()

    async def send(books: list[tuple[bytes, bytes]]) -> int:
        commands = drain_commands(Drain(books=books), instruments_key, 50, fence)
        pipe = redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        results = await pipe.execute(raise_on_error=False)
        before = stats.publishes
        errors = tally(commands, results, stats)
        if errors:
            raise errors[0]
        return stats.publishes - before

    return send


async def cluster_sender(url: str):  # type: ignore[no-untyped-def]
    """The cluster's publish path, as the ingestor sends it: one fenced SPUBLISH script per slot, one pipeline per node."""
    from marketdata.ingest.publish_queue import Drain
    from marketdata.ingest.redis_link import RedisLink
    from marketdata.ingest.slot_writes import slot_commands, slot_published

    link = RedisLink(url, True, "bench-cluster")

    async def send(books: list[tuple[bytes, bytes]]) -> int:
        results = await link.pipeline(slot_commands(Drain(books=books), schema.DEFAULT_PREFIX, 50, LEASE_VALUE))
        published = 0
        for result in results:
            if isinstance(result, Exception):
                raise result
            published += slot_published(result)[0]
        return published

    return send


# -- a subscriber (a bridge's Redis side) ---------------------------------------------------------


class Counter:
    """The listener the subscriptions report to: counts messages and reads each one's publish time."""

    def __init__(self, channels: Collection[bytes]) -> None:
        self.channels = frozenset(channels)
        self.messages = self.fetched = self.resubscribes = 0
        self.latency = array("q")

    def wanted(self) -> Collection[bytes]:
        return self.channels

    def unprimed(self) -> Collection[bytes]:
        return ()

    def deliver_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        self.messages += len(batch)
        now, lat = now_us(), self.latency
        for _, payload in batch:
            at = payload.find(PTS) + 6
            lat.append(now - int(payload[at : at + 16]))

    def fetched_book(self, channel: bytes, payload: bytes | None) -> None:
        self.fetched += 1

    def fetched_trades(self, channel: bytes, history: list[bytes]) -> None:
        pass

    def resubscribing(self) -> None:
        self.resubscribes += 1

    def mark(self) -> dict:
        lat, self.latency = self.latency, array("q")
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        return {"messages": self.messages, "lat_p50_ms": p50 and p50 / 1000, "lat_p99_ms": p99 and p99 / 1000,
                "resubscribes": self.resubscribes}  # fmt: skip


async def single_subscriptions(url: str, counter: Counter):  # type: ignore[no-untyped-def]
    """The bridge's Redis side on one server: bridge.bus opens these two clients the same way."""
    from redis.asyncio import Redis

    from bridge.subscriptions import Subscriptions

    redis, pubsub_client = Redis.from_url(url), Redis.from_url(url, protocol=2)
    subs = Subscriptions(pubsub_client.pubsub(), redis, counter, schema.Keys().book("").encode())
    await subs.connect()
    return subs


async def cluster_subscriptions(url: str, counter: Counter):  # type: ignore[no-untyped-def]
    """The bridge's Redis side on a cluster: bridge.shards, one pub/sub connection per primary."""
    from urllib.parse import unquote, urlsplit

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from bridge.shards import Shards

    u = urlsplit(url)
    user, password = unquote(u.username or ""), unquote(u.password or "")

    def open_pubsub(host: str, port: int):  # type: ignore[no-untyped-def]
        return Redis(host=host, port=port, username=user, password=password, protocol=2).pubsub()

    book_prefix = f"{schema.DEFAULT_PREFIX}:book:".encode()  # Keys.book("") would end in the empty hash tag
    subs = Shards(RedisCluster.from_url(url), counter, book_prefix, open_pubsub, lambda: None)
    await subs.connect()
    return subs


# -- the command loop ----------------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    instruments = universe(args.instruments)
    templates = book_templates(instruments, args.cluster)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    # what the role imports is loaded before its memory is measured
    if args.cluster:
        import bridge.shards  # noqa: F401  # type: ignore[import-not-found]
    import redis.asyncio  # noqa: F401

    import bridge.subscriptions  # noqa: F401

    if args.role == "publisher":
        sender = await (cluster_sender if args.cluster else single_sender)(args.url)
        counters = Publisher(sender, templates)
        ready: dict = {"payload_bytes": sum(len(h) + 16 + len(t) for _, h, t in templates) / len(templates)}
        task = asyncio.create_task(counters.run())
    elif args.role == "reader":
        counters = Counter([c for c, _, _ in templates])
        c0, t0 = time.process_time(), time.perf_counter()
        readers = await raw_readers(args.url, counters, args.cluster)
        task = asyncio.create_task(asyncio.wait([r.lost for r in readers], return_when=asyncio.FIRST_COMPLETED))
        ready = {"connections": len(readers), "subscribe_s": time.perf_counter() - t0, "subscribe_cpu_s": time.process_time() - c0,
                 "channels": len(counters.channels)}  # fmt: skip
    else:
        counters = Counter([c for c, _, _ in templates])
        rss0, c0, t0 = rss_mb(), time.process_time(), time.perf_counter()
        subs = await (cluster_subscriptions if args.cluster else single_subscriptions)(args.url, counter=counters)
        task = asyncio.create_task(subs.listen())
        await subs.sync()
        counters.resubscribes = 0  # its first connect counts as one
        ready = {"subscribe_s": time.perf_counter() - t0, "subscribe_cpu_s": time.process_time() - c0,
                 "rss0_mb": rss0, "rss_mb": rss_mb(), "channels": len(counters.channels), "fetched": counters.fetched}  # fmt: skip
    print(json.dumps({"ready": ready}), flush=True)
    while line := (await stdin.readline()).split():
        if line[0] == b"prime":  # every book once, so that the subscribers' fetches find last values
            out = {"books": await counters.send([(c, h + b"%d" % now_us() + t) for c, h, t in templates])}  # type: ignore[union-attr]
        elif line[0] == b"rate":
            counters.rate = float(line[1])  # type: ignore[union-attr]
            out: dict = {}
        else:
            out = {**counters.mark(), "cpu_s": time.process_time(), "t": time.perf_counter(), "rss_mb": rss_mb()}
            if task.done():  # a lost connection (Redis drops a subscriber past its output buffer limit)
                out["failed"] = "connection lost" if args.role == "reader" else repr(task.exception())
        print(json.dumps(out), flush=True)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def main() -> None:
    ap = argparse.ArgumentParser(description="a child of bench/bench_cluster.py")
    ap.add_argument("role", choices=["publisher", "subscriber", "reader"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--cluster", action="store_true")
    ap.add_argument("--instruments", type=int, default=1000)
    import uvloop

    uvloop.run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()
