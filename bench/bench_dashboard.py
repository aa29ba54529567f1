"""The dashboard in a real Chromium: frames per second, main-thread time per frame, JS heap over time.

Starts the whole pipeline (embedded Redis, simulator, ingestor, one bridge), opens
the dashboard at 1600x1000 with N panels in the system Chromium, and measures a
window that ends at each mark (by default after 1 and 3 minutes):

- fps: requestAnimationFrame callbacks per second, counted in the page;
- script, layout+style and task time per frame: Chrome DevTools Protocol
  Performance.getMetrics (ScriptDuration, LayoutDuration + RecalcStyleDuration,
  TaskDuration) before and after, divided by the frames counted. These are wall
  times, so they grow when the machine is busy;
- renderer main-thread CPU per frame, from /proc (Linux): what the page really
  costs, whatever else runs;
- the dashboard's own render time per frame (window.marketdata.stats());
- JS heap used after a forced garbage collection (HeapProfiler.collectGarbage).

Chromium is driven over a bare DevTools Protocol socket, not Playwright: Playwright
forwards every WebSocket frame the page receives to the Python side, and at the
fastest rate (about 2,000 frames/s) that costs a fifth of a core and falls
minutes behind, which would measure Playwright, not the page.

    .venv/bin/python bench/bench_dashboard.py --rate 2000 --panels 8 --at 1,3 --window 10
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.child import cpu_seconds  # noqa: E402
from bench.machine import reference_ns  # noqa: E402
from tests.e2e.browser import CHROMIUM_ARGS, ChromiumMissing, Pipeline, find_chromium  # noqa: E402

FRAME_COUNTER = """
window.__bench = { frames: 0, long: 0, last: 0 };
(function tick(t) {
  const b = window.__bench;
  if (b.last && t - b.last > 25) b.long++;
  b.last = t;
  b.frames++;
  requestAnimationFrame(tick);
})(0);
"""
LIVE_JS = """
(n) => {
  const panels = [...document.querySelectorAll('.panel')];
  return panels.length === n && panels.every((p) => p.dataset.state === 'live' && p.querySelector('.badge').dataset.verified === 'ok');
}
"""
# As Playwright launches it: a headless page is never throttled as a background one.
BENCH_ARGS = ["--disable-renderer-backgrounding", "--disable-background-timer-throttling",
              "--disable-backgrounding-occluded-windows", "--hide-scrollbars", "--mute-audio"]


def _ppid(pid: str) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[1]


def renderer_main_cpu(marker: str) -> float | None:
    """CPU seconds of the main threads of the renderers under the browser started with `marker`."""
    if not os.path.isdir("/proc"):
        return None
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"--type=renderer" not in f.read():
                    continue
            ancestor, ours = pid, False
            for _ in range(6):
                ancestor = _ppid(ancestor)
                if ancestor in ("0", "1"):
                    break
                with open(f"/proc/{ancestor}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        ours = True
                        break
            if not ours:
                continue
            total += cpu_seconds(int(pid), thread=int(pid))
        except OSError:
            continue
    return total


class Cdp:
    """The system Chromium, headless, with one page driven over the DevTools Protocol."""

    def __init__(self, extra_args: list[str], timeout: float = 30.0) -> None:
        path = find_chromium()
        if path is None:
            raise ChromiumMissing("no Chromium found: install it (apt-get install chromium) or set MD_CHROMIUM=/path/to/chromium")
        self._exit = contextlib.ExitStack()
        # Chromium's helper processes can still write to the profile while it is removed: leave any rest to /tmp
        self._dir = tempfile.TemporaryDirectory(prefix="md-bench-chromium-", ignore_cleanup_errors=True)
        args = [path, *CHROMIUM_ARGS, *BENCH_ARGS, *extra_args, "--remote-debugging-port=0", f"--user-data-dir={self._dir.name}",
                "--window-size=1600,1000", "about:blank"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._dir.name) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        from websockets.sync.client import connect

        self._ws = self._exit.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, proxy=None))
        self._ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One command and its result (events that arrive meanwhile are skipped: none is enabled but Performance)."""
        n = next(self._ids)
        self._ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv(timeout=60))
            if reply.get("id") == n:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.2)

    def close(self) -> None:
        self._exit.close()
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._dir.cleanup()


