"""The publishing lease's pure state (marketdata.ingest.lease); its scripts run against a real Redis in
tests/integration/test_standby.py."""

from __future__ import annotations

import pytest

from marketdata.ingest.lease import FENCE, Holder, Lease, Step, refusal
from tests.unit.test_purity import loaded_roots

KEYS = (b"md:leader", b"md:leader:token", b"md:heartbeat")


def standby(period: float = 1.0) -> Lease:
    return Lease("ingest:me:1:aa", period)


def leader(token: int = 5, sent: float = 10.0) -> Lease:
    lease = standby()
    lease.acquired([1, b"%d ingest:me:1:aa" % token], sent)
    return lease


def test_the_module_is_pure() -> None:
    assert not loaded_roots("marketdata.ingest.lease") & {"redis", "asyncio", "grpc"}


def test_a_value_is_a_token_and_a_holder() -> None:
    assert Holder.parse(b"12 ingest:web-1:7:ab12cd") == Holder(12, "ingest:web-1:7:ab12cd")
    assert str(Holder(12, "x")) == "x (token 12)"
    for free in (None, "-", b"", b"seven ingest", b"7"):
        assert Holder.parse(free) is None, free


def test_a_refusal_names_the_holder() -> None:
    assert refusal("FENCED 9 ingest:other:2:bb") == Holder(9, "ingest:other:2:bb")
    assert refusal("FENCED -") is None, "fenced, and nobody holds the lease"
    assert refusal("NOPERM this user has no permissions") is False, "not a fence: another error"
    assert b"redis.error_reply('FENCED '" in FENCE


@pytest.mark.parametrize(
    ("leading", "live", "down_for", "step"),
    [
        (False, True, 0.0, Step.ACQUIRE),
        (False, False, 5.0, Step.WAIT),  # no books to publish: no bid
        (True, True, 0.0, Step.RENEW),
        (True, False, 0.9, Step.RENEW),  # a short simulator outage: keep the lease
        (True, False, 1.0, Step.RELEASE),  # down a whole period: let a live standby publish
    ],
)
def test_what_to_do_next(leading: bool, live: bool, down_for: float, step: Step) -> None:
    lease = leader() if leading else standby()
    assert lease.step(live, down_for) is step


def test_a_leader_renews_every_third_and_a_standby_bids_every_quarter_of_the_period() -> None:
    lease = standby(period=1.2)
    assert lease.interval == pytest.approx(0.3)
    lease.acquired([1, b"1 ingest:me:1:aa"], 0.0)
    assert lease.interval == pytest.approx(0.4)
    assert lease.ms == b"1200"


def test_taking_the_lease() -> None:
    lease = standby()
    note = lease.acquired([1, b"5 ingest:me:1:aa"], sent=10.0)
    assert note == "took the lease (token 5): this ingestor publishes"
    assert lease.leading and lease.value == b"5 ingest:me:1:aa" and lease.token == 5
    assert lease.until == 11.0, "the lease surely holds one period from when the request was sent"
    lease.renewed(sent=10.3)
    assert lease.until == pytest.approx(11.3)


def test_a_standby_says_who_leads_once_per_change() -> None:
    lease = standby()
    assert lease.acquired([0, b"3 ingest:other:2:bb"], 1.0) == "standing by: ingest:other:2:bb (token 3) leads"
    assert lease.acquired([0, b"3 ingest:other:2:bb"], 1.25) is None, "said already"
    assert lease.held_by(None) is None, "free: we bid again at the next step"
    assert lease.acquired([0, b"4 ingest:third:3:cc"], 1.5) == "standing by: ingest:third:3:cc (token 4) leads"
    assert lease.held_by(Holder(4, "ingest:me:1:aa")) is None, "our own old lease, about to expire"
    assert not lease.leading and lease.token == 4


def test_a_leader_refused_stands_by_at_once() -> None:
    lease = leader(token=5)
    holder = refusal("FENCED 6 ingest:other:2:bb")  # as a fenced write or renewal reports it
    assert isinstance(holder, Holder)
    assert lease.held_by(holder) == "lost the lease to ingest:other:2:bb (token 6); standing by"
    assert not lease.leading and lease.value is None and lease.token == 6
    assert lease.held_by(holder) is None, "the loss said who leads"
    lease = leader(token=5)
    assert lease.held_by(None) == "lost the lease: it expired before it was renewed; standing by"


