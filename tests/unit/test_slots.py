"""Cluster slots computed here agree with Redis's rule, and every slot has its fence tag."""

from __future__ import annotations

import pytest

from marketdata.slots import SLOTS, key_slot, node_url, slot_tag


@pytest.mark.parametrize(
    ("name", "slot"),
    [
        ("123456789", 12739),  # CRC16/XMODEM's check value (0x31C3), as the cluster spec gives it
        ("md:book:{BTC-USD}", key_slot("BTC-USD")),  # the tag alone counts
        ("{}x", key_slot("{}x")),  # an empty tag: the whole name
        ("a{}b{c}", key_slot("a{}b{c}")),  # only the first `{` opens a tag, and `{}` is empty
        ("x{a", key_slot("x{a")),  # no closing brace: the whole name
    ],
)
def test_key_slot_follows_the_hash_tag_rule(name: str, slot: int) -> None:
    assert key_slot(name) == key_slot(name.encode()) == slot


def test_key_slot_uses_the_first_tag_only() -> None:
    assert key_slot("md:book:{BTC-USD}") == key_slot("md:delta:{BTC-USD}") == key_slot("BTC-USD")
    assert key_slot("{a}{b}") == key_slot("a") != key_slot("b")
    assert key_slot("123456789") == 0x31C3 % SLOTS


def test_every_slot_has_a_short_tag_that_hashes_to_it() -> None:
    tags = [slot_tag(s) for s in range(SLOTS)]
    assert all(key_slot(f"{{{tag}}}") == s for s, tag in enumerate(tags))
    assert len(set(tags)) == SLOTS and max(map(len, tags)) <= 4


def test_a_node_url_keeps_the_credentials_scheme_and_options() -> None:
    url = "rediss://ingest:s3cret@10.0.0.1:7000/0?ssl_cert_reqs=required"
    assert node_url(url, "10.0.0.2", 7003) == "rediss://ingest:s3cret@10.0.0.2:7003/0?ssl_cert_reqs=required"
    assert node_url("redis://h:1", "::1", 7001) == "redis://[::1]:7001"
