"""The dashboard on Redis Cluster, in a real headless Chromium: verified books of every shard, and a primary's death.

One pipeline on a 3-primary cluster (each primary with a replica) with a universe of
200 instruments serves the module. The page shows one instrument of each shard; the
primary of one shard is killed with -9: its panel gets fresh verified books again
once the replica is promoted (within 15 s), and the other panels keep moving meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from marketdata.schema import Keys
from marketdata.supervisor.redis_cluster import RedisClusterServer
from tests.e2e.browser import Dash, Pipeline
from tests.support import wait_for

pytestmark = pytest.mark.browser

KEYS = Keys(cluster=True)
HEAL = 15.0  # seconds from the kill by which the dead shard's panel has fresh verified books


@pytest.fixture(scope="module")
def pipeline(chromium: str) -> Iterator[Pipeline]:
    with Pipeline(rate=20.0, seed=5, sim_args=["--universe", "200"], redis_cluster=3) as running:
        yield running


def one_per_shard(pipeline: Pipeline) -> dict[int, str]:
    """A busy instrument of each shard (the eight named ones live on all three): primary port -> id."""
    cluster = pipeline.redis
    assert isinstance(cluster, RedisClusterServer)
    shards: dict[int, str] = {}
    for inst in pipeline.instruments()[:8]:
        shards.setdefault(cluster.primary_for(KEYS.book(inst["id"])), inst["id"])
    assert len(shards) == 3, f"the named instruments live on {len(shards)} shards, not 3"
    return shards


def test_panels_of_every_shard_show_live_verified_books(dash: Dash, pipeline: Pipeline) -> None:
    ids = list(one_per_shard(pipeline).values())
    dash.open("?i=" + ",".join(ids))
    dash.wait_live(ids, "live verified panels of every shard")
    dash.wait_progress(dash.seqs(ids), "every shard's books to move on")
    assert not dash.errors, dash.errors


def test_a_dead_primary_heals_its_panel_while_the_others_keep_moving(dash: Dash, pipeline: Pipeline) -> None:
    shards = one_per_shard(pipeline)
    ids = list(shards.values())
    dash.open("?i=" + ",".join(ids))
    dash.wait_live(ids)
    victim_port, victim = next(iter(shards.items()))
    others = [i for i in ids if i != victim]
    cluster = pipeline.redis
    assert isinstance(cluster, RedisClusterServer)
    before = dash.seqs(ids)
    killed = time.monotonic()
    cluster.kill(victim_port)
    try:
        dash.wait_progress({i: before[i] for i in others}, "the other shards' panels to move on", timeout=3_000)
        # Books of the dead shard can flow again only once its replica serves the slots: progress from then on is the heal.
        wait_for(lambda: not cluster.serves_slots(victim_port), timeout=HEAL, what="the replica to take the dead primary's slots")
        after = dash.seqs([victim])
        left = HEAL - (time.monotonic() - killed)
        dash.wait_progress(after, f"{victim}'s panel to get fresh books after its primary died", timeout=int(left * 1000))
        dash.wait_progress({i: dash.seqs([i])[i] for i in others}, "the other shards' panels still moving", timeout=3_000)
        dash.wait_live(ids, "every panel live and verified again")
        assert not dash.errors, dash.errors
    finally:
        cluster.restart(victim_port)
        cluster.wait_healthy(30)
