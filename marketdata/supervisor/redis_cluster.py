"""A private Redis Cluster from the binary the project installs: `up --redis-cluster N` and the tests.

Each node is a RedisServer (marketdata.supervisor.redis_server) with the cluster options:
its own folder (where it keeps nodes.conf, so a node started again rejoins as itself),
its own free port and cluster-bus port, the same users and passwords as every other node
(so `url_for(role)` logs in anywhere), and a child that dies with its parent. start()
builds the cluster with plain admin commands, as `redis-cli --cluster create` would:
the slots split evenly over the primaries, every node introduced to the first, each
replica attached to a primary, and it returns once every node agrees on the slot map.

The options chosen for a cluster that keeps serving while one shard fails over:
`cluster-require-full-coverage no` (the other shards answer while a slot has no live
primary), `cluster-replica-validity-factor 0` (a replica always takes over from a dead
primary, however long it was disconnected: the leader republishes every book anyway)
and `repl-diskless-sync-delay 0` (a replica syncs at once instead of waiting for others).
Sharded pub/sub keeps working on a shard while the cluster is down (the default,
said explicitly); reads do not (they would serve values the cluster may have moved).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import redis

from marketdata.processes import POLL_INTERVAL
from marketdata.slots import SLOTS, key_slot
from marketdata.supervisor import acl
from marketdata.supervisor.ports import describe_holder, free_port, is_free
from marketdata.supervisor.redis_server import (
    RedisServer,
    RedisServerError,
    new_passwords,
    server_binary,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

START_TIMEOUT = 30.0  # seconds start() gives the cluster to agree on its slot map


@dataclass(frozen=True, slots=True)
class NodeLine:
    """One line of CLUSTER NODES: who a node is, as the node asked sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None  # the primary of a replica
    connected: bool
    slots: tuple[tuple[int, int], ...]  # inclusive ranges a primary serves

    @property
    def role(self) -> str:
        return "primary" if "master" in self.flags else "replica" if "slave" in self.flags else "unknown"

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def parse_nodes(text: str) -> list[NodeLine]:
    """The nodes of a CLUSTER NODES reply (`id ip:port@bus[,host] flags primary ping pong epoch link slot...`).

    Slot migration entries (`[slot->-id]`) are left out: they are not served yet.
    """
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]
        ranges = []
        for item in fields[8:]:
            if item.startswith("["):
                continue
            low, _, high = item.partition("-")
            ranges.append((int(low), int(high or low)))
        nodes.append(NodeLine(
            node_id=fields[0], port=int(address.rsplit(":", 1)[1]), flags=frozenset(fields[2].split(",")),
            primary_id=None if fields[3] == "-" else fields[3], connected=fields[7] == "connected",
            slots=tuple(ranges),
        ))  # fmt: skip
    return nodes


def parse_info(text: str) -> dict[str, str]:
    """The fields of a CLUSTER INFO reply (`name:value` lines)."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and not name.startswith("#"):
            out[name] = value
    return out


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """The slots split evenly over `primaries`: inclusive (first, last) per primary."""
    return [(i * SLOTS // primaries, (i + 1) * SLOTS // primaries - 1) for i in range(primaries)]


def slot_owners(nodes: list[NodeLine]) -> dict[tuple[int, int], int]:
    """Each served slot range and the port of its primary, as one node sees them."""
    return {r: n.port for n in nodes if n.role == "primary" for r in n.slots}


def covers_all(owners: Mapping[tuple[int, int], int]) -> bool:
    """True when the ranges serve every slot exactly once."""
    return sum(high - low + 1 for low, high in owners) == SLOTS


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """A node as the cluster's owner sees it: its process, and its role read live from the cluster."""

    port: int
    pid: int | None
    alive: bool
    role: str  # "primary", "replica", or "unknown" when no live node could tell


