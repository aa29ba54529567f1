"""`marketdata up --redis-cluster 3` as a user runs it: an embedded cluster of three primaries
with a replica each, named in the banner with a redis-cli -c line, the ingestors and bridges
told `--redis-cluster` (their URL only in their environment), a dead node brought back as a
replica, and Ctrl-C leaving no process and no port behind."""

from __future__ import annotations

import os
import re
import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psutil
import pytest
import redis

from bridge.verify import verify_book
from marketdata.schema import decode_instruments
from marketdata.slots import key_slot
from marketdata.supervisor.redis_cluster import parse_nodes
from tests.e2e.test_up import Up, _assert_nothing_left, _children
from tests.support import wait_for

pytestmark = pytest.mark.slow

NODE_LINE = re.compile(r"^\s+redis://127\.0\.0\.1:(\d+)/0\s+(primary|replica)$", re.MULTILINE)
INSPECT_LINE = re.compile(r"REDISCLI_AUTH=(\S+) redis-cli -c -p (\d+) --user inspect ssubscribe md:book:\{BTC-USD\}")


@pytest.fixture
def start_cluster_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """Start `marketdata up --redis-cluster 3 --universe 200` and wait for its banner; stopped after the test."""
    started: list[Up] = []

    def start(*extra: str) -> Up:
        running = Up(1, tmp_path / f"up-{len(started)}.log", extra=("--redis-cluster", "3", "--universe", "200", *extra))
        started.append(running)
        wait_for(lambda: "Ctrl-C stops everything" in running.banner or running.proc.poll() is not None,
                 timeout=60, what="the `marketdata up --redis-cluster 3` banner")
        assert running.proc.poll() is None, f"marketdata up exited early:\n{running.output}"
        return running

    yield start
    for running in started:
        running.stop()


def _nodes(up: Up) -> dict[int, str]:
    found = {int(port): role for port, role in NODE_LINE.findall(up.banner)}
    assert found, f"no cluster nodes in the banner:\n{up.banner}"
    return found


def _cluster_view(url: str) -> dict[int, str]:
    """Each node's role as the cluster sees it, asked as the `bridge` user (CLUSTER NODES is among its rights)."""
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=2)
    try:
        return {n.port: n.role for n in parse_nodes(client.execute_command("CLUSTER", "NODES"))}
    finally:
        client.close()


def test_up_starts_a_cluster_names_its_nodes_and_ctrl_c_leaves_nothing(start_cluster_up: Callable[..., Up]) -> None:
    up = start_cluster_up()
    nodes = _nodes(up)
    assert sorted(nodes.values()) == ["primary"] * 3 + ["replica"] * 3, up.banner
    match = INSPECT_LINE.search(up.banner)
    assert match, f"no redis-cli -c line with the inspect user in the banner:\n{up.banner}"
    password, port = match.group(1), int(match.group(2))
    assert nodes[port] == "primary"

    # the inspect line works as written: that node serves the channel's slot and lets inspect SSUBSCRIBE
    inspect = redis.Redis(port=port, username="inspect", password=password, socket_timeout=5)
    pubsub = inspect.pubsub()
    pubsub.ssubscribe("md:book:{BTC-USD}")
    reply = wait_for(lambda: pubsub.get_sharded_message(timeout=0.1), timeout=10, interval=0, what="the ssubscribe reply")
    assert reply["type"] == "ssubscribe"
    pubsub.close()
    inspect.close()

    roles = _children(up)
    assert len(roles["redis"]) == 6
    for role in ("ingest", "bridge"):
        for child in roles[role]:
            cmdline = child.cmdline()
            assert "--redis-cluster" in cmdline, cmdline
            assert not re.search(r"rediss?://[^ ]*:[^ ]*@", " ".join(cmdline)), f"a URL with credentials in argv: {cmdline}"
            assert child.environ()["MD_REDIS_URL"].startswith(f"redis://{role}:")
    assert "--redis-cluster" not in roles["sim"][0].cmdline()

    children = [p for group in roles.values() for p in group]
    bus_ports = [c.laddr.port for p in roles["redis"] for c in p.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port not in nodes]  # fmt: skip
    os.killpg(up.proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    assert up.proc.wait(30) == 0, up.output
    _assert_nothing_left(children, [up.port, up.sim_port, *nodes, *bus_ports])


def test_up_brings_a_killed_primary_back_as_a_replica(start_cluster_up: Callable[..., Up]) -> None:
    up = start_cluster_up()
    bridge_url = _children(up)["bridge"][0].environ()["MD_REDIS_URL"]
    nodes = _nodes(up)
    dead = next(port for port, role in nodes.items() if role == "primary")
    victim = next(p for p in _children(up)["redis"] if f":{dead}" in _cmdline(p))
    victim.kill()
    ask = next(port for port in nodes if port != dead)

    def rejoined() -> bool:
        try:
            view = _cluster_view(bridge_url.replace(f":{dead}/", f":{ask}/"))
        except redis.ConnectionError:
            return False
        return view.get(dead) == "replica" and list(view.values()).count("primary") == 3

    wait_for(rejoined, timeout=30, interval=0.2, what=f"node {dead} back as a replica")
    assert f"restarting redis cluster node {dead}" in up.log
    assert any(p.pid != victim.pid and f":{dead}" in _cmdline(p) for p in _children(up)["redis"])


def _cmdline(process: psutil.Process) -> str:
    """Its command line; "" once it is gone. A node's own short-lived forks (a replica's sync) count among the
    descendants of `up` and may end between the listing and this question."""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


def _book(port: int, instrument: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/book/{instrument}", timeout=2) as response:
            return orjson.loads(response.read())  # type: ignore[no-any-return]
    except OSError:
        return None


def test_up_serves_verified_books_of_instruments_on_every_shard(start_cluster_up: Callable[..., Up]) -> None:
    up = start_cluster_up()
    bridge_url = _children(up)["bridge"][0].environ()["MD_REDIS_URL"]
    client = redis.Redis.from_url(bridge_url, decode_responses=True, socket_timeout=2)
    slots = client.execute_command("CLUSTER", "SLOTS")
    client.close()
    shards = [(start, end) for start, end, *_ in slots]
    assert len(shards) == 3
    instruments = wait_for(lambda: (_book(up.port, "BTC-USD") or {}) and _instruments(up.port), timeout=30,
                           what="the instrument list")
    for start, end in shards:
        # an instrument whose book lives on this shard (its id is the hash tag)
        instrument = next(i for i in instruments if start <= key_slot(f"md:book:{{{i}}}") <= end)
        book = wait_for(lambda i=instrument: _book(up.port, i), timeout=20, what=f"a book of {instrument}")
        assert book["instrument"] == instrument and book["type"] == "book"
        with urllib.request.urlopen(f"http://127.0.0.1:{up.port}/api/book/{instrument}", timeout=2) as response:
            raw = response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{up.port}/api/instruments", timeout=2) as response:
            listed = {i.id: i for i in decode_instruments(response.read())}
        verify_book(raw, instrument, listed[instrument])  # raises Rejected unless its checksum matches its levels


def _instruments(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/instruments", timeout=2) as response:
        listed = orjson.loads(response.read())
    return [item["id"] if isinstance(item, dict) else item for item in listed]
