"""The ingestor's Redis client: one server or a Redis Cluster, behind the same three calls.

`execute_command` runs one command (the lease's), `pipeline` runs a drain's commands in one
round trip and answers one result per command (an exception in place of a command
that failed), `check` says whether Redis answers again after a failure.

The client hides no retries (the ingestor backs off itself) and has no socket_timeout:
redis-py sends under asyncio.wait_for when one is set, which on Python 3.11 can swallow
a cancellation; the caller bounds each round trip with REDIS_TIMEOUT instead.
client_name: `CLIENT LIST` on any node tells ingestors apart.

On a cluster, redis-py 8.1's cluster pipeline groups commands by node and sends the
nodes' batches in parallel. With raise_on_error=False it answers per command for
errors in a reply (a fence's refusal) and for a connection lost mid-reply, but when a
node refuses the connection (its primary is dead) it raises for the whole pipeline
and the other nodes' answers are lost. So `pipeline` splits the drain by node itself,
one cluster pipeline per node, all in parallel, each bounded by NODE_TIMEOUT: a dead
primary fails its own commands and the other shards' books go out and are counted;
until `check` passes, a node that failed is not tried again (its commands fail at once).
redis-py follows MOVED itself (it patches its slot map and sends the command again)
but does not refresh its map after a connection error inside a pipeline: it would
keep sending to the dead node. So `check` reads the map again from any node that
answers, then PINGs every primary: it passes once a failed primary's replica has been
promoted and the map names it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from marketdata.backoff import Backoff
from marketdata.ingest.lease import Command

REDIS_TIMEOUT = 5.0  # seconds a Redis round trip may take before the connection counts as lost
# What a lost server, shard or cluster raises (RedisClusterException, e.g. no node reachable, is no RedisError).
ERRORS = (RedisError, OSError, TimeoutError, RedisClusterException)
# A cluster's failover promotes a replica about a node timeout (2 s in the tests) after
# a primary died: retry every half second at most, so that books flow again within
# about that of the promotion. A single server keeps the usual cap.
CLUSTER_RETRY_CAP = 0.5
# A node's share of a drain gets a second less than the whole round trip, so that a hung
# node is found out (and skipped) before the ingestor gives up on the drain; a cluster
# check gets 1 s (a PING each), so that a node that hangs does not hold the retries back.
NODE_TIMEOUT = REDIS_TIMEOUT - 1.0
CHECK_TIMEOUT = 1.0
timeout = getattr(asyncio, "timeout", None) or (lambda _delay: contextlib.nullcontext())  # Python 3.10: unbounded


class RedisLink:
    """The client of one Redis server or of a Redis Cluster (`cluster`), `url` naming the server or any node."""

    def __init__(self, url: str, cluster: bool, client_name: str) -> None:
        self.cluster = cluster
        options = {
            "retry": Retry(NoBackoff(), 0), "socket_connect_timeout": REDIS_TIMEOUT, "socket_timeout": None, "client_name": client_name,
        }
        self.client: aredis.Redis | RedisCluster = (
            RedisCluster.from_url(url, **options) if cluster else aredis.Redis.from_url(url, **options)
        )
        self._away: dict[str, BaseException] = {}  # cluster nodes that failed a round trip, skipped until `check` passes

    def backoff(self) -> Backoff:
        """How to wait between attempts while Redis (or a shard of it) is away."""
        return Backoff(initial=0.05, cap=CLUSTER_RETRY_CAP) if self.cluster else Backoff()

    async def execute_command(self, *command: bytes) -> object:
        if self.cluster:
            return await self.client.execute_command(*_named(command))
        return await self.client.execute_command(*command)

    async def pipeline(self, commands: Sequence[Command]) -> list[object]:
        """One round trip of `commands` (EVALs whose KEYS[1] names the slot, on a cluster); one result or exception each."""
        if not self.cluster:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)
        client = self.client
        assert isinstance(client, RedisCluster)
        results: list[object] = [None] * len(commands)
        try:
            await client.initialize()  # a no-op unless redis-py marked its map stale
            groups: dict[str, list[int]] = {}
            for i, command in enumerate(commands):
                groups.setdefault(client.get_node_from_key(command[3]).name, []).append(i)  # type: ignore[union-attr]
        except ERRORS as exc:
            return [exc] * len(commands)
        answers = await asyncio.gather(*(self._node_round_trip(node, [commands[i] for i in group]) for node, group in groups.items()))
        for group, answer in zip(groups.values(), answers):
            for i, result in zip(group, answer):
                results[i] = result
        return results

    async def _node_round_trip(self, node: str, commands: list[Command]) -> list[object]:
        """One node's share; a node that failed one is not tried again (a hung one would hold every drain back) until `check` passes."""
        failed = self._away.get(node)
        if failed is None:
            pipe = self.client.pipeline()
            for command in commands:
                pipe.execute_command(*_named(command))
            try:
                async with timeout(NODE_TIMEOUT):
                    return await pipe.execute(raise_on_error=False)
            except ERRORS as exc:
                failed = self._away[node] = exc
        return [failed] * len(commands)

    async def check(self) -> None:
        """Raise unless Redis answers: the server a PING; a cluster its slot map (read again) and every primary a PING."""
        async with timeout(CHECK_TIMEOUT if self.cluster else REDIS_TIMEOUT):
            if not isinstance(self.client, RedisCluster):
                await self.client.ping()
                return
            await self.client.initialize()
            await self.client.nodes_manager.initialize()
            await self.client.ping(target_nodes=RedisCluster.PRIMARIES)
        self._away.clear()

    async def aclose(self) -> None:
        await self.client.aclose()


def _named(command: Command) -> tuple[str | bytes, ...]:
    """The command with its name as text: the cluster client looks names up in its tables as str."""
    return (command[0].decode(), *command[1:])
