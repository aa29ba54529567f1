"""Redis Cluster's sharded pub/sub: one connection per primary, each channel on the primary that owns its slot.

`Shards` has the interface the bus (bridge.bus) uses of bridge.subscriptions
(`connect`, `listen`, `sync`, `aclose`, `count`). Inside, each primary that owns a
wanted channel's slot gets a `Subscriptions` in SHARDED mode of its own (a shard),
with its own reader task feeding the one listener (the hub), and a view of the
listener that wants only the channels routed to that primary. The routes come from
the slot map of the cluster client (redis.asyncio.cluster.RedisCluster), refreshed
when the topology changed.

Topology changes heal per shard, never by dropping the others: when the server drops
a channel by itself (a pushed `sunsubscribe`: its slot moved) or a shard's connection
is lost (its primary died; the cluster promotes a replica after its node timeout),
the listener hears that those channels alone lost their subscription
(`resubscribing(channels)`), the slot map is marked stale, and the bus is asked to
sync. The next sync refreshes the map, subscribes those channels on their owner and
fetches their last values (the heal from the last value); while the map still names
a dead primary the sync fails and the bus retries it with backoff. The other shards
flow meanwhile; the bus's feed state follows the heartbeat and the books as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisClusterException, RedisError

from bridge.subscriptions import SHARDED, ChannelListener, Subscriptions
from bridge.tasks import spawn, stop
from marketdata.slots import key_slot

log = logging.getLogger(__name__)

LOST_ERRORS = (RedisError, RedisClusterException, OSError)


class _View:
    """The listener as one shard sees it: only the wanted channels routed to its primary."""

    def __init__(self, listener: ChannelListener, route: Callable[[bytes], str | None], name: str) -> None:
        self._listener = listener
        self._route = route
        self._name = name
        self.deliver_batch = listener.deliver_batch
        self.fetched_book = listener.fetched_book
        self.fetched_trades = listener.fetched_trades

    def wanted(self) -> Collection[bytes]:
        route, name = self._route, self._name
        return {c for c in self._listener.wanted() if route(c) == name}

    def unprimed(self) -> Collection[bytes]:
        route, name = self._route, self._name
        return [c for c in self._listener.unprimed() if route(c) == name]

    def resubscribing(self, channels: Collection[bytes] | None = None) -> None:
        """A shard's connection is made once, empty; what it loses, Shards tells the listener."""


@dataclass(slots=True, eq=False)
class _Shard:
    name: str  # the primary's host:port, as the slot map names it
    subs: Subscriptions
    reader: asyncio.Task[None] | None = None


