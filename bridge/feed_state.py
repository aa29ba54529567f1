"""Whether the feed a bridge relays is live, and why not: what /readyz and every socket's `feed` message say.

Four inputs make the verdict: Redis reachable (the bus polls it about once a
second), the pub/sub connection up, the age of the ingestor's heartbeat key, and
when verified books last arrived. Books are the freshest news there is: they prove
that Redis answers and the ingestor publishes, so a feed whose books flow again is
live at once, not at the next poll; when they stop, the heartbeat alone decides
again, so the poll still marks the feed stale once both are gone (books quiet for
`stale_after` and the heartbeat missing or old). One piece of news is fresher than
the last book: the leading ingestor deletes the heartbeat as soon as its simulator
stream is down (marketdata.ingest.lease), so a poll sent after the last book that
finds no heartbeat makes the feed stale at once, not `stale_after` later. `FeedState`
holds the inputs and reports each change of the verdict, never a repeat. No I/O here:
the bus feeds it what it saw and a clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from marketdata.errors import MessageError
from marketdata.schema import heartbeat_ts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Feed:
    """Whether the feed is live, since when (µs since the epoch), and why not."""

    live: bool
    since: int
    reason: str


def feed_reason(
    redis_ok: bool,
    bus_up: bool,
    heartbeat: bytes | None,
    now_us: int,
    stale_after: float,
    books_at: int | None = None,
    asked_at: int | None = None,
) -> str | None:
    """Why the feed is not live, or None when it is.

    `books_at` is when verified books last arrived (µs); `asked_at`, when the poll that
    read `heartbeat` was sent (None: unknown, the books win).
    """
    if bus_up and books_at is not None and now_us - books_at <= stale_after * 1_000_000:
        if heartbeat is not None or asked_at is None or asked_at <= books_at:
            return None  # books came through pub/sub just now: Redis answers and the ingestor publishes
        # else the ingestor deleted the heartbeat after these books: its stream is down
    if not redis_ok:
        return "redis unreachable"
    if not bus_up:
        return "redis pub/sub not connected"
    if heartbeat is None:
        return "no heartbeat from the ingestor"
    try:
        ts = heartbeat_ts(heartbeat)
    except MessageError:
        return None  # unreadable, but the key lives only while the ingestor refreshes it
    if now_us - ts > stale_after * 1_000_000:
        return "heartbeat stale"
    return None


class FeedState:
    """The inputs of the verdict and the verdict itself (`feed`); `changed` hears every new one.

    `clock` gives wall time in µs since the epoch. While `holding` (the bus's start),
    inputs are recorded but no verdict is made: one after the first poll and connect,
    not one per step.
    """

    def __init__(self, stale_after: float, clock: Callable[[], int], changed: Callable[[Feed], None]) -> None:
        self._stale_after = stale_after
        self._clock = clock
        self._changed = changed
        self.redis_ok = False
        self.bus_up = False
        self.heartbeat: bytes | None = None
        self.books_at: int | None = None  # wall µs when verified books last arrived
        self.asked_at: int | None = None  # wall µs when the poll that read `heartbeat` was sent
        self.holding = False
        self.feed = Feed(False, clock(), "starting")

    def polled(self, heartbeat: bytes | None, asked_at: int | None = None) -> None:
        """Redis answered the poll sent at `asked_at` (µs; None: unknown); `heartbeat` is the key's value (None: no key)."""
        # The first answer after Redis was unreachable: a missing heartbeat may have expired while
        # the leader's renewals could not reach it (in a cluster, its shard failing over while the
        # others carry books), not been deleted by it; books that keep flowing decide, as when
        # the poll time is unknown. The next poll, a second later, trusts its answer again.
        self.asked_at = asked_at if self.redis_ok else None
        self.redis_ok = True
        self.heartbeat = heartbeat
        self.update()

    def unreachable(self) -> None:
        self.redis_ok = False
        self.update()

    def books_arrived(self) -> None:
        """Verified live books arrived (the hot path calls this per book: cheap unless the verdict changes)."""
        self.books_at = self._clock()
        if not self.feed.live:
            self.update()

    def connected(self, up: bool) -> None:
        """The pub/sub connection went up or down (books from before a drop prove nothing after it)."""
        self.bus_up = up
        if not up:
            self.books_at = None
        self.update()

    def update(self) -> None:
        """Make the verdict again (the heartbeat ages with the clock) and report it if it changed."""
        if self.holding:
            return
        now_us = self._clock()
        reason = feed_reason(self.redis_ok, self.bus_up, self.heartbeat, now_us, self._stale_after, self.books_at, self.asked_at)
        live = reason is None
        reason = reason or "live"
        if live == self.feed.live and reason == self.feed.reason:
            return
        was_live = self.feed.live
        self.feed = Feed(live, now_us, reason)
        if live:
            log.info("feed live")
        else:
            log.log(logging.WARNING if was_live else logging.INFO, "feed not live: %s", reason)
        self._changed(self.feed)
