"""Write docs/dashboard.png: the dashboard at 1600x1000 with four live panels.

Starts the whole pipeline (embedded Redis, simulator, ingestor, one bridge) on free
ports, opens the page in the system Chromium, waits until every panel shows a
verified book, some trades, and non-zero updates/s and latencies, and saves the picture.

    .venv/bin/python -m tests.e2e.screenshot [--out docs/dashboard.png] [--theme dark|light]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.e2e.browser import ChromiumMissing, Pipeline, launch_chromium

ROOT = Path(__file__).resolve().parents[2]
READY_JS = """
(n) => {
  const panels = [...document.querySelectorAll('.panel')];
  return panels.length === n && panels.every((p) =>
    p.dataset.state === 'live' &&
    p.querySelector('.badge').dataset.verified === 'ok' &&
    p.querySelectorAll('.trow.buy, .trow.sell').length >= 8 &&
    [...p.querySelectorAll('.stat dd')].every((d) => d.textContent.trim() !== '–' && d.textContent.trim() !== '0'));
}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot the live dashboard into docs/dashboard.png.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--theme", choices=("dark", "light"), default="dark")
    parser.add_argument("--instruments", default="BTC-USD,ETH-USD,AAPL,EUR-USD")
    parser.add_argument("--rate", type=float, default=40.0, help="simulator events/s per instrument")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    ids = [i for i in args.instruments.split(",") if i]
    with Pipeline(rate=args.rate, seed=1) as pipeline, sync_playwright() as pw:
        try:
            browser = launch_chromium(pw)
        except ChromiumMissing as exc:
            print(f"screenshot: {exc}", file=sys.stderr)
            return 1
        context = browser.new_context(viewport={"width": 1600, "height": 1000}, device_scale_factor=1)
        page = context.new_page()
        page.add_init_script(f"localStorage.setItem('md-theme', '{args.theme}')")
        page.goto(f"{pipeline.url}/?i={','.join(ids)}")
        page.wait_for_function(READY_JS, arg=len(ids), timeout=30_000)
        # Let a few frames pass so that the picture is a moment of live data, not the first paint.
        page.wait_for_function("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
