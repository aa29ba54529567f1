"""What bench/faults.py prints and writes: a line per fault, a table per kind of fault, the JSON."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.fault_checks import CHECKSUM, ORDER, OTHER, percentile
from bench.machine import reference_line

if TYPE_CHECKING:
    from bench.faults import Config, FaultResult

SHOWN = 5  # failures printed under a fault's line


def header(config: Config) -> str:
    return "\n".join([
        reference_line(),
        (f"# fault suite: {config.sockets} sockets over 2 bridges and {config.instruments} instruments, 2 ingestors "
         f"(lease {config.lease:g} s), simulator at {config.rate:g} events/s per instrument, seed {config.seed}, "
         f"{config.rounds} round(s) of {', '.join(config.kinds)}"),
    ])  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def line(r: FaultResult) -> str:
    heals = [h for hs in r.heal_s.values() for h in hs]
    stales = [x for xs in r.stale_s.values() for x in xs]
    heal = f"heal p50 {_ms(percentile(heals, 0.5))} ms, max {_ms(max(heals, default=None))} ms over {len(heals)} sockets"
    stale = f"stale p50 {_ms(percentile(stales, 0.5))} ms" if stales else "no stale"
    back = f", down {r.down_s:.2f} s, back after {r.back_s:.2f} s" if r.back_s else ""
    out = [f"round {r.round + 1} {r.kind} ({r.victim}{back}): {heal}; {stale}; {len(r.failures)} failures"]
    out += [f"    {f}" for f in r.failures[:SHOWN]]
    if len(r.failures) > SHOWN:
        out.append(f"    ... and {len(r.failures) - SHOWN} more")
    return "\n".join(out)


def _stats(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99), "max": max(values, default=None)}


def summary(results: list[FaultResult]) -> dict[str, dict[str, Any]]:
    """Per kind of fault: heal and stale times by group of sockets, over every round, and the failures."""
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(r.kind for r in results):
        mine = [r for r in results if r.kind == kind]
        groups: dict[str, Any] = {}
        for group in dict.fromkeys(g for r in mine for g in r.heal_s):
            heals = [h for r in mine for h in r.heal_s.get(group, [])]
            after_back = [h - r.back_s for r in mine if r.back_s and group not in r.elsewhere for h in r.heal_s.get(group, [])]
            groups[group] = {
                "sockets_measured": len(heals),
                "heal_s": _stats(heals),
                "heal_after_back_s": _stats(after_back) if after_back else None,
                "stale_s": _stats([x for r in mine for x in r.stale_s.get(group, [])]),
            }
        out[kind] = {
            "faults": len(mine),
            "groups": groups,
            "restarted": any(r.back_s for r in mine),
            "down_s": _stats([r.down_s for r in mine]),
            "missed_deadlines": sum(len(r.missed) for r in mine),
            "bad_checksum": sum(r.bad_counts.get(CHECKSUM, 0) for r in mine),
            "out_of_order": sum(r.bad_counts.get(ORDER, 0) for r in mine),
            "other_bad_messages": sum(r.bad_counts.get(OTHER, 0) for r in mine),
            "problems": sum(len(r.problems) for r in mine),
        }
    return out


def table(summary: dict[str, dict[str, Any]], config: Config, elapsed: float, totals: dict[str, Any]) -> str:
    from bench.faults import LABELS

    rows = [("fault", "n", "heal p50/p99/max ms", "after back p50/p99/max ms", "stale p50/max ms", "missed", "bad checksum",
             "out of order", "other")]
    for kind, s in summary.items():
        for i, (group, g) in enumerate(s["groups"].items() or [("", None)]):
            label = LABELS.get(kind, kind) + (f" ({group})" if group else "")
            other = s["other_bad_messages"] + s["problems"]
            counts = tuple(map(str, (s["missed_deadlines"], s["bad_checksum"], s["out_of_order"], other))) if i == 0 else ("",) * 4
            if g is None:
                rows.append((label, str(s["faults"]), "-", "-", "-", *counts))
                continue
            h, b, st = g["heal_s"], g["heal_after_back_s"], g["stale_s"]
            rows.append((
                label, str(s["faults"]),
                f"{_ms(h['p50'])}/{_ms(h['p99'])}/{_ms(h['max'])}",
                f"{_ms(b['p50'])}/{_ms(b['p99'])}/{_ms(b['max'])}" if b else "(does not wait)" if s["restarted"] else "(nothing restarted)",
                f"{_ms(st['p50'])}/{_ms(st['max'])}" if st["max"] is not None else "-",
                *counts,
            ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(f"{sum(s['faults'] for s in summary.values())} faults in {elapsed / 60:.1f} min; "
                 f"{totals.get('socket_books', 0):,} books checked on the sockets, {totals.get('bus_books', 0):,} on the bus, "
                 f"{totals.get('connections', 0):,} connections; load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    return "\n".join(lines)


def write_json(path: Path, config: Config, results: list[FaultResult], summary: dict[str, Any], totals: dict[str, Any],
               elapsed: float, header: str) -> None:
    doc = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"reference": header.splitlines()[0], "python": platform.python_version(), "cores": os.cpu_count(),
                    "loadavg_end": os.getloadavg()},
        "config": {"rounds": config.rounds, "sockets": config.sockets, "instruments": config.instruments, "rate": config.rate,
                   "seed": config.seed, "kinds": list(config.kinds), "lease": config.lease},
        "elapsed_s": round(elapsed, 1),
        "totals": totals,
        "summary": summary,
        "faults": [{"kind": r.kind, "round": r.round, "victim": r.victim, "down_s": r.down_s, "back_s": r.back_s,
                    "heal_s": r.heal_s, "stale_s": r.stale_s, "missed": r.missed, "bad_messages": r.bad_messages,
                    "bad_counts": r.bad_counts, "problems": r.problems, "sockets": r.sockets} for r in results],
    }  # fmt: skip
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