class Shards:
    """Sharded subscriptions over the primaries of `cluster` (a RedisCluster, also used for the last values).

    `open_pubsub(host, port)` makes a pub/sub client of one node (not yet connected);
    `changed()` asks the owner (the bus) for a sync soon.
    """

    def __init__(
        self,
        cluster: Any,
        listener: ChannelListener,
        book_prefix: bytes,
        open_pubsub: Callable[[str, int], PubSub],
        changed: Callable[[], None],
    ) -> None:
        self._cluster = cluster
        self._listener = listener
        self._book_prefix = book_prefix
        self._open_pubsub = open_pubsub
        self._changed = changed
        self._shards: dict[str, _Shard] = {}
        self._slots: dict[bytes, int] = {}  # channel -> slot (a name's slot never changes)
        self._stale = True  # the slot map must be refreshed before the next routing

    @property
    def count(self) -> int:
        """Channels subscribed on every shard."""
        return sum(s.subs.count for s in self._shards.values())

    def owner(self, channel: bytes) -> str | None:
        """The name of the primary that owns `channel`'s slot in the current map (None: no owner known)."""
        slot = self._slots.get(channel)
        if slot is None:
            slot = self._slots[channel] = key_slot(channel)
        nodes = self._cluster.nodes_manager.slots_cache.get(slot)
        return nodes[0].name if nodes else None

    async def connect(self) -> None:
        """Start over: close every shard, read the slot map; every channel is subscribed again by the next sync."""
        await self._close_shards()
        self._listener.resubscribing()
        self._stale = True
        await self._refresh()

    async def listen(self) -> None:
        """The shards' readers do the reading, each in its task, and heal a lost shard: wait until cancelled."""
        await asyncio.get_running_loop().create_future()

    async def aclose(self) -> None:
        await self._close_shards()

    async def sync(self) -> None:
        """Route what the listener wants to the primaries, and make each shard's subscriptions follow.

        Every shard is synced even if one fails; the first failure is raised after (the bus
        retries), and the slot map is read again before the retry.
        """
        if self._stale:
            await self._refresh()
        owners = {self.owner(c) for c in self._listener.wanted()}
        failed: BaseException | None = None
        if None in owners:
            self._stale = True  # a slot with no known owner: read the map again before the retry
            failed = RedisError("the slot map names no owner for some wanted channels")
        names = {n for n in owners if n is not None}
        for name in sorted(names | self._shards.keys()):
            try:
                shard = self._shards.get(name) or await self._open(name)
                await shard.subs.sync()
            except (*LOST_ERRORS, asyncio.TimeoutError) as exc:
                self._stale = True
                failed = failed or exc
                log.debug("shard %s not synced: %s", name, exc)
        if failed is not None:
            raise failed

    async def _refresh(self) -> None:
        """Read the slot map again (from any node that answers)."""
        await self._cluster.nodes_manager.initialize()
        self._stale = False

    async def _open(self, name: str) -> _Shard:
        """Connect to the primary `name` (host:port) and start its reader."""
        host, _, port = name.rpartition(":")
        pubsub = self._open_pubsub(host, int(port))
        subs = Subscriptions(pubsub, self._cluster, _View(self._listener, self.owner, name), self._book_prefix, SHARDED, self._dropped)
        try:
            await subs.connect()
        except BaseException:
            await subs.aclose()
            raise
        shard = self._shards[name] = _Shard(name, subs)
        shard.reader = spawn(self._read(shard), f"bridge-shard-{name}")
        log.info("redis shard %s connected", name)
        return shard

    async def _read(self, shard: _Shard) -> None:
        """Read one shard until its connection is lost; then its channels go to whoever owns their slots next."""
        try:
            await shard.subs.listen()
        except (*LOST_ERRORS, RuntimeError) as exc:
            # RuntimeError: redis-py reconnects once even with no retries, and uvloop refuses a
            # write on the transport of a primary dying at that moment; the shard is lost all the same.
            log.warning("redis shard %s lost (%s): %d channels resubscribe on the slots' new owners", shard.name, exc, shard.subs.count)
        finally:
            if self._shards.get(shard.name) is shard:  # lost, not closed by us (a bug's exception is also logged by spawn)
                del self._shards[shard.name]
                self._moved(shard.subs.subscribed)
                with contextlib.suppress(*LOST_ERRORS, RuntimeError):
                    await shard.subs.aclose()

    async def recheck(self) -> None:
        """Read the slot map again; channels subscribed on a primary that no longer owns their slot move to the one that does.

        The bus calls it every few seconds: a topology change that no connection loss
        or pushed `sunsubscribe` announced (a map read from a node that had just
        restarted and not yet learnt it was replaced, say) heals within that, not never.
        """
        await self._refresh()
        for name, shard in list(self._shards.items()):
            strays = [c for c in shard.subs.subscribed if self.owner(c) != name]
            if strays:
                log.warning("redis shard %s no longer owns %d subscribed channels (%s...); resubscribing them",
                            name, len(strays), strays[0].decode(errors="replace"))
                self._moved(strays)

    def _dropped(self, channels: list[bytes]) -> None:
        """The server unsubscribed these channels by itself: their slot moved to another primary."""
        log.info("redis moved %d channels (%s...); resubscribing them", len(channels), channels[0].decode(errors="replace"))
        self._moved(channels)

    def _moved(self, channels: Collection[bytes]) -> None:
        self._stale = True
        if channels:
            self._listener.resubscribing(channels)
        self._changed()

    async def _close_shards(self) -> None:
        shards = list(self._shards.values())
        self._shards.clear()
        await stop([s.reader for s in shards if s.reader is not None])
        for shard in shards:
            await shard.subs.aclose()
