"""What bench/fanout.py prints and draws: a line per point, tables, capacities, the chart.

Run as a command, it reprints the tables and redraws the chart from saved results,
merging several runs of one day (for example a run that refines one contender's
steps) into one set of points:

    python -m bench.fanout_report bench/results/A.json bench/results/B.json --chart docs/fanout.svg
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from bench.services import LABELS

console = Console(stderr=True, highlight=False)
if not console.is_terminal:
    console = Console(stderr=True, highlight=False, width=220)
_START = time.monotonic()


def say(text: str) -> None:
    console.print(f"[dim]{time.monotonic() - _START:6.1f}s[/] {text}")


def point_line(r: dict[str, Any]) -> None:
    head = f"{r['contender']:<12} {r['clients']:>5} clients {r['instruments']} instr rate {r['rate']:>6g}"
    if r.get("stalled"):
        head += f" ({r['stalled']} stalled)"
    if "p99_ms" not in r:
        say(f"{head}: [red]failed[/]: {r.get('why')}")
        return
    mark = "[green]ok[/]" if r["ok"] else f"[red]{r['why']}[/]"
    say(f"{head}: {r['delivered_per_s']:>10,.0f} msgs/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
        f"cpu {r['server_cpu_share']:.0%} ({(r['cpu_s_per_1k'] or 0) * 1000:.1f} ms/1k)  RSS {r['rss_mb']:.0f} MB "
        f"({r['rss_growth_mb']:+.0f})  loadgen {r['loadgen']['busiest_process_core_share']:.0%}  {mark}")


def capacities(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per contender: the highest delivered msgs/s among its passing points, and the ratios the targets name."""
    best: dict[str, dict[str, Any]] = {}
    for r in points:
        if r.get("ok") and r["delivered_per_s"] > best.get(r["contender"], {}).get("capacity", -1):
            best[r["contender"]] = {"capacity": r["delivered_per_s"], "p99_ms": r["p99_ms"],
                                    "at": {k: r[k] for k in ("clients", "instruments", "rate")}}
    names = {r["contender"] for r in points}
    for n in names:
        best.setdefault(n, {"capacity": 0.0, "p99_ms": None, "at": None})
    ours = best.get("ours", {}).get("capacity", 0.0)
    peers = {n: v["capacity"] for n, v in best.items() if n in ("seed", "broadcaster", "socketio")}
    out: dict[str, Any] = {"by_contender": best}
    if ours and peers:
        top = max(peers, key=peers.__getitem__)
        out["ours_vs_best_peer"] = {"peer": top, "ratio": round(ours / peers[top], 2) if peers[top] else None}
    if ours and "seed" in peers:
        out["ours_vs_seed"] = round(ours / peers["seed"], 2) if peers["seed"] else None
    return out


