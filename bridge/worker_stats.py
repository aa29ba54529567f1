"""Several bridge workers' counters as one /metrics: the snapshot each publishes, and their sum.

Pure: values in, values out; bridge.metrics reads and writes the snapshot files. A
snapshot is JSON-ready: `{"worker": 1, "counters": {...}, "gauges": {...}}`, its
counters every field of the worker's `Stats` (integers, dicts of integers by label,
the latency histogram as `{"counts": [...], "total": seconds}`) and its gauges every
field of `Gauges`. Fields are read generically, so a counter added to `Stats` is
summed without a change here.

- Counters sum over every worker that ever served, dead ones included: the parent
  folds a dead worker's last snapshot into the retired total (`retire`), so a sum
  never goes backwards, which Prometheus would read as a reset of the whole series.
- Gauges come from the live workers only: levels (sockets, subscriptions) sum, flags
  (feed_live, redis_up) hold when every live worker says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

Counters = dict[str, Any]
Snapshot = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Retired:
    """What dead workers counted, and which snapshot files that already includes."""

    counters: Counters
    absorbed: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {"counters": self.counters, "absorbed": sorted(self.absorbed)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Retired:
        if not data:
            return cls({})
        return cls(dict(data.get("counters", {})), frozenset(data.get("absorbed", ())))


@dataclass(frozen=True, slots=True)
class Merged:
    """Every worker's counters summed, the live workers' gauges, and each live worker's sockets."""

    counters: Counters
    gauges: dict[str, Any]
    sockets_by_worker: dict[int, int]


def counters_of(stats: object) -> Counters:
    """A `Stats` (any dataclass of counters) as JSON-ready values."""
    out: Counters = {}
    for f in fields(stats):  # type: ignore[arg-type]
        value = getattr(stats, f.name)
        if isinstance(value, (int, float)):
            out[f.name] = value
        elif isinstance(value, dict):
            out[f.name] = dict(value)
        else:  # the latency histogram
            out[f.name] = {"counts": list(value.counts), "total": value.total}
    return out


def snapshot(worker: int, stats: object, gauges: object) -> Snapshot:
    """What worker number `worker` publishes: its counters and its gauges."""
    levels = {f.name: getattr(gauges, f.name) for f in fields(gauges)}  # type: ignore[arg-type]
    return {"worker": worker, "counters": counters_of(stats), "gauges": levels}


def add(total: Counters, more: Mapping[str, Any]) -> Counters:
    """`total` plus `more`, field by field (a new dict; a field missing on one side counts as zero)."""
    out = dict(total)
    for name, value in more.items():
        mine = out.get(name)
        if mine is None:
            out[name] = _copy(value)
        elif isinstance(value, dict) and "counts" in value:
            counts = [a + b for a, b in zip(mine["counts"], value["counts"])] if len(mine["counts"]) == len(value["counts"]) else mine["counts"]
            out[name] = {"counts": counts, "total": mine["total"] + value["total"]}
        elif isinstance(value, dict):
            merged = dict(mine)
            for label, n in value.items():
                merged[label] = merged.get(label, 0) + n
            out[name] = merged
        else:
            out[name] = mine + value
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: list(v) if isinstance(v, list) else v for k, v in value.items()}
    return value


def merge(live: Iterable[Snapshot], retired: Retired) -> Merged:
    """The sum that /metrics shows: `retired` plus every live snapshot's counters, the live gauges."""
    counters = dict(retired.counters)
    levels: dict[str, list[Any]] = {}
    sockets: dict[int, int] = {}
    for snap in live:
        counters = add(counters, snap.get("counters", {}))
        gauges = snap.get("gauges", {})
        for name, value in gauges.items():
            levels.setdefault(name, []).append(value)
        sockets[int(snap.get("worker", 0))] = int(gauges.get("sockets", 0))
    merged_gauges = {name: all(values) if isinstance(values[0], bool) else sum(values) for name, values in levels.items()}
    return Merged(counters, merged_gauges, dict(sorted(sockets.items())))


def retire(retired: Retired, name: str, last: Snapshot | None) -> Retired:
    """`retired` with the dead worker's last snapshot (file `name`) folded in, once."""
    if name in retired.absorbed:
        return retired
    counters = add(retired.counters, last.get("counters", {})) if last else dict(retired.counters)
    return Retired(counters, retired.absorbed | {name})


def fill(stats: Any, counters: Mapping[str, Any]) -> Any:
    """Write `counters` into `stats` (a fresh `Stats`), for the collector to render; unknown fields are skipped."""
    for f in fields(stats):
        value = counters.get(f.name)
        if value is None:
            continue
        mine = getattr(stats, f.name)
        if isinstance(mine, (int, float)):
            setattr(stats, f.name, value)
        elif isinstance(mine, dict):
            mine.update(value)
        elif len(mine.counts) == len(value["counts"]):
            mine.counts[:] = value["counts"]
            mine.total = value["total"]
    return stats
