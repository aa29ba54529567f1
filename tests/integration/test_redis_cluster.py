"""The embedded Redis Cluster: built whole, the users of the roles on every node, a dead
primary replaced by its replica, a restarted node back as a replica, nothing left behind."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from marketdata.slots import SLOTS, key_slot
from marketdata.supervisor.acl import ROLES
from marketdata.supervisor.ports import is_free
from marketdata.supervisor.redis_cluster import RedisClusterServer, parse_nodes
from marketdata.supervisor.redis_server import RedisServerError
from tests.support import wait_for


def channel_on(cluster: RedisClusterServer, port: int) -> str:
    """A book channel whose slot the primary on `port` serves."""
    return next(f"md:book:{{X{i}}}" for i in range(10_000) if cluster.primary_for(f"md:book:{{X{i}}}") == port)


def roles(cluster: RedisClusterServer) -> dict[int, str]:
    return {n.port: n.role for n in cluster.nodes}


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterServer]:
    """A cluster of the test's own, free to kill."""
    with RedisClusterServer(3, 1, node_timeout=2.0) as cluster:
        yield cluster


def test_three_primaries_with_a_replica_each_serve_every_slot(redis_cluster: RedisClusterServer) -> None:
    nodes = redis_cluster.nodes
    assert [n.role for n in nodes].count("primary") == 3
    assert [n.role for n in nodes].count("replica") == 3
    assert all(n.alive and n.pid for n in nodes)
    client = redis.Redis.from_url(redis_cluster.url, decode_responses=True)
    slots = client.execute_command("CLUSTER", "SLOTS")
    assert sum(end - start + 1 for start, end, *_ in slots) == SLOTS
    # a replica for each primary (CLUSTER SLOTS lists a replica only once it holds data)
    view = parse_nodes(client.execute_command("CLUSTER", "NODES"))
    ids = {n.node_id: n.port for n in view if n.role == "primary"}
    assert sorted(ids[n.primary_id] for n in view if n.role == "replica" and n.primary_id) == sorted(ids.values())
    # every primary serves a third of the slots, and primary_for agrees with the server
    client.close()
    owners = {primary[1] for _, _, primary, *_ in slots}
    assert owners == {n.port for n in nodes if n.role == "primary"}
    for key in ("md:book:{BTC-USD}", "md:book:{ETH-USD}", "md:instruments", "md:{leader}"):
        owner = redis.Redis(port=redis_cluster.primary_for(key), username="admin", password=redis_cluster.password("admin"))
        assert owner.execute_command("CLUSTER", "KEYSLOT", key) == key_slot(key)
        owner.set(key, "here")  # no MOVED: this node serves the key's slot
        owner.close()
    redis_cluster.flush()


def test_every_node_has_the_users_of_the_roles_and_no_default_user(redis_cluster: RedisClusterServer) -> None:
    for node in redis_cluster.nodes:
        # no retries (redis-py retries a refused login for seconds); RESP2: no HELLO to be refused first
        nobody = redis.Redis(port=node.port, protocol=2, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            nobody.get("md:instruments")
        nobody.close()
        for role in ROLES:
            client = redis.Redis(port=node.port, username=role, password=redis_cluster.password(role), decode_responses=True)
            assert client.ping()  # logged in
            client.close()


def test_ingest_spublishes_and_bridge_ssubscribes_on_every_shard(redis_cluster: RedisClusterServer) -> None:
    primaries = [n.port for n in redis_cluster.nodes if n.role == "primary"]
    channels = [channel_on(redis_cluster, port) for port in primaries]
    bridge = RedisCluster.from_url(redis_cluster.url_for("bridge"))
    ingest = RedisCluster.from_url(redis_cluster.url_for("ingest"))
    pubsub = bridge.pubsub()
    try:
        for channel in channels:
            pubsub.ssubscribe(channel)
        got: set[str] = set()

        def all_arrived() -> bool:
            for channel in channels:
                if channel not in got:
                    ingest.spublish(channel, "book")
            for channel in channels:
                message = pubsub.get_sharded_message(target_node=bridge.get_node_from_key(channel), timeout=0.05)
                if message and message["type"] == "smessage":
                    got.add(message["channel"].decode())
            return got == set(channels)

        wait_for(all_arrived, 10.0, what="a message on a channel of each shard")
        # the bridge may not publish, the ingestor may not write outside the prefix
        with pytest.raises(redis.exceptions.NoPermissionError):
            bridge.spublish(channels[0], "forged")
        with pytest.raises(redis.exceptions.NoPermissionError):
            ingest.set("other:key", "x")
    finally:
        pubsub.close()
        bridge.close()
        ingest.close()


def test_a_killed_primary_is_replaced_by_its_replica_and_rejoins_as_a_replica(own_cluster: RedisClusterServer) -> None:
    key = "md:book:{BTC-USD}"
    dead = own_cluster.primary_for(key)
    admin = redis.Redis(port=dead, username="admin", password=own_cluster.password("admin"))
    admin.set(key, "book")
    assert admin.wait(1, 2000) == 1  # on the replica before the crash
    admin.close()
    before = roles(own_cluster)
    own_cluster.kill(dead)
    began = time.monotonic()
    successor = wait_for(lambda: next((p for p, r in roles(own_cluster).items() if p != dead and before[p] == "replica"
                                       and r == "primary"), None), 15.0, 0.1, "the dead primary's replica to take over")
    took = time.monotonic() - began
    assert took < 10.0, f"failover took {took:.1f} s"
    own_cluster.wait_healthy(10.0)
    assert own_cluster.primary_for(key) == successor
    client = redis.Redis(port=successor, username="admin", password=own_cluster.password("admin"))
    assert client.get(key) == b"book"
    client.close()
    assert f":{dead}/" not in own_cluster.url_for("bridge")  # the URL names a live primary

    own_cluster.restart(dead)
    own_cluster.wait_healthy(15.0)
    after = {n.port: n for n in own_cluster.nodes}
    assert after[dead].alive and after[dead].role == "replica"
    assert after[successor].role == "primary"
    assert [n.role for n in after.values()].count("primary") == 3


def test_close_leaves_no_process_and_frees_every_port(own_cluster: RedisClusterServer) -> None:
    pids = [n.pid for n in own_cluster.nodes]
    ports = [p for node in own_cluster._nodes.values() for p in (node.port, int(node.extra_args[-1]))]
    assert len(set(ports)) == 12
    own_cluster.close()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):  # stopped and reaped
            os.kill(pid, 0)
    assert all(is_free(p) for p in ports)


def test_a_taken_port_is_one_clear_error() -> None:
    cluster = RedisClusterServer(3, 1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", cluster.ports[2]))
        holder.listen()
        with pytest.raises(RedisServerError, match=rf"port {cluster.ports[2]} is in use by pid {os.getpid()}"):
            cluster.start()
    assert not any(n.alive for n in cluster._nodes.values())  # the nodes it had started are stopped


def test_a_binary_without_cluster_support_is_one_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "old-redis-server"  # refuses the cluster options as a build without cluster support does
    fake.write_text("#!/bin/sh\necho \"*** FATAL CONFIG FILE ERROR\"\necho \">>> 'cluster-enabled \\\"yes\\\"'\"\n"
                    "echo 'Bad directive or wrong number of arguments'\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(RedisServerError, match="has no cluster support"):
        RedisClusterServer(3, 1, binary=str(fake)).start()