def common_load(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points of the heaviest load every contender that ran passed: cost below saturation."""
    names = {r["contender"] for r in points}
    by_load: dict[tuple[int, int, float], list[dict[str, Any]]] = {}
    for r in points:
        if r.get("ok"):
            by_load.setdefault((r["clients"], r["instruments"], r["rate"]), []).append(r)
    full = [(max(x["offered_per_s"] for x in rs), rs) for rs in by_load.values() if {x["contender"] for x in rs} == names]
    return max(full, key=lambda t: t[0])[1] if full else []


def print_tables(data: dict[str, Any]) -> None:
    out = Console() if Console().is_terminal else Console(width=200)
    t = Table(title="fan-out matrix (latency from exchange time ts; CPU and RSS of the contender's processes)")
    for col in ("contender", "clients", "instr", "rate", "offered/s", "delivered/s", "p50 ms", "p99 ms",
                "CPU ms/1k", "RSS MB", "growth", "verdict"):
        t.add_column(col, justify="left" if col in ("contender", "verdict") else "right")
    for r in data["points"]:
        if "skipped" in r:
            t.add_row(r["contender"], str(r["clients"]), str(r["instruments"]), f"{r['rate']:g}", "", "", "", "", "", "", "",
                      "skipped (saturated lighter)")
            continue
        if "p99_ms" not in r:
            t.add_row(r["contender"], str(r["clients"]), str(r["instruments"]), f"{r['rate']:g}", "", "0", "", "", "", "", "",
                      f"[red]{r['why']}[/]")
            continue
        t.add_row(r["contender"], f"{r['clients']:,}", str(r["instruments"]), f"{r['rate']:g}", f"{r['offered_per_s']:,}",
                  f"{r['delivered_per_s']:,.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                  f"{(r['cpu_s_per_1k'] or 0) * 1000:.1f}", f"{r['rss_mb']:.0f}", f"{r['rss_growth_mb']:+.0f}",
                  "[green]ok[/]" if r["ok"] else f"[red]{r['why']}[/]")
    out.print(t)
    cap = data["capacity"]
    c = Table(title="sustained capacity: highest delivered msgs/s with p99 < 50 ms and flat memory")
    for col in ("contender", "capacity msgs/s", "p99 ms", "at (clients x instruments, rate)"):
        c.add_column(col)
    for name, v in sorted(cap["by_contender"].items(), key=lambda kv: -kv[1]["capacity"]):
        at = v["at"]
        c.add_row(LABELS.get(name, name), f"{v['capacity']:,.0f}", f"{v['p99_ms']}" if v["p99_ms"] is not None else "-",
                  f"{at['clients']:,} x {at['instruments']}, {at['rate']:g}/s" if at else "no passing point")
    out.print(c)
    if "ours_vs_best_peer" in cap:
        def ratio(x: float | None) -> str:
            return f"{x}x" if x else "no peer point passed"

        out.print(f"ours / best peer ({cap['ours_vs_best_peer']['peer']}): {ratio(cap['ours_vs_best_peer']['ratio'])};  "
                  f"ours / seed design: {ratio(cap.get('ours_vs_seed'))}")
    common = common_load(data["points"])
    if common:
        k = common[0]
        out.print(f"cost below saturation at {k['clients']:,} clients x {k['instruments']} instruments, rate {k['rate']:g}: "
                  + ";  ".join(f"{r['contender']} p99 {r['p99_ms']:.1f} ms, {(r['cpu_s_per_1k'] or 0) * 1000:.1f} ms CPU/1k"
                               for r in common))
    if data.get("memory"):
        m = Table(title="memory: contender RSS")
        for col in ("contender", "run", "delivered/s", "RSS before MB", "RSS MB", "growth MB", "closed by server"):
            m.add_column(col)
        for r in data["memory"]:
            if "rss_mb" not in r:
                m.add_row(r["contender"], r.get("kind", ""), "failed", "", "", "", r.get("why", ""))
                continue
            m.add_row(r["contender"], r.get("kind", ""), f"{r['delivered_per_s']:,.0f}", f"{r['rss_before_mb']:.0f}",
                      f"{r['rss_mb']:.0f}", f"{r['rss_growth_mb']:+.0f}",
                      ", ".join(f"{n} x {why}" for why, n in r["closed_by_server"].items()) or "-")
        out.print(m)


def chart(data: dict[str, Any], path: Path) -> None:
    """A horizontal bar chart of sustained capacities (SVG, pygal), the command in its title."""
    import pygal
    from pygal.style import CleanStyle

    caps = sorted(data["capacity"]["by_contender"].items(), key=lambda kv: kv[1]["capacity"])
    bars = pygal.HorizontalBar(style=CleanStyle, width=900, height=120 + 60 * len(caps), show_legend=False,
                               print_values=True, value_formatter=lambda v: f"{v:,.0f}", truncate_label=-1,
                               x_title=f"delivered msgs/s, p99 < 50 ms, flat RSS ({data['cores']} cores)")
    bars.title = f"Sustained fan-out capacity ({data['started'][:10]})\n{data['command']}"
    bars.x_labels = [LABELS.get(n, n) for n, _ in caps]
    bars.add("capacity", [v["capacity"] for _, v in caps])
    path.parent.mkdir(parents=True, exist_ok=True)
    bars.render_to_file(str(path))


def merge(paths: list[Path]) -> dict[str, Any]:
    """The points of every result file as one result; the first file's metadata, this command as its command."""
    runs = [orjson.loads(p.read_bytes()) for p in paths]
    points = [r for run in runs for r in run.get("points", [])]
    if not points:
        raise ValueError(f"no fan-out points in {', '.join(map(str, paths))} (calibration files have none)")
    data = {**runs[0], "points": points, "memory": [m for run in runs for m in run.get("memory", [])],
            "capacity": capacities(points), "merged_from": [str(p) for p in paths]}
    data["command"] = "python -m bench.fanout_report " + " ".join(map(str, paths))
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fanout_report",
                                description="Reprint the fan-out tables and redraw the chart from saved results.")
    p.add_argument("results", nargs="+", type=Path, help="JSON files written by python -m bench.fanout")
    p.add_argument("--chart", type=Path, default=None, help="SVG chart to draw (default: none)")
    a = p.parse_args(argv)
    try:
        data = merge(a.results)
    except (OSError, ValueError) as exc:
        p.exit(2, f"python -m bench.fanout_report: error: {exc}\n")
    print_tables(data)
    if a.chart is not None:
        chart(data, a.chart)
        say(f"drew {a.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
