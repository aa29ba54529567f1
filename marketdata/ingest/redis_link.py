"""The ingestor's Redis client: one server or a Redis Cluster, behind the same three calls.

`execute_command` runs one command (the lease's), `pipeline` runs a drain's commands in one
round trip and answers one result per command (an exception in place of a command
that failed), `check` says whether Redis answers again after a failure.

The client hides no retries (the ingestor backs off itself) and has no socket_timeout:
redis-py sends under asyncio.wait_for when one is set, which on Python 3.11 can swallow
a cancellation; the caller bounds each round trip with REDIS_TIMEOUT instead.
client_name: `CLIENT LIST` on any node tells ingestors apart.

Scripts go as EVALSHA: the ingest user may not SCRIPT LOAD, but every EVAL caches its
script in the server that ran it, so the commands answered NOSCRIPT (a server restarted,
a replica just promoted: an empty script cache) are sent again, in the same call, as
the EVALs they were built as. That saves sending the script's text (about 900 bytes)
with each command, which on a cluster is one command per slot written.

On a cluster, the lease's commands and the slot map go through redis-py's cluster
client, but a drain does not: its per-command routing and packing cost several times
what the scripts themselves cost. `pipeline` splits the drain by node itself (KEYS[1],
the slot's fence key, names the slot; the cluster client's map names its primary) and
sends each node's share in an ordinary pipeline on a plain client of that node, all
nodes in parallel, each bounded by NODE_TIMEOUT: a dead primary fails its own commands
and the other shards' books go out and are counted; until `check` passes, a node that
failed is not tried again (its commands fail at once). A MOVED or ASK reply (a slot
moved) fails its command like any refusal other than a fence's: the ingestor then
retries through `check`, which reads the map again from any node that answers and
PINGs every primary: it passes once a failed primary's replica has been promoted and
the map names it, and the ingestor then publishes every book again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence

import redis.asyncio as aredis
from hiredis import pack_command
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from marketdata.backoff import Backoff
from marketdata.ingest.lease import Command
from marketdata.ingest.slot_writes import slot_of
from marketdata.slots import node_url

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
        self.url = url
        self.options = {
            "retry": Retry(NoBackoff(), 0), "socket_connect_timeout": REDIS_TIMEOUT, "socket_timeout": None, "client_name": client_name,
        }
        self.client: aredis.Redis | RedisCluster = (
            RedisCluster.from_url(url, **self.options) if cluster else aredis.Redis.from_url(url, **self.options)
        )
        self._away: dict[str, BaseException] = {}  # cluster nodes that failed a round trip, skipped until `check` passes
        self._nodes: dict[str, aredis.Redis] = {}  # cluster node name -> a plain client of it, for the drains
        self._shas = Shas()

    def backoff(self) -> Backoff:
        """How to wait between attempts while Redis (or a shard of it) is away."""
        return Backoff(initial=0.05, cap=CLUSTER_RETRY_CAP) if self.cluster else Backoff()

    async def execute_command(self, *command: bytes) -> object:
        if self.cluster:
            return await self.client.execute_command(*_named(command))
        return await self.client.execute_command(*command)

    async def pipeline(self, commands: Sequence[Command]) -> list[object]:
        """One round trip of `commands` (EVALs whose KEYS[1] names the slot, on a cluster); one result or exception each."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return await send_scripts(client, commands, self._shas)
        try:
            await client.initialize()  # a no-op unless redis-py marked its map stale
            node_of = client.nodes_manager.get_node_from_slot
            nodes: dict[str, ClusterNode] = {}
            groups: dict[str, list[int]] = {}
            for i, command in enumerate(commands):
                node = node_of(slot_of(command[3]))
                group = groups.get(node.name)
                if group is None:
                    group = groups[node.name] = []
                    nodes[node.name] = node
                group.append(i)
        except ERRORS as exc:
            return [exc] * len(commands)
        answers = await asyncio.gather(*(self._node_round_trip(nodes[name], [commands[i] for i in group]) for name, group in groups.items()))
        results: list[object] = [None] * len(commands)
        for group, answer in zip(groups.values(), answers):
            for i, result in zip(group, answer):
                results[i] = result
        return results

    async def _node_round_trip(self, node: ClusterNode, commands: list[Command]) -> list[object]:
        """One node's share; a node that failed one is not tried again (a hung one would hold every drain back) until `check` passes."""
        failed = self._away.get(node.name)
        if failed is None:
            try:
                async with timeout(NODE_TIMEOUT):
                    return await send_scripts(self._node_client(node), commands, self._shas)
            except ERRORS as exc:
                failed = self._away[node.name] = exc
        return [failed] * len(commands)

    def _node_client(self, node: ClusterNode) -> aredis.Redis:
        """A plain client of one node, with the credentials and options (TLS included) of the cluster's URL."""
        client = self._nodes.get(node.name)
        if client is None:
            client = self._nodes[node.name] = aredis.Redis.from_url(node_url(self.url, node.host, node.port), **self.options)
        return client

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
        primaries = {node.name for node in self.client.get_primaries()}
        for name in [name for name in self._nodes if name not in primaries]:  # a dead primary's, or a demoted one's
            await self._nodes.pop(name).aclose()

    async def aclose(self) -> None:
        try:
            for client in self._nodes.values():
                await client.aclose()
        finally:
            await self.client.aclose()


class Shas:
    """The SHA1 of each script text sent, computed once (the scripts are a few constants)."""

    def __init__(self) -> None:
        self._known: dict[bytes, bytes] = {}

    def __call__(self, script: bytes) -> bytes:
        sha = self._known.get(script)
        if sha is None:
            sha = self._known[script] = hashlib.sha1(script).hexdigest().encode()
        return sha


def as_evalsha(command: Command, shas: Shas) -> Command:
    """An EVAL as the EVALSHA of its script; any other command as it is."""
    if command[0] == b"EVAL":
        return (b"EVALSHA", shas(command[1]), *command[2:])
    return command


def unknown_scripts(results: Sequence[object]) -> list[int]:
    """Which results say the server did not know the script (NOSCRIPT): those are sent again as EVAL."""
    return [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]


async def send_scripts(client: aredis.Redis, commands: Sequence[Command], shas: Shas) -> list[object]:
    """`commands` in one pipeline on `client`, EVALs as EVALSHA; those answered NOSCRIPT again as EVAL, in a second."""
    results = await _pipelined(client, [as_evalsha(command, shas) for command in commands])
    again = unknown_scripts(results)
    if again:
        for i, result in zip(again, await _pipelined(client, [commands[i] for i in again])):
            results[i] = result
    return results


async def _pipelined(client: aredis.Redis, commands: Sequence[Command]) -> list[object]:
    """`commands` written at once on one of `client`'s connections, then their replies read in order.

    What redis-py's pipeline does, less its per-command work: hiredis packs each
    command in C (redis-py's asyncio packer is Python, the biggest cost of a drain
    of a script per slot), and the replies go uninterpreted (no callbacks). A reply
    that is an error is that command's result; any other failure (the connection
    lost, a cancellation) disconnects the connection (redis-py does that itself, so
    no half-read replies go back to the pool) and raises.
    """
    if not commands:
        return []
    pool = client.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(b"".join(map(pack_command, commands)), check_health=False)
        results: list[object] = []
        for _ in commands:
            try:
                results.append(await connection.read_response())
            except ResponseError as exc:
                results.append(exc)
        return results
    finally:
        await pool.release(connection)


def _named(command: Command) -> tuple[str | bytes, ...]:
    """The command with its name as text: the cluster client looks names up in its tables as str."""
    return (command[0].decode(), *command[1:])
