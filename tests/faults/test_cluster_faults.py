"""Redis Cluster under kill -9: a primary dies under load, its replica is promoted, nobody is left without books.

The whole system runs on a 3-primary cluster (each primary with a replica) and a
universe of 200 instruments; the sockets follow the eight named instruments, which live
on all three shards. The fault suite's engine (bench/faults.py, bench/fault_shard.py)
checks every message on every socket and judges each against the deadlines: sockets of
the dead shard's instruments get fresh verified books within 15 s, the others see nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fault_shard import HIT, LEASE_SHARD, SHARD_HEAL, SPARED
from bench.faults import Config, Suite
from tests.faults.conftest import assert_clean

pytestmark = pytest.mark.faults

SOCKETS = 48


@pytest.fixture(scope="module")
def cluster_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    logs: Path = tmp_path_factory.mktemp("cluster-faults")
    config = Config(rounds=1, sockets=SOCKETS, instruments=8, seed=11, logs=logs, redis_cluster=3, universe=200)
    with Suite(config) as running:
        yield running


def test_the_sockets_follow_instruments_on_every_shard(cluster_suite: Suite) -> None:
    shards = {cluster_suite.cluster.shard_of(i) for i in cluster_suite.followed}
    assert len(shards) == 3, f"the followed instruments live on {len(shards)} shards"


@pytest.mark.parametrize("lease", [False, True], ids=["a-shard-without-the-lease", "the-shard-of-the-lease-and-heartbeat"])
def test_kill_9_of_a_primary_heals_its_shard_within_15_s_and_the_others_never_stall(cluster_suite: Suite, lease: bool) -> None:
    result = cluster_suite.run_fault("primary")  # in turn: a shard without the lease first, then the lease's
    assert (LEASE_SHARD in result.victim) == lease, result.victim
    turn = result.victim
    assert_clean(result, cluster_suite.cluster.logs)  # deadlines judged socket by socket: 15 s for its shard, nothing elsewhere
    hit, spared = result.heal_s.get(HIT, []), result.heal_s.get(SPARED, [])
    assert hit and spared, f"{turn}: both groups of sockets were measured ({len(hit)} on its shard, {len(spared)} elsewhere)"
    assert max(hit) < SHARD_HEAL and len(hit) + len(spared) == SOCKETS