class RedisClusterServer:
    """`primaries` primaries with `replicas` replicas each, on 127.0.0.1, the users of the
    roles on every node (see the module docstring). Use as a context manager, or call
    start() and close(). `kill(port)` crashes one node, `restart(port)` brings it back on
    its port and folder (it rejoins, as a replica of whoever took its slots)."""

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout: float = 2.0,
        *,
        passwords: Mapping[str, str] | None = None,
        prefix: str = "md",
        host: str = "127.0.0.1",
        binary: str | None = None,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError(f"a cluster needs at least one primary and no negative replicas, not {primaries}+{replicas}")
        self.host = host
        self.prefix = prefix
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout = node_timeout
        self.binary = binary or server_binary()
        self._passwords = {**new_passwords(), **(passwords or {})}
        self._nodes: dict[int, RedisServer] = {}
        for _ in range(primaries * (1 + replicas)):
            port, bus = self._two_ports()
            self._nodes[port] = RedisServer(port, host, self.binary, passwords=self._passwords, prefix=prefix,
                                            extra_args=self._cluster_args(bus))

    def _two_ports(self) -> tuple[int, int]:
        taken = {p for node in self._nodes.values() for p in (node.port, int(node.extra_args[-1]))}
        found: list[int] = []
        while len(found) < 2:
            port = free_port(self.host)
            if port not in taken and port not in found:
                found.append(port)
        return found[0], found[1]

    def _cluster_args(self, bus_port: int) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # in the node's folder (--dir)
            "--cluster-node-timeout", str(round(self.node_timeout * 1000)),
            "--cluster-require-full-coverage", "no",
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-pubsubshard-when-down", "yes",
            "--repl-diskless-sync-delay", "0",
            "--cluster-port", str(bus_port),  # last: _two_ports reads it back
        ]  # fmt: skip

    # -- who and where -----------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        """Every node's port, the primaries first as start() made them."""
        return list(self._nodes)

    def password(self, user: str) -> str:
        return self._passwords[user]

    def _node_url(self, port: int, user: str = acl.ADMIN) -> str:
        return self._nodes[port].url_for(user)

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis.from_url(self._node_url(port), decode_responses=True, socket_timeout=2.0,
                                    socket_connect_timeout=0.5)

    def _ask(self, port: int, *command: str | int) -> str:
        """One admin command on one node, its raw reply (no redis-py parsing)."""
        client = self._client(port)
        try:
            return client.execute_command(*command)  # type: ignore[no-any-return]
        finally:
            client.close()

    def _client_info(self, port: int) -> dict[str, object]:
        """INFO replication of one node (redis-py parses INFO itself)."""
        client = self._client(port)
        try:
            return client.info("replication")  # type: ignore[no-any-return]
        finally:
            client.close()

    def _view(self, port: int) -> list[NodeLine]:
        return parse_nodes(self._ask(port, "CLUSTER", "NODES"))

    def _live_view(self) -> list[NodeLine]:
        """The cluster as the first live node that answers sees it."""
        for port, node in self._nodes.items():
            if node.alive:
                try:
                    return self._view(port)
                except redis.RedisError:
                    continue
        raise RedisServerError("no node of the cluster answers")

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node: its port, pid, whether it runs, and its role as the cluster says now."""
        try:
            roles = {n.port: n.role for n in self._live_view()}
        except RedisServerError:
            roles = {}
        return [ClusterNode(port, node.pid, node.alive, roles.get(port, "unknown")) for port, node in self._nodes.items()]

    def dead_ports(self) -> list[int]:
        """The ports of the nodes whose process is not running (no network: cheap to poll)."""
        return [port for port, node in self._nodes.items() if not node.alive]

    def serves_slots(self, port: int) -> bool:
        """True while a live node sees `port` as a primary serving slots (a dead primary not yet replaced)."""
        return any(n.port == port and n.role == "primary" and n.slots for n in self._live_view())

    def _live_primary(self) -> int:
        """The first node (in start order) that is alive and serves slots as a primary, else any live one."""
        serving = {n.port for n in self._live_view() if n.role == "primary" and n.slots and not n.failing}
        live = [port for port, node in self._nodes.items() if node.alive]
        return next((port for port in live if port in serving), live[0])

    def url_for(self, user: str) -> str:
        """The URL `user` logs in with at a live primary; a cluster client finds the other nodes from it."""
        return self._node_url(self._live_primary(), user)

    @property
    def url(self) -> str:
        """The admin's URL (a live primary), for the owner of the cluster only."""
        return self.url_for(acl.ADMIN)

    def primary_for(self, key: str) -> int:
        """The port of the primary serving `key`'s slot, as a live node sees it now."""
        slot = key_slot(key)
        for (low, high), port in slot_owners(self._live_view()).items():
            if low <= slot <= high:
                return port
        raise RedisServerError(f"no primary serves slot {slot} (of {key!r})")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> RedisClusterServer:
        began = time.monotonic()
        try:
            for port, node in self._nodes.items():
                self._start_node(port, node)
            self._create(timeout)
        except BaseException:
            self.close()
            raise
        log.info("redis cluster of %d primaries and %d replicas ready in %.1f s on ports %s", self.primaries,
                 self.primaries * self.replicas, time.monotonic() - began, ", ".join(map(str, self._nodes)))
        return self

    def _start_node(self, port: int, node: RedisServer) -> None:
        if not is_free(port, self.host):
            raise RedisServerError(f"cluster node port {port} is {describe_holder(port)}")
        try:
            node.start()
        except RedisServerError as exc:
            if "Bad directive" in str(exc) and "cluster" in str(exc):
                raise RedisServerError(f"{self.binary} has no cluster support (it refused the cluster options)") from None
            raise
        # A replica logs in to its primary as the admin: set over the admin's connection,
        # never on the command line, where every user of the machine could read it.
        self._ask(port, "CONFIG", "SET", "masteruser", acl.ADMIN, "masterauth", self._passwords[acl.ADMIN])

    def _create(self, timeout: float) -> None:
        """Slots to the primaries, every node introduced, replicas attached; wait until all agree."""
        deadline = time.monotonic() + timeout
        ports = list(self._nodes)
        primaries, replicas = ports[: self.primaries], ports[self.primaries :]
        for epoch, (port, (low, high)) in enumerate(zip(primaries, slot_ranges(self.primaries), strict=True), 1):
            # distinct config epochs up front: no collision for the cluster to settle first
            self._ask(port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
            self._ask(port, "CLUSTER", "ADDSLOTSRANGE", low, high)
        first = ports[0]
        for port in ports[1:]:
            self._ask(first, "CLUSTER", "MEET", self.host, port, self._bus_port(port))
        self._wait(deadline, lambda: all(self._knows_all(p) for p in ports), "every node to know every other")
        ids = {port: self._ask(port, "CLUSTER", "MYID") for port in primaries}
        for i, port in enumerate(replicas):
            self._ask(port, "CLUSTER", "REPLICATE", ids[primaries[i % self.primaries]])
        self._wait(deadline, self._healthy, "every node to agree on the slot map")

    def _bus_port(self, port: int) -> int:
        return int(self._nodes[port].extra_args[-1])

    def _knows_all(self, port: int) -> bool:
        view = self._view(port)
        return len(view) == len(self._nodes) and not any(n.failing for n in view)

    def _wait(self, deadline: float, ready: Callable[[], bool], what: str) -> None:
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            for node in self._nodes.values():
                if not node.alive and node.pid is not None:
                    raise RedisServerError(f"a cluster node died while waiting for {what}")
            if time.monotonic() > deadline:
                raise RedisServerError(f"the redis cluster did not get ready: timed out waiting for {what}")
            time.sleep(POLL_INTERVAL)

    def _healthy(self) -> bool:
        """cluster_state ok on every live node, all seeing the same primaries serve every slot,
        each a live node, and every live replica attached to its primary."""
        live = [port for port, node in self._nodes.items() if node.alive]
        maps = []
        for port in live:
            if parse_info(self._ask(port, "CLUSTER", "INFO")).get("cluster_state") != "ok":
                return False
            view = self._view(port)
            me = next(n for n in view if "myself" in n.flags)
            if me.role == "replica":
                if self._client_info(port).get("master_link_status") != "up":
                    return False
            elif me.role != "primary":
                return False
            maps.append(slot_owners(view))
        first = maps[0] if maps else {}
        return covers_all(first) and all(m == first for m in maps) and all(p in live for p in first.values())

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Return once the cluster is whole again (see _healthy); RedisServerError after `timeout`."""
        self._wait(time.monotonic() + timeout, self._healthy, "every slot to be served by a live primary")

    def kill(self, port: int) -> None:
        """kill -9 one node, as a crash (its folder stays for restart())."""
        self._nodes[port].kill()

    def restart(self, port: int) -> None:
        """Start a killed node again on its port and folder: it rejoins with its nodes.conf,
        as a replica of the node that took its slots (wait_healthy() waits for that)."""
        node = self._nodes[port]
        if node.alive:
            raise RedisServerError(f"cluster node {port} is running; kill it first")
        self._start_node(port, node)

    def flush(self) -> None:
        """FLUSHALL on every live primary (the replicas follow)."""
        for line in self._live_view():
            if line.role == "primary" and self._nodes[line.port].alive:
                self._ask(line.port, "FLUSHALL")

    def close(self) -> None:
        """Stop every node and remove their folders."""
        for node in self._nodes.values():
            node.close()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
