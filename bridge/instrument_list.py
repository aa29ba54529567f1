"""The instrument list as the ingestor published it: the ids a request may name, their tick and lot sizes
(what the bridge verifies book checksums with), and the JSON /api/instruments serves.

The bus reloads it every few seconds and, at most once a second, when a request
names an id it does not know (a new instrument appears without a bridge restart).
A list that does not decode is logged and ignored: the bridge keeps what it had.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from marketdata.errors import MessageError
from marketdata.instruments import Instrument
from marketdata.logs import Throttled
from marketdata.schema import decode_instruments

log = logging.getLogger(__name__)


class InstrumentList:
    """The listed ids and their JSON, read from `key` (one GET: a single Redis or a cluster); `clock` is the event loop's time."""

    def __init__(self, redis: Redis | RedisCluster, key: str, clock: Callable[[], float]) -> None:
        self._redis = redis
        self._key = key
        self._clock = clock
        self._by_id: dict[str, Instrument] = {}
        self.json = b"[]"
        self._loaded_at = -math.inf
        self._bad = Throttled(log)

    def __contains__(self, instrument: str) -> bool:
        return instrument in self._by_id

    def get(self, instrument: str) -> Instrument | None:
        """The listed instrument of that id, or None."""
        return self._by_id.get(instrument)

    def due(self, every: float) -> bool:
        """True when the last load began `every` seconds ago or more."""
        return self._clock() - self._loaded_at >= every

    async def load(self) -> None:
        """Read the list from Redis (raises Redis's errors); keep the old one if none or a bad one is there."""
        self._loaded_at = self._clock()
        raw = await self._redis.get(self._key)
        if raw is None or raw == self.json:
            return  # none published yet (or Redis restarted empty): keep what we had
        try:
            listed = decode_instruments(raw)
        except MessageError as exc:
            self._bad(logging.WARNING, "ignored a bad instrument list in %s: %s", self._key, exc)
            return
        self._by_id = {i.id: i for i in listed}
        self.json = raw
        log.info("instruments: %s", ", ".join(i.id for i in listed) or "none")
