"""The Redis that `marketdata up` runs its children against: one embedded server, an
embedded Redis Cluster (`--redis-cluster N`), or the user's own (`--redis-url`).

It gives each role its URL (for the child's environment, never its command line), says
whether the children must speak cluster (`--redis-cluster` on their command lines),
writes the banner's Redis lines (the only password in them is the read-only `inspect`
user's), brings back an embedded node that dies, and stops the embedded Redis last.

A dead cluster primary is not started again at once: it would come back empty and still
owning its slots. It is started once its replica has taken over (after the cluster node
timeout), and rejoins as that one's replica; a dead replica comes back at once.
"""

from __future__ import annotations

import logging
import os
import time

from marketdata.logs import redact
from marketdata.settings import UpSettings
from marketdata.supervisor.acl import ADMIN, ROLES
from marketdata.supervisor.redis_cluster import RedisClusterServer
from marketdata.supervisor.redis_server import RedisServer, RedisServerError

log = logging.getLogger(__name__)

CHANNEL = "md:book:BTC-USD"  # what the banner's inspect line subscribes to
CLUSTER_CHANNEL = "md:book:{BTC-USD}"
# A dead primary whose slots nobody took over within this many node timeouts (its replica
# is dead too) is started again anyway: an empty primary serves better than none.
TAKEOVER_PATIENCE = 5


class UpRedis:
    """One of the three Redis setups of `up` (see the module docstring)."""

    def __init__(self, settings: UpSettings) -> None:
        self.external = settings.redis_url
        self.cluster = settings.redis_cluster > 0
        self.server: RedisServer | None = None
        self.nodes: RedisClusterServer | None = None
        self._dead_since: dict[int, float] = {}
        if self.external is None:
            if self.cluster:
                self.nodes = RedisClusterServer(settings.redis_cluster, 1)
            else:
                self.server = RedisServer()

    def start(self) -> UpRedis:
        """Start the embedded server or cluster (from the main thread: see processes.py)."""
        if self.nodes is not None:
            self.nodes.start()
        elif self.server is not None:
            self.server.start()
        return self

    @property
    def url(self) -> str:
        """The admin's URL of the embedded Redis, or the user's own."""
        if self.external is not None:
            return self.external
        return self.url_for(ADMIN)

    def url_for(self, role: str) -> str:
        """The URL a role logs in with (the user's own URL for every role when it is theirs)."""
        if self.external is not None:
            return self.external  # its users are the owner's business
        if self.nodes is not None:
            return self.nodes.url_for(role)
        assert self.server is not None
        return self.server.url_for(role)

    def child_args(self) -> list[str]:
        """What the ingestors and bridges add to their command lines."""
        return ["--redis-cluster"] if self.cluster else []

    def banner(self) -> list[str]:
        """The banner's Redis lines: where it is, and a redis-cli line to watch a book."""
        if self.nodes is not None:
            return self._cluster_banner(self.nodes)
        if self.server is not None:
            return self._server_banner(self.server)
        assert self.external is not None
        shown = redact(self.external)
        channel, c = (CLUSTER_CHANNEL, "-c ") if self.cluster else (CHANNEL, "")
        verb = "ssubscribe" if self.cluster else "subscribe"
        note = "   (*** is your password)" if shown != self.external else ""
        return [f"  redis      {shown}" + ("   (a Redis Cluster)" if self.cluster else ""),
                f"  inspect    redis-cli {c}-u {shown} {verb} {channel}{note}"]  # fmt: skip

    @staticmethod
    def _inspect(binary: str, password: str, command: str) -> list[str]:
        # REDISCLI_AUTH keeps even this password off redis-cli's command line (and its warning away)
        login = f"REDISCLI_AUTH={password}"
        lines = [f"  inspect    {login} redis-cli {command}"]
        cli = os.path.join(os.path.dirname(binary), "valkey-cli")
        if os.access(cli, os.X_OK):
            lines.append(f"             (no redis-cli? {login} {cli} {command})")
        return lines

    def _server_banner(self, server: RedisServer) -> list[str]:
        return [f"  redis      redis://{server.host}:{server.port}/0   (embedded; users {', '.join(ROLES)}, the default user off)",
                *self._inspect(server.binary, server.password("inspect"),
                               f"-p {server.port} --user inspect subscribe {CHANNEL}")]  # fmt: skip

    def _cluster_banner(self, cluster: RedisClusterServer) -> list[str]:
        nodes = cluster.nodes
        users = f"embedded; users {', '.join(ROLES)}, the default user off"
        lines = [f"  redis      a cluster of {cluster.primaries} primaries with a replica each ({users}):"]
        lines += [f"             redis://{cluster.host}:{n.port}/0   {n.role}" for n in nodes]
        command = f"-c -p {cluster.primary_for(CLUSTER_CHANNEL)} --user inspect ssubscribe {CLUSTER_CHANNEL}"
        return lines + self._inspect(cluster.binary, cluster.password("inspect"), command)

    def heal(self) -> None:
        """Start again an embedded server or node that died (a primary once it was replaced)."""
        if self.server is not None and not self.server.alive:
            log.error("embedded redis died; restarting it on port %d", self.server.port)
            self.server.restart()
        if self.nodes is not None:
            self._heal_cluster(self.nodes)

    def _heal_cluster(self, cluster: RedisClusterServer) -> None:
        dead = cluster.dead_ports()
        now = time.monotonic()
        for port in list(self._dead_since):
            if port not in dead:
                del self._dead_since[port]
        for port in dead:
            since = self._dead_since.setdefault(port, now)
            waited = now - since
            if since == now:
                log.error("redis cluster node %d died", port)
            try:
                serving = cluster.serves_slots(port)
            except RedisServerError:  # no live node to ask: start it, whatever it was
                serving = False
            if serving and waited < TAKEOVER_PATIENCE * cluster.node_timeout:
                continue  # its replica takes over first; it rejoins as that one's replica
            log.error("restarting redis cluster node %d after %.1f s", port, waited)
            try:
                cluster.restart(port)
            except RedisServerError as exc:
                log.error("redis cluster node %d did not start again: %s", port, exc)
                continue
            del self._dead_since[port]

    def close(self) -> None:
        if self.nodes is not None:
            self.nodes.close()
        if self.server is not None:
            self.server.close()
