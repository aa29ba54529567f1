"""The pure parts of the embedded cluster: reading CLUSTER NODES and INFO, splitting the slots."""

from __future__ import annotations

import itertools

from marketdata.slots import SLOTS
from marketdata.supervisor.redis_cluster import (
    covers_all,
    parse_info,
    parse_nodes,
    slot_owners,
    slot_ranges,
)

NODES = """\
aaa 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
bbb 127.0.0.1:7002@17002,node-b master - 0 1700000000000 2 connected 5461-10921 [10922->-ccc]
ccc 127.0.0.1:7003@17003 master,fail - 1700000000000 1700000000000 3 disconnected
ddd 127.0.0.1:7004@17004 slave aaa 0 1700000000000 1 connected
eee 127.0.0.1:7006@17006 master - 0 1700000000000 4 connected 10922-16383 7
"""


def test_parse_nodes_reads_ports_roles_and_slot_ranges() -> None:
    nodes = {n.port: n for n in parse_nodes(NODES)}
    assert nodes[7001].role == "primary" and "myself" in nodes[7001].flags and nodes[7001].slots == ((0, 5460),)
    assert nodes[7002].slots == ((5461, 10921),)  # a migrating slot is not served yet
    assert nodes[7003].failing and not nodes[7003].connected and nodes[7003].slots == ()
    assert nodes[7004].role == "replica" and nodes[7004].primary_id == "aaa" and not nodes[7004].failing
    assert nodes[7006].slots == ((10922, 16383), (7, 7))
    assert parse_nodes("") == []


def test_slot_owners_and_coverage() -> None:
    owners = slot_owners(parse_nodes(NODES))
    assert owners[(0, 5460)] == 7001 and owners[(10922, 16383)] == 7006
    assert not covers_all(owners)  # slot 7 twice
    assert covers_all(slot_owners(parse_nodes(NODES.replace(" 7\n", "\n"))))


def test_slot_ranges_split_every_slot_once() -> None:
    assert slot_ranges(3) == [(0, 5460), (5461, 10921), (10922, 16383)]
    for n in (1, 3, 5, 7):
        ranges = slot_ranges(n)
        assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))


def test_parse_info_reads_fields() -> None:
    info = parse_info("cluster_state:ok\r\ncluster_slots_assigned:16384\r\n# Section\r\n")
    assert info == {"cluster_state": "ok", "cluster_slots_assigned": "16384"}
