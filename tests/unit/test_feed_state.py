"""The feed state: why a feed is not live, and a report for each change of the verdict, never a repeat."""

from __future__ import annotations

from bridge.feed_state import Feed, FeedState, feed_reason
from marketdata import schema


def test_feed_reason() -> None:
    beat = schema.encode_heartbeat(1_000_000_000, "x")
    assert feed_reason(True, True, beat, 1_000_000_000 + 2_000_000, 3.0) is None
    assert feed_reason(True, True, beat, 1_000_000_000 + 4_000_000, 3.0) == "heartbeat stale"
    assert feed_reason(True, True, None, 0, 3.0) == "no heartbeat from the ingestor"
    assert feed_reason(False, True, beat, 0, 3.0) == "redis unreachable"
    assert feed_reason(True, False, beat, 0, 3.0) == "redis pub/sub not connected"
    assert feed_reason(True, True, b"junk", 0, 3.0) is None  # the key lives only while refreshed


def test_each_change_is_reported_once_and_none_while_holding() -> None:
    now = [5_000_000]
    heard: list[Feed] = []
    state = FeedState(3.0, lambda: now[0], heard.append)
    assert state.feed == Feed(False, 5_000_000, "starting")
    state.holding = True
    state.polled(schema.encode_heartbeat(5_000_000, "x"))
    state.connected(True)
    assert heard == []
    state.holding = False
    state.update()
    state.update()
    assert heard == [Feed(True, 5_000_000, "live")]
    now[0] += 4_000_000  # the heartbeat ages without a refresh
    state.update()
    state.unreachable()
    assert [(f.live, f.since, f.reason) for f in heard[1:]] == [(False, 9_000_000, "heartbeat stale"), (False, 9_000_000, "redis unreachable")]


def test_books_make_the_feed_live_at_once_and_the_heartbeat_decides_once_they_stop() -> None:
    now = [10_000_000]
    heard: list[Feed] = []
    state = FeedState(3.0, lambda: now[0], heard.append)
    state.polled(None)  # Redis restarted empty: no heartbeat yet
    state.connected(True)
    assert heard[-1].reason == "no heartbeat from the ingestor"
    state.books_arrived()
    assert heard[-1] == Feed(True, 10_000_000, "live"), "live on the book, not at the next poll"
    count = len(heard)
    state.books_arrived()
    state.polled(None)
    assert len(heard) == count, "books within stale_after keep it live: no flapping at each poll"
    now[0] += 3_100_000  # the books stopped and the heartbeat never came
    state.polled(None)
    assert heard[-1] == Feed(False, 13_100_000, "no heartbeat from the ingestor")


def test_books_before_a_pub_sub_drop_prove_nothing_after_it() -> None:
    now = [10_000_000]
    heard: list[Feed] = []
    state = FeedState(3.0, lambda: now[0], heard.append)
    state.unreachable()
    state.connected(True)
    state.books_arrived()
    assert heard[-1].live, "books through pub/sub prove Redis answers, whatever the last poll said"
    state.connected(False)
    assert heard[-1].reason == "redis unreachable"
    state.connected(True)
    assert not heard[-1].live
    assert feed_reason(True, False, None, 0, 3.0, books_at=0) == "redis pub/sub not connected"
    assert feed_reason(True, True, None, 3_000_001, 3.0, books_at=0) == "no heartbeat from the ingestor"


def live_feed() -> tuple[list[int], list[Feed], FeedState]:
    """A feed made live by a fresh heartbeat and books at 10 s; the clock (settable), what was heard, the state."""
    now = [10_000_000]
    heard: list[Feed] = []
    state = FeedState(3.0, lambda: now[0], heard.append)
    state.polled(schema.encode_heartbeat(now[0], "x"), asked_at=now[0])
    state.connected(True)
    state.books_arrived()
    return now, heard, state


def test_a_poll_sent_after_the_last_book_that_finds_no_heartbeat_makes_the_feed_stale_at_once() -> None:
    # The leading ingestor deletes the heartbeat as soon as its simulator stream is down
    # (marketdata.ingest.lease): the feed is stale at the next poll, not stale_after later.
    now, heard, state = live_feed()
    assert heard[-1].live
    now[0] += 300_000
    state.polled(None, asked_at=now[0] - 1)
    assert heard[-1] == Feed(False, 10_300_000, "no heartbeat from the ingestor"), "the books stopped before this poll was sent"
    state.books_arrived()
    assert heard[-1].live, "books after that poll: the stream is back"
    state.polled(None, asked_at=now[0] - 100_000)
    assert heard[-1].live, "a poll sent before the last book says nothing about it"
    state.polled(None, asked_at=now[0])
    assert heard[-1].live, "nor one sent the same microsecond"
    assert feed_reason(True, True, None, 5, 3.0, books_at=4, asked_at=5) == "no heartbeat from the ingestor"
    assert feed_reason(True, True, None, 5, 3.0, books_at=4) is None, "no time for the poll: the books win"
    assert feed_reason(True, True, b"beat", 5, 3.0, books_at=4, asked_at=5) is None


def test_the_first_answer_after_redis_was_unreachable_does_not_read_a_missing_heartbeat_as_deleted() -> None:
    # In a cluster, the heartbeat's shard fails over while the other shards carry books: the
    # heartbeat expired unrenewed meanwhile. Books flowing keep the feed live across that first
    # answer; the next poll trusts a missing heartbeat again.
    now, heard, state = live_feed()
    live_since = len(heard)
    state.unreachable()
    assert heard[-1].live, "books flow: the heartbeat's shard alone is away"
    now[0] += 3_500_000
    state.books_arrived()
    state.polled(None, asked_at=now[0] + 1)
    assert heard[-1].live and len(heard) == live_since, "no stale flash on the first answer back"
    now[0] += 1_000_000
    state.polled(None, asked_at=now[0] + 1)
    assert heard[-1] == Feed(False, 14_500_000, "no heartbeat from the ingestor"), "the next poll: missing means deleted again"
