"""When each instrument's next events are due, every instrument at a rate of its own.

Pure code: the caller hands in the time (schedule seconds since the start, which
the server advances faster during bursts). Instrument i's k-th event is due at
k / rate_i; a heap keyed by when each instrument's next event is due gives the
instruments that owe events, so a call costs O(k log n) for the k instruments due,
however many are listed: a thousand quiet instruments cost nothing between their
events.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


class Schedule:
    """Events owed per instrument, by index, at per-instrument rates (events per schedule second)."""

    __slots__ = ("_done", "_heap", "_rates", "skipped")

    def __init__(self, rates: Sequence[float]) -> None:
        if any(not rate > 0 for rate in rates):
            raise ValueError("every rate must be positive")
        self._rates = tuple(rates)
        self._done = [0] * len(self._rates)  # events handed out or skipped so far, per instrument
        self._heap = [(1.0 / rate, i) for i, rate in enumerate(self._rates)]  # (when the next is due, index)
        heapq.heapify(self._heap)
        self.skipped = 0  # events never handed out because a call was too far behind

    def due(self, now: float, catch_up: float | None = None, least: int = 64) -> list[tuple[int, int]]:
        """(index, count) of every instrument with events due by `now`, the earliest due first.

        With `catch_up` (seconds), an instrument owes at most max(`least`, its rate x
        `catch_up`) events in one call; what it owes beyond that is skipped (counted in
        `skipped`), so a caller that fell behind starts again from `now` instead of
        bursting.
        """
        heap, rates, done = self._heap, self._rates, self._done
        out: list[tuple[int, int]] = []
        while heap and heap[0][0] <= now:
            i = heap[0][1]
            rate = rates[i]
            # Due by the heap's reckoning, even where the product rounds down to done[i].
            owed = max(1, int(now * rate) - done[i])
            if catch_up is not None:
                cap = max(least, int(rate * catch_up))
                if owed > cap:
                    self.skipped += owed - cap
                    done[i] += owed - cap
                    owed = cap
            done[i] += owed
            heapq.heapreplace(heap, ((done[i] + 1) / rate, i))
            out.append((i, owed))
        return out

    def next_due(self) -> float:
        """When the earliest next event is due, in schedule seconds (infinity with no instrument)."""
        return self._heap[0][0] if self._heap else float("inf")
