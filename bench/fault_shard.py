"""The fault suite's Redis Cluster fault: kill -9 of one primary, each shard in turn.

The cluster promotes the dead primary's replica once the node timeout has passed
(bench.fault_cluster.CLUSTER_NODE_TIMEOUT); the bridges resubscribe that shard's
channels on the new primary and heal them from their last values, and the ingestor
writes that shard's books there again. What each socket must see: fresh books of every
instrument it follows within SHARD_HEAL of the kill when one of them lives on the dead
shard (a stale flash allowed: the shard may hold the lease and the heartbeat), and,
for a socket whose instruments all live on other shards, nothing at all: no stale
signal, fresh books within 2 s and never a wait of more than SPARED_GAP for the next,
as if nothing had happened. The killed node is
started again after the heal; it rejoins as a replica of its promoted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.fault_checks import ALLOWED, FORBIDDEN, Expect, Struck
from marketdata.processes import ProcessError

if TYPE_CHECKING:
    from bench.fault_sockets import SocketPlan
    from bench.faults import Suite

SHARD_HEAL = 15.0  # seconds from the kill by which the dead shard's sockets have fresh books
SPARED_GAP = 1.0  # seconds the other shards' sockets may wait for a book of one instrument (they get ~20 a second)
HIT, SPARED = "its shard's sockets", "the other shards' sockets"
LEASE_SHARD = "the lease's shard"  # in the victim's name when it held `md:{leader}` and the heartbeat


def strike_primary(suite: Suite) -> Struck:
    cluster = suite.cluster
    shards = sorted({cluster.shard_of(i) for i in suite.followed})
    if not shards:
        raise ProcessError("no primary owns a followed instrument")
    lease_shard = cluster.redis.primary_for(cluster.keys.leader)  # type: ignore[union-attr]
    if lease_shard in shards and len(shards) > 1:  # second in turn: a plain shard first, then the one holding the lease
        shards.remove(lease_shard)
        shards.insert(1, lease_shard)
    port = shards[suite._primary_turn % len(shards)]
    suite._primary_turn += 1
    hit = {i for i in suite.followed if cluster.shard_of(i) == port}
    t0, homes = suite._mark()
    cluster.kill_node(port)
    suite._struck()
    theirs = Expect(ALLOWED, SHARD_HEAL, "the kill (the replica is promoted)")
    others = Expect(FORBIDDEN, 2.0, "the kill (their shards live)", max_gap=SPARED_GAP)

    def on_it(plan: SocketPlan) -> bool:
        return any(i in hit for i in plan.instruments)

    def again() -> list[str]:
        cluster.restart_node(port)
        return []

    lease = f", {LEASE_SHARD}" if port == lease_shard else ""
    return Struck(f"primary :{port} ({', '.join(sorted(hit))}{lease})", t0, t0, 0.0, homes,
                  lambda _h, plan: theirs if on_it(plan) else others,
                  lambda _h, plan: HIT if on_it(plan) else SPARED, t0 + SHARD_HEAL + 5.0, again, elsewhere=(HIT, SPARED))
