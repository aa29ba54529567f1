"""The failure model, struck for real: kill -9 of every process in turn, and a leader paused past its lease.

Each test strikes one fault on the package's running system (conftest.py) through the
fault suite's engine (bench/faults.py), which checks every message on every socket and on
the bus and judges each socket against the fault's deadlines (bench/fault_checks.py). A
failure names the socket, its instruments, its bridge and what it missed.
"""

from __future__ import annotations

import pytest

from bench.faults import BACK_TO_IT, TO_THE_OTHER, Suite
from tests.faults.conftest import SOCKETS, assert_clean

pytestmark = pytest.mark.faults


def test_kill_9_of_the_simulator_marks_the_feed_stale_then_a_new_epoch_heals_every_socket(suite: Suite) -> None:
    result = suite.run_fault("sim")
    assert_clean(result, suite.cluster.logs)
    # Every socket was told within 2 s (judged above); here: all of them were measured.
    assert len(result.stale_s[""]) == len(result.heal_s[""]) == SOCKETS


def test_kill_9_of_the_leading_ingestor_the_standby_heals_every_socket_within_2_s(suite: Suite) -> None:
    result = suite.run_fault("leader")
    assert_clean(result, suite.cluster.logs)
    assert len(result.heal_s[""]) == SOCKETS and max(result.heal_s[""]) < 2.0
    leader = suite.cluster.leader()
    assert leader is not None and leader.name != result.victim, "the standby leads now; the victim came back as a standby"


def test_kill_9_of_the_standby_ingestor_is_not_visible(suite: Suite) -> None:
    result = suite.run_fault("standby")
    assert_clean(result, suite.cluster.logs)  # no stale, no close, books within 2 s on every socket
    assert not result.stale_s


def test_kill_9_of_redis_marks_the_feed_stale_and_heals_within_5_s_of_redis_back(suite: Suite) -> None:
    result = suite.run_fault("redis")
    assert_clean(result, suite.cluster.logs)  # sockets stay open: a close would be a failure
    assert len(result.stale_s[""]) == len(result.heal_s[""]) == SOCKETS


def test_kill_9_of_a_bridge_its_sockets_reconnect_and_are_whole_again(suite: Suite) -> None:
    result = suite.run_fault("bridge")
    assert_clean(result, suite.cluster.logs)  # the other bridge's sockets saw nothing
    moved, waited = result.heal_s.get(TO_THE_OTHER, []), result.heal_s.get(BACK_TO_IT, [])
    assert len(moved) + len(waited) == SOCKETS // 2, "every socket of the killed bridge healed"
    assert moved and waited, "both reconnect policies were exercised"
    assert len(result.stale_s[TO_THE_OTHER]) + len(result.stale_s[BACK_TO_IT]) == SOCKETS // 2


def test_a_leader_paused_past_its_lease_is_replaced_within_2_s_and_never_heard_from_again(suite: Suite) -> None:
    result = suite.run_fault("pause")
    # Judged: fresh books on every socket within 2 s of the SIGSTOP; after the SIGCONT, not one
    # message on any socket or on the bus out of (epoch, seq) order or with a bad checksum,
    # and the woken ingestor reports itself a standby.
    assert_clean(result, suite.cluster.logs)
    assert result.down_s > suite.cluster.lease, "paused for longer than the lease"
    assert len(result.heal_s[""]) == SOCKETS and max(result.heal_s[""]) < 2.0
