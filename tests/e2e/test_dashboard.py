"""The dashboard in a real headless Chromium, against the real pipeline.

One pipeline (Redis, simulator, ingestor, bridge as `marketdata` subprocesses) and
one browser serve the whole module; each test opens its own browser context. The
tests that kill the bridge and restart Redis come last and leave the pipeline
whole again.
"""

from __future__ import annotations

import random
import re
import socket
import string
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.browser import WAIT_MS, Dash, Pipeline
from tests.support import wait_for

pytestmark = pytest.mark.browser

@pytest.fixture(scope="module")
def pipeline(chromium: str) -> Iterator[Pipeline]:
    with Pipeline(rate=40.0, seed=3) as running:
        yield running


def _green(css_color: str) -> bool:
    r, g, b = (int(x) for x in re.findall(r"\d+", css_color)[:3])
    return g > r + 40 and g > b


def test_default_page_shows_four_live_verified_books_without_console_errors(dash: Dash, pipeline: Pipeline) -> None:
    first_four = [i["id"] for i in pipeline.instruments()[:4]]
    dash.open()
    dash.wait_live(first_four)
    assert dash.panel_ids() == first_four, "the default selection is the first four listed instruments"

    for inst in first_four:
        p = dash.panel(inst)
        assert p is not None
        bid, ask = float(p["bid"]), float(p["ask"])
        assert bid < ask, f"{inst}: best bid {bid} not below best ask {ask}"
        asks = [float(x) for x in p["askPrices"]]
        bids = [float(x) for x in p["bidPrices"]]
        assert len(asks) == len(bids) == 10, f"{inst}: ladder rows {len(asks)} asks, {len(bids)} bids"
        assert asks == sorted(asks, reverse=True) and bids == sorted(bids, reverse=True), f"{inst}: ladder out of order"
        assert asks[-1] == ask and bids[0] == bid, f"{inst}: the best prices must sit next to the spread"
        assert min(asks) > max(bids)
        assert p["verified"] == "ok" and "verified" in p["badgeText"]
        assert _green(p["badgeColor"]), f"{inst}: verified badge colour {p['badgeColor']} is not green"

    dash.wait_progress(dash.seqs(first_four), "every panel to show a newer book")
    dash.wait(
        "() => [...document.querySelectorAll('.trow:not(.thead) .s')].some((n) => /^(▲ BUY|▼ SELL)\\s+\\d/.test(n.textContent))",
        what="a trade labelled BUY or SELL in words, not colour only",
    )
    assert dash.page.locator("#conn").get_attribute("data-state") == "live"
    assert dash.errors == [], f"console errors: {dash.errors}"


def test_selection_round_trips_through_the_url(dash: Dash) -> None:
    dash.open("?i=ETH-USD,AAPL")
    dash.wait_live(["ETH-USD", "AAPL"])
    assert dash.panel_ids() == ["ETH-USD", "AAPL"]
    dash.page.evaluate("window.__sameDocument = true")

    dash.page.locator('#picker-list input[value="MSFT"]').check()
    dash.wait("() => location.search === '?i=ETH-USD,AAPL,MSFT'", what="the URL to list the added panel")
    dash.wait_live(["MSFT"], "the added panel, subscribed on the open socket")

    dash.page.get_by_role("button", name="Remove ETH-USD").click()
    dash.wait("() => location.search === '?i=AAPL,MSFT'", what="the URL to drop the removed panel")
    assert dash.panel_ids() == ["AAPL", "MSFT"]
    assert not dash.page.locator('#picker-list input[value="ETH-USD"]').is_checked()
    assert dash.page.evaluate("window.__sameDocument === true"), "adding or removing a panel reloaded the page"

    bookmark = dash.page.url
    dash.page.goto("about:blank")
    dash.page.goto(bookmark)
    dash.wait_live(["AAPL", "MSFT"], "panels from the bookmarked URL")
    assert dash.panel_ids() == ["AAPL", "MSFT"]
    assert dash.errors == [], f"console errors: {dash.errors}"


