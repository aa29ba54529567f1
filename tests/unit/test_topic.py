"""A trades topic keeps the newest trades, as many as it is told and never fewer than MIN_REPLAY."""

from __future__ import annotations

from bridge.frames import Message
from bridge.topic import MIN_REPLAY, Topic


def test_keep_recent_keeps_the_newest() -> None:
    topic = Topic(b"md:trades:BTC-USD", trades=True)
    topic.recent.extend(Message.of(b"{}", seq) for seq in range(MIN_REPLAY + 10))
    assert [m.seq for m in topic.recent] == list(range(10, MIN_REPLAY + 10))
    topic.keep_recent(MIN_REPLAY + 5)
    topic.recent.extend(Message.of(b"{}", seq) for seq in range(MIN_REPLAY + 10, MIN_REPLAY + 15))
    assert [m.seq for m in topic.recent] == list(range(10, MIN_REPLAY + 15))
    topic.keep_recent(3)
    assert topic.recent.maxlen == MIN_REPLAY and topic.recent[-1].seq == MIN_REPLAY + 14