def _metrics(cdp: Cdp) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def measure(cdp: Cdp, window: float, marker: str) -> dict[str, Any]:
    """One window of `window` seconds: rates and per-frame costs, then the heap after a GC."""
    snap = "({bench: {...window.__bench}, app: window.marketdata.stats()})"
    m0, p0, c0, t0 = _metrics(cdp), cdp.evaluate(snap), renderer_main_cpu(marker), time.monotonic()
    time.sleep(window)
    m1, p1, c1, t1 = _metrics(cdp), cdp.evaluate(snap), renderer_main_cpu(marker), time.monotonic()
    b0, s0, b1, s1 = p0["bench"], p0["app"], p1["bench"], p1["app"]
    dt = t1 - t0
    frames = max(1, b1["frames"] - b0["frames"])
    app_frames = max(1, s1["frames"] - s0["frames"])
    cdp.send("HeapProfiler.collectGarbage")
    heap = _metrics(cdp)["JSHeapUsedSize"]
    per_frame = lambda key: (m1[key] - m0[key]) * 1000 / frames  # noqa: E731
    return {
        "fps": round(frames / dt, 1),
        "long_frames_pct": round(100 * (b1["long"] - b0["long"]) / frames, 1),
        "script_ms_per_frame": round(per_frame("ScriptDuration"), 2),
        "layout_style_ms_per_frame": round(per_frame("LayoutDuration") + per_frame("RecalcStyleDuration"), 2),
        "task_ms_per_frame": round(per_frame("TaskDuration"), 2),
        "main_cpu_ms_per_frame": round((c1 - c0) * 1000 / frames, 2) if c0 is not None and c1 is not None else None,
        "main_cpu_pct": round(100 * (c1 - c0) / dt, 1) if c0 is not None and c1 is not None else None,
        "render_js_ms_per_app_frame": round((s1["renderMs"] - s0["renderMs"]) / app_frames, 2),
        "messages_per_s": round((s1["messages"] - s0["messages"]) / dt),
        "panel_renders_per_s": round((s1["renders"] - s0["renders"]) / dt),
        "heap_mb_after_gc": round(heap / 2**20, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the dashboard in the system Chromium against the real pipeline.")
    parser.add_argument("--rate", type=float, default=2000.0, help="simulator events/s per instrument")
    parser.add_argument("--panels", type=int, default=8, help="panels on the page (instruments, in list order)")
    parser.add_argument("--at", default="1,3", help="comma list of minutes at which a measurement window ends")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measurement window")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    marks = sorted(float(x) for x in args.at.split(",") if x)
    # Stopped with a signal, still stop the pipeline and the browser (their context managers run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    marker = f"--md-bench-{os.getpid()}"  # Chromium ignores it; it finds our renderers in /proc
    with Pipeline(rate=args.rate, seed=1) as pipeline:
        ids = [i["id"] for i in pipeline.instruments()[: args.panels]]
        cdp = Cdp([marker])
        try:
            cdp.send("Page.enable")
            cdp.send("Page.addScriptToEvaluateOnNewDocument", source=FRAME_COUNTER)
            cdp.send("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
            cdp.send("Page.navigate", url=f"{pipeline.url}/?i={','.join(ids)}")
            cdp.wait_for(f"({LIVE_JS})({len(ids)})", 60, "every panel live and verified")
            cdp.send("Performance.enable")
            start = time.monotonic()
            samples = []
            for minute in marks:
                wait = start + minute * 60 - args.window - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                sample = {"minute": minute, **measure(cdp, args.window, marker)}
                samples.append(sample)
                if not args.json:
                    print(json.dumps(sample), flush=True)
        finally:
            cdp.close()
        behind = pipeline.sim.log_path.read_text(errors="replace").count("cannot keep up")

    report = {
        "rate": args.rate,
        "panels": len(ids),
        "window_s": args.window,
        "cores": os.cpu_count(),
        "reference_ns": round(reference_ns(), 2),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "sim_fell_behind": behind,
        "samples": samples,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"rate {args.rate:g} events/s per instrument, {len(ids)} panels, {args.window:g} s windows, "
              f"{report['cores']} cores, load {report['load_avg_1m']}, reference loop {report['reference_ns']} ns/iteration, simulator fell behind {behind} time(s)")
        cols = ["minute", "fps", "long_frames_pct", "script_ms_per_frame", "layout_style_ms_per_frame", "task_ms_per_frame",
                "main_cpu_ms_per_frame", "main_cpu_pct", "render_js_ms_per_app_frame", "messages_per_s", "panel_renders_per_s", "heap_mb_after_gc"]
        print(" | ".join(cols))
        for s in samples:
            print(" | ".join(str(s[c]) for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
