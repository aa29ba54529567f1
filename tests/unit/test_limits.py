"""The bridge's limits as pure code: the token bucket, socket admission, the client address behind proxies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import limits
from bridge.limits import Admission, Proxies, TokenBucket, networks
from bridge.metrics import Gauges, Metrics, Stats
from tests.unit.test_purity import FORBIDDEN, loaded_roots


def test_the_module_is_pure() -> None:
    assert not loaded_roots("bridge.limits") & set(FORBIDDEN)


# -- token bucket ---------------------------------------------------------------------------


def test_a_full_bucket_gives_its_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.125)  # half a token
    assert bucket.take(100.25)  # one token a quarter of a second
    assert not bucket.take(100.25)
    assert [bucket.take(200.0) for _ in range(4)] == [True, True, True, False]  # refills to the burst, no more


@given(st.lists(st.floats(min_value=0.0, max_value=0.5), max_size=200))
def test_a_bucket_never_allows_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    rate, burst = 20.0, 5
    bucket = TokenBucket(rate, burst, now=0.0)
    now, taken = 0.0, 0
    for gap in gaps:
        now += gap
        taken += bucket.take(now)
        assert taken <= burst + rate * now + 1e-9


# -- admission ------------------------------------------------------------------------------


def test_sockets_per_bridge() -> None:
    admission = Admission(max_sockets=2, max_per_address=10)
    assert admission.admit("10.0.0.1") is None
    assert admission.admit("10.0.0.2") is None
    assert admission.admit("10.0.0.3") == limits.SOCKETS_PER_BRIDGE
    assert admission.total == 2  # a refusal takes nothing
    admission.release("10.0.0.1")
    assert admission.admit("10.0.0.3") is None


def test_sockets_per_address_and_release() -> None:
    admission = Admission(max_sockets=100, max_per_address=2)
    assert admission.admit("10.0.0.1") is None
    assert admission.admit("10.0.0.1") is None
    assert admission.admit("10.0.0.1") == limits.SOCKETS_PER_ADDRESS
    assert admission.admit("10.0.0.2") is None
    assert admission.held("10.0.0.1") == 2 and admission.total == 3
    admission.release("10.0.0.1")
    assert admission.admit("10.0.0.1") is None
    for _ in range(2):
        admission.release("10.0.0.1")
    admission.release("10.0.0.2")
    assert admission.total == 0 and admission.held("10.0.0.1") == 0
    assert not admission._per_address, "released addresses leave no entry behind"


def test_an_ipv6_client_is_its_64_and_a_mapped_ipv4_is_the_ipv4() -> None:
    admission = Admission(max_sockets=100, max_per_address=1)
    assert admission.admit("2001:db8:1:2::1") is None
    assert admission.admit("2001:db8:1:2:ffff::9") == limits.SOCKETS_PER_ADDRESS  # same /64
    assert admission.admit("2001:db8:1:3::1") is None  # another /64
    assert admission.admit("::ffff:192.0.2.7") is None
    assert admission.admit("192.0.2.7") == limits.SOCKETS_PER_ADDRESS


def test_exempt_addresses_count_only_towards_the_bridge() -> None:
    admission = Admission(max_sockets=3, max_per_address=1, exempt=networks(["127.0.0.0/8", "::1"]))
    assert [admission.admit(a) for a in ("127.0.0.1", "127.0.0.1", "::1")] == [None, None, None]
    assert admission.admit("127.0.0.1") == limits.SOCKETS_PER_BRIDGE
    for a in ("127.0.0.1", "127.0.0.1", "::1"):
        admission.release(a)
    assert admission.total == 0


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["10.0.0.1", "10.0.0.2", "127.0.0.1", "2001:db8::1", "2001:db8::2", "x"]))))
def test_admission_matches_a_naive_count(ops: list[tuple[bool, str]]) -> None:
    admission = Admission(max_sockets=4, max_per_address=2, exempt=networks(["127.0.0.1"]))
    held: list[str] = []  # admitted clients, one entry per socket
    for admit, client in ops:
        key = "2001:db8::/64" if client.startswith("2001") else client
        if admit:
            same = sum(1 for c in held if ("2001:db8::/64" if c.startswith("2001") else c) == key)
            if len(held) >= 4:
                want = limits.SOCKETS_PER_BRIDGE
            elif client != "127.0.0.1" and same >= 2:
                want = limits.SOCKETS_PER_ADDRESS
            else:
                want = None
            assert admission.admit(client) == want
            if want is None:
                held.append(client)
        elif client in held:
            held.remove(client)
            admission.release(client)
        assert admission.total == len(held)


# -- the client's address -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        ((), "198.51.100.7", ["203.0.113.5"], "198.51.100.7"),  # no proxy trusted: the header is ignored
        (("10.0.0.0/8",), "198.51.100.7", ["203.0.113.5"], "198.51.100.7"),  # an untrusted peer's header too
        (("10.0.0.0/8",), "10.0.0.2", ["203.0.113.5"], "203.0.113.5"),
        (("10.0.0.0/8",), "10.0.0.2", ["1.1.1.1, 203.0.113.5"], "203.0.113.5"),  # the client wrote 1.1.1.1
        (("10.0.0.0/8",), "10.0.0.2", ["203.0.113.5, 10.0.0.9"], "203.0.113.5"),  # two proxies
        (("10.0.0.0/8",), "10.0.0.2", ["1.1.1.1", "203.0.113.5 , 10.0.0.9"], "203.0.113.5"),  # several headers
        (("10.0.0.0/8",), "10.0.0.2", ["10.0.0.7, 10.0.0.9"], "10.0.0.7"),  # all trusted: the left-most
        (("10.0.0.0/8",), "10.0.0.2", [], "10.0.0.2"),  # no header: the proxy itself
        (("10.0.0.0/8",), "10.0.0.2", [" , "], "10.0.0.2"),
        (("10.0.0.0/8",), "10.0.0.2", ["nonsense, " + "y" * 500], "y" * 64),  # never a long key
        (("::1",), "::1", ["2001:db8::5"], "2001:db8::5"),
        (("127.0.0.1",), "::ffff:127.0.0.1", ["203.0.113.5"], "203.0.113.5"),  # a mapped IPv4 peer
        (("10.0.0.0/8",), None, ["203.0.113.5"], "unknown"),
    ],
)
def test_the_client_address(trusted: tuple[str, ...], peer: str | None, forwarded: list[str], client: str) -> None:
    assert Proxies(trusted).client(peer, forwarded) == client


def test_networks_name_a_bad_entry() -> None:
    assert [str(n) for n in networks(["10.1.2.3/8", "::1", " 192.0.2.1 "])] == ["10.0.0.0/8", "::1/128", "192.0.2.1/32"]
    with pytest.raises(ValueError, match="'10.0.0.300' is not an IP address or a CIDR network"):
        networks(["10.0.0.300"])


# -- counted in /metrics ----------------------------------------------------------------------


def test_every_refusal_reason_is_exported_from_the_start() -> None:
    stats = Stats()
    metrics = Metrics(stats, lambda: Gauges(0, 0, False, False))
    stats.refusals[limits.RATE_LIMIT] += 2
    text = metrics.render().decode()
    for reason in ("sockets_per_bridge", "sockets_per_address", "handshake_timeout", "instruments_per_socket", "origin"):
        assert f'bridge_refusals_total{{reason="{reason}"}} 0.0' in text, reason
    assert 'bridge_refusals_total{reason="rate_limit"} 2.0' in text