def test_unknown_instrument_gets_a_message_in_place_of_its_panel(dash: Dash) -> None:
    dash.open("?i=BTC-USD,NOPE-1,%3Cb%3Ebold%3C%2Fb%3E")
    dash.wait_live(["BTC-USD"])
    nope = dash.panel("NOPE-1")
    assert nope is not None and nope["state"] == "unknown"
    assert "Unknown instrument" in nope["status"] and "NOPE-1" in nope["status"]
    markup = dash.panel("<b>bold</b>")
    assert markup is not None and "<b>bold</b>" in markup["status"], "an id from the URL must show as text"
    assert dash.page.locator(".panel b").count() == 0, "an id from the URL was parsed as HTML"
    dash.page.get_by_role("button", name="Remove NOPE-1").click()
    dash.wait("() => !location.search.includes('NOPE-1')", what="the unknown panel to go away")


def test_a_corrupted_checksum_turns_the_badge_red(dash: Dash) -> None:
    def relay(ws: Any) -> None:
        server = ws.connect_to_server()

        def corrupt(message: str | bytes) -> None:
            # Every AAPL book and delta: on deltas (the default) each result fails, each resync's answer too.
            if isinstance(message, str) and '"instrument":"AAPL"' in message and ('"type":"book"' in message or '"type":"delta"' in message):
                message = re.sub(r'"checksum":(\d+)', lambda m: f'"checksum":{int(m.group(1)) ^ 1}', message)
            ws.send(message)

        server.on_message(corrupt)

    dash.page.route_web_socket(re.compile(r".*/ws(\?.*)?$"), relay)
    dash.open("?i=BTC-USD,AAPL&batch=0")  # a frame per message, so that only AAPL's books are corrupted
    dash.wait_live(["BTC-USD"])
    dash.wait(
        "() => document.querySelector('.panel[data-instrument=\"AAPL\"] .badge').dataset.verified === 'bad'",
        what="the AAPL badge to report a mismatch",
    )
    p = dash.panel("AAPL")
    assert "mismatch" in p["badgeText"], "a mismatch must be said in words, not colour only"
    assert not _green(p["badgeColor"])
    assert dash.panel("BTC-USD")["verified"] == "ok"


def test_checksum_in_the_browser_matches_zlib(dash: Dash) -> None:
    dash.open("?i=")
    rng = random.Random(5)
    texts = ["101:2,103:7|100:5,99:3", "|", ""]
    texts += ["".join(rng.choice(string.digits + ":,|") for _ in range(rng.randrange(1, 300))) for _ in range(50)]
    got = dash.page.evaluate(
        "async (texts) => { const { crc32 } = await import('/static/crc32.js'); return texts.map(crc32); }", texts
    )
    assert got == [zlib.crc32(t.encode()) for t in texts]
    assert got[0] == 4181130011  # the README's worked example
    units = dash.page.evaluate(
        """async () => { const { decimalUnits } = await import('/static/instrument.js');
             return [decimalUnits('0.0001', 4), decimalUnits('1000', 0), decimalUnits('0.25', 2), decimalUnits('0.00001', 5)]; }"""
    )
    assert units == [1, 1000, 25, 1]


def test_order_in_the_browser_is_epoch_then_seq(dash: Dash) -> None:
    dash.open("?i=")
    steps = [(5, 10), (5, 10), (5, 9), (5, 11), (3, 0), (3, 1), (5, 99), (9, 2), (3, 50), (9, 3)]
    got = dash.page.evaluate(
        """async (steps) => { const { Order } = await import('/static/order.js');
             const order = new Order(); return steps.map(([e, s]) => order.accept(e, s)); }""",
        steps,
    )
    # Never a lower or equal seq within an epoch; another epoch, smaller or larger, is a reset;
    # an epoch left behind (a bridge that has not seen the new run yet) never comes back.
    assert got == ["next", "", "", "next", "reset", "next", "", "reset", "", "next"]


def test_a_new_simulator_epoch_shows_verified_books_promptly(dash: Dash, pipeline: Pipeline) -> None:
    ids = ["BTC-USD", "ETH-USD"]
    dash.open("?i=" + ",".join(ids))
    dash.wait_live(ids)
    before = {i: dash.panel(i) for i in ids}
    pipeline.sim.stop()
    pipeline.sim.start()  # another run of the market on the same port: a new epoch, seqs from 0 again

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", pipeline.sim_port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_for(listening, 30, 0.02, "the simulator to listen again")
    back = time.monotonic()
    dash.wait(
        """(before) => Object.entries(before).every(([id, epoch]) => {
             const p = [...document.querySelectorAll('.panel')].find((x) => x.dataset.instrument === id);
             return p && Number(p.dataset.epoch) !== epoch && p.dataset.state === 'live'
               && p.querySelector('.badge').dataset.verified === 'ok';
           })""",
        {i: p["epoch"] for i, p in before.items()},
        what="verified books of the new epoch in every panel",
    )
    took = time.monotonic() - back
    print(f"new epoch on screen {took:.2f} s after the simulator listened again")
    # The ingestor's reconnect backoff is most of it; the bridge adds one GET.
    assert took < 10.0, f"the new epoch took {took:.1f} s to show"
    for inst in ids:
        now = dash.panel(inst)
        assert now["seq"] < before[inst]["seq"], f"{inst}: the new run's seqs start again, lower ({before[inst]['seq']} -> {now['seq']})"
    dash.wait_progress(dash.seqs(ids), "books of the new epoch to keep coming")
    assert dash.page.locator("#conn").get_attribute("data-state") == "live"
    assert dash.errors == [], f"console errors: {dash.errors}"


