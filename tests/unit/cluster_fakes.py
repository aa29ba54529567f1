"""A fake Redis Cluster for the bridge's unit tests: nodes that own slots, sharded pub/sub, failover and moves.

`FakeCluster.owners` is the truth (slot -> node); `nodes_manager.slots_cache` is the
client's copy of it, refreshed by `nodes_manager.initialize()` as a real client's
would be. A node's pub/sub refuses (MOVED) a channel whose slot it does not own,
`die()` breaks its connections, `drop(channel)` is the server's pushed `sunsubscribe`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

from redis.exceptions import ConnectionError, MovedError

from marketdata.slots import SLOTS, key_slot


class FakeNode:
    def __init__(self, port: int) -> None:
        self.host, self.port = "10.0.0.1", port
        self.name = f"{self.host}:{port}"
        self.alive = True
        self.pubsubs: list[FakePubSub] = []

    def publish(self, channel: bytes, payload: bytes) -> None:
        for ps in self.pubsubs:
            if channel in ps.channels:
                ps.queue.put_nowait({"type": "smessage", "channel": channel, "data": payload})

    def drop(self, channel: bytes) -> None:
        """The slot of `channel` moved away: the server unsubscribes it by itself."""
        for ps in self.pubsubs:
            if channel in ps.channels:
                ps.channels.discard(channel)
                ps.queue.put_nowait({"type": "sunsubscribe", "channel": channel, "data": len(ps.channels)})

    def die(self, error: type[Exception] = ConnectionError) -> None:
        """The node is gone: its connections' readers get `error`, new connections are refused."""
        self.alive = False
        for ps in self.pubsubs:
            ps.queue.put_nowait(error(f"connection to {self.name} lost"))
        self.pubsubs.clear()


class _Connection:
    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue

    async def can_read(self) -> bool:
        return not self._queue.empty()


class FakePubSub:
    """A pub/sub connection to one node (the part of redis.asyncio.client.PubSub the bridge uses)."""

    def __init__(self, cluster: FakeCluster, node: FakeNode) -> None:
        self._cluster = cluster
        self.node = node
        self.channels: set[bytes] = set()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.connection = _Connection(self.queue)
        self.commands: list[tuple[str, tuple[bytes, ...]]] = []

    async def connect(self) -> None:
        if not self.node.alive:
            raise ConnectionError(f"Error 111 connecting to {self.node.name}")
        self.node.pubsubs.append(self)

    async def aclose(self) -> None:
        if self in self.node.pubsubs:
            self.node.pubsubs.remove(self)

    async def ssubscribe(self, *channels: bytes) -> None:
        self.commands.append(("ssubscribe", channels))
        assert len({key_slot(c) for c in channels}) == 1, "one slot per command, as a cluster demands"
        owner = self._cluster.owners[key_slot(channels[0])]
        if owner is not self.node:
            self.queue.put_nowait(MovedError(f"{key_slot(channels[0])} {owner.name}"))
            return
        for c in channels:
            self.channels.add(c)
            self.queue.put_nowait({"type": "ssubscribe", "channel": c, "data": len(self.channels)})

    async def sunsubscribe(self, *channels: bytes) -> None:
        self.commands.append(("sunsubscribe", channels))
        for c in channels:
            self.channels.discard(c)
            self.queue.put_nowait({"type": "sunsubscribe", "channel": c, "data": len(self.channels)})

    async def get_message(self, timeout: float | None = 0.0) -> dict[str, Any] | None:
        if timeout is None:
            item = await self.queue.get()
        elif self.queue.empty():
            return None
        else:
            item = self.queue.get_nowait()
        if isinstance(item, BaseException):
            raise item
        return item


class _NodesManager:
    def __init__(self, cluster: FakeCluster) -> None:
        self._cluster = cluster
        self.slots_cache: dict[int, list[FakeNode]] = {}
        self.refreshes = 0

    async def initialize(self) -> None:
        if not any(n.alive for n in self._cluster.nodes):
            raise ConnectionError("no node answers")
        self.refreshes += 1
        self.slots_cache = {slot: [node] for slot, node in enumerate(self._cluster.owners)}


class _Pipeline:
    def __init__(self, cluster: FakeCluster) -> None:
        self._cluster = cluster
        self._commands: list[tuple[str, bytes]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def get(self, key: bytes) -> None:
        self._commands.append(("get", key))

    def lrange(self, key: bytes, start: int, end: int) -> None:
        self._commands.append(("lrange", key))

    async def execute(self) -> list[Any]:
        out = []
        for kind, key in self._commands:
            node = self._cluster.owners[key_slot(key)]
            if not node.alive:
                raise ConnectionError(f"Error 111 connecting to {node.name}")
            self._cluster.fetched.append(key)
            out.append(self._cluster.data.get(key) if kind == "get" else list(self._cluster.data.get(key) or []))
        return out


class FakeCluster:
    """`nodes` share the slots evenly until a test moves some (`move`)."""

    def __init__(self, nodes: int = 3) -> None:
        self.nodes = [FakeNode(7000 + i) for i in range(nodes)]
        self.owners = [self.nodes[slot * nodes // SLOTS] for slot in range(SLOTS)]
        self.nodes_manager = _NodesManager(self)
        self.data: dict[bytes, Any] = {}
        self.fetched: list[bytes] = []  # keys read by pipelines, in order
        self.opened: list[FakePubSub] = []

    def node_of(self, channel: bytes) -> FakeNode:
        return self.owners[key_slot(channel)]

    def move(self, channel: bytes, to: FakeNode) -> None:
        """The slot of `channel` now belongs to `to` (the client learns it at its next refresh)."""
        self.owners[key_slot(channel)] = to

    def fail_over(self, dead: FakeNode, to: FakeNode) -> None:
        """`to` (a promoted replica) takes every slot of `dead`."""
        self.owners = [to if n is dead else n for n in self.owners]

    def open_pubsub(self, host: str, port: int) -> FakePubSub:
        ps = FakePubSub(self, next(n for n in self.nodes if (n.host, n.port) == (host, port)))
        self.opened.append(ps)
        return ps

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        return _Pipeline(self)

    async def get(self, key: bytes | str) -> Any:
        key = key.encode() if isinstance(key, str) else key
        node = self.owners[key_slot(key)]
        if not node.alive:
            raise ConnectionError(f"Error 111 connecting to {node.name}")
        return self.data.get(key)