def test_a_leader_that_cannot_reach_redis_stands_by_once_its_lease_has_surely_expired() -> None:
    lease = leader(sent=10.0)
    assert lease.unreachable(10.9) is None and lease.leading
    assert lease.unreachable(11.0) == "lost the lease: it expired before Redis confirmed a renewal; standing by"
    assert not lease.leading
    assert standby().unreachable(99.0) is None


def test_releasing() -> None:
    lease = leader(token=8)
    assert lease.release(b"md:leader") == (b"EVAL", lease.release(b"md:leader")[1], b"1", b"md:leader", b"8 ingest:me:1:aa")
    assert lease.released() == "released the lease (token 8)"
    assert not lease.leading
    assert lease.acquired([0, b"9 ingest:other:2:bb"], 1.0) == "standing by: ingest:other:2:bb (token 9) leads"


def test_commands_carry_the_holder_the_fence_and_the_highest_token_seen() -> None:
    lease = standby(period=0.5)
    lease.held_by(Holder(41, "ingest:other:2:bb"))
    cmd = lease.acquire(KEYS, b'{"v":1}', 3000)
    assert cmd[0] == b"EVAL" and cmd[2:] == (b"3", *KEYS, b"ingest:me:1:aa", b"500", b"41", b'{"v":1}', b"3000")
    lease.acquired([1, b"42 ingest:me:1:aa"], 0.0)
    cmd = lease.renew(KEYS, b"", 3000)
    assert b"FENCED" in cmd[1], "a renewal is a fenced write: it carries the heartbeat"
    lease_key, token_key, beat_key = KEYS
    assert cmd[2:] == (b"3", lease_key, beat_key, token_key, b"42 ingest:me:1:aa", b"500", b"", b"3000")


def test_a_standby_that_lost_sight_of_the_lease_holds_its_bid_for_one_period() -> None:
    lease = standby(period=1.0)
    assert lease.step(True, 0.0, 10.0) is Step.ACQUIRE
    assert lease.unreachable(10.0) is None
    assert lease.step(True, 0.0, 10.5) is Step.WAIT, "a leader that lived through the outage renews first"
    assert lease.unreachable(10.75) is None  # still out of reach: the hold-off runs from the last failed attempt
    assert lease.step(True, 0.0, 11.5) is Step.WAIT
    assert lease.step(True, 0.0, 11.75) is Step.ACQUIRE
    assert lease.step(False, 1.0, 12.0) is Step.WAIT, "no stream: no bid, as ever"


def test_a_leader_keeps_a_lease_it_cannot_reach_only_where_fences_guard_it() -> None:
    kept = leader(token=5)
    kept.renewed(0.0)
    assert kept.unreachable(5.0, keep=True) is None and kept.leading, "a cluster: the slot fences keep a stale leader out"
    single = leader(token=5)
    single.renewed(0.0)
    assert single.unreachable(0.5) is None and single.leading, "not yet expired"
    assert "lost the lease" in (single.unreachable(1.5) or "") and not single.leading
    assert kept.renewed(6.0, 2) == "took the lease back (token 5): it expired while Redis was out of reach, and nobody took it"
    assert kept.renewed(6.3, 1) is None


def test_a_standby_bids_again_right_after_the_lease_it_saw_expires() -> None:
    lease = standby(period=1.0)
    lease.acquired([0, b"3 ingest:other:2:bb", 900], 0.0)
    assert lease.interval == 0.25, "far from expiry: every quarter period"
    lease.acquired([0, b"3 ingest:other:2:bb", 120], 0.25)
    assert lease.interval == pytest.approx(0.123), "its TTL, and a few ms, from when the bid was sent"
    lease.acquired([0, b"3 ingest:other:2:bb", -1], 0.4)  # no TTL: never from our scripts, but harmless
    assert lease.interval == 0.25
    lease.acquired([0, b"3 ingest:other:2:bb", 50], 0.5)
    lease.acquired([1, b"4 ingest:me:1:aa"], 0.6)
    assert lease.interval == pytest.approx(1 / 3), "leading: renew every third"
    lease.held_by(None)
    assert lease.interval == 0.25