def test_phone_width_has_no_horizontal_overflow(browser: Any, pipeline: Pipeline) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{pipeline.url}/?i=BTC-USD,EUR-USD,ES-DEC26")
        page.wait_for_function(
            "() => document.querySelectorAll('.panel[data-state=\"live\"]').length === 3", timeout=WAIT_MS
        )
        widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1], f"page is {widths[0]} px wide in a {widths[1]} px viewport"
        too_wide = page.evaluate(
            "[...document.querySelectorAll('.panel')].filter((p) => p.getBoundingClientRect().right > innerWidth).length"
        )
        assert too_wide == 0
    finally:
        context.close()


def test_theme_toggle_by_keyboard_is_remembered(dash: Dash) -> None:
    dash.open("?i=BTC-USD")
    dash.wait_live(["BTC-USD"])
    assert dash.page.evaluate("document.documentElement.dataset.theme") == "dark", "dark is the default"
    for _ in range(30):
        dash.page.keyboard.press("Tab")
        if dash.page.evaluate("document.activeElement.id") == "theme":
            break
    else:
        raise AssertionError("the theme toggle cannot be reached with Tab")
    outline = dash.page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), "keyboard focus must be visible"
    dash.page.keyboard.press("Enter")
    assert dash.page.evaluate("document.documentElement.dataset.theme") == "light"
    assert dash.page.locator("#theme").get_attribute("aria-pressed") == "true"
    dash.page.reload()
    assert dash.page.evaluate("document.documentElement.dataset.theme") == "light", "the light theme was not remembered"


def test_bridge_restart_shows_disconnected_then_recovers(dash: Dash, pipeline: Pipeline) -> None:
    ids = ["BTC-USD", "ETH-USD"]
    dash.open("?i=" + ",".join(ids))
    dash.wait_live(ids)
    pipeline.kill_bridge()
    dash.wait("() => document.querySelector('#conn').dataset.state !== 'live'", what="the indicator to leave 'live'")
    assert "Disconnected" in dash.page.locator("#conn").inner_text() or "Reconnecting" in dash.page.locator("#conn").inner_text()
    dash.wait(
        "() => [...document.querySelectorAll('.panel')].every((p) => p.dataset.state === 'stale')",
        what="every panel to go stale while disconnected",
    )
    assert "Disconnected since" in dash.panel("BTC-USD")["status"]
    before = dash.seqs(ids)

    pipeline.start_bridge()
    dash.wait("() => document.querySelector('#conn').dataset.state === 'live'", what="the socket to come back by itself", timeout=40_000)
    dash.wait_live(ids, "panels after the bridge came back")
    dash.wait_progress(before, "books to move on after the reconnect")


def test_redis_restart_shows_stale_then_recovers(dash: Dash, pipeline: Pipeline) -> None:
    ids = ["SOL-USD", "AAPL"]
    dash.open("?i=" + ",".join(ids))
    dash.wait_live(ids)
    pipeline.redis.kill()
    try:
        dash.wait(
            "() => [...document.querySelectorAll('.panel')].every((p) => p.dataset.state === 'stale')",
            what="panels to go stale without Redis",
        )
        status = dash.panel("SOL-USD")["status"]
        assert re.search(r"stale since \d\d:\d\d:\d\d|no update since \d\d:\d\d:\d\d", status, re.I), status
        before = dash.seqs(ids)
    finally:
        pipeline.redis.start()
    dash.wait_live(ids, "panels after Redis came back")
    dash.wait_progress(before, "books to move on after the Redis restart")
    assert dash.page.locator("#conn").get_attribute("data-state") == "live"
