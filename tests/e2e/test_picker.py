"""The dashboard's instrument picker with a venue-sized universe, in a real headless Chromium.

One pipeline (`marketdata sim --universe 1000` and the ingestor and a bridge, as
subprocesses) and one browser serve the module; each test opens its own browser
context. The simulator runs at 5 events/s per instrument on average (5,000 in all),
so even the quietest instrument gets a book every couple of seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from marketdata.instruments import Instrument, universe
from tests.e2e.browser import Pipeline, find_chromium, launch_chromium

pytestmark = pytest.mark.browser

WAIT_MS = 20_000  # the longest any condition may take before the test fails
SIZE, SEED = 1000, 4
UNIVERSE = universe(SIZE, SEED)
GENERATED = sorted(UNIVERSE[8:], key=lambda i: i.activity)
QUIET, BUSY = GENERATED[0], GENERATED[-1]

VISIBLE_JS = "() => [...document.querySelectorAll('#picker-list label.chip:not([hidden]) input')].map((b) => b.value)"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        reason = "no system Chromium (apt-get install chromium, or set MD_CHROMIUM): browser tests need one"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must run them")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def pipeline(chromium: str) -> Iterator[Pipeline]:
    with Pipeline(rate=5.0, seed=SEED, sim_args=["--universe", str(SIZE)]) as running:
        yield running


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()
    finally:
        playwright.stop()


class Picker:
    """One page of the dashboard, driven through its instrument picker."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def open(self, query: str) -> None:
        self.page.goto(f"{self.base}/{query}")
        self.wait(f"() => document.querySelectorAll('#picker-list label.chip').length === {SIZE}", what="the picker to list every instrument")

    def visible(self) -> list[str]:
        return self.page.evaluate(VISIBLE_JS)

    def panel_ids(self) -> list[str]:
        return self.page.evaluate("[...document.querySelectorAll('.panel')].map((p) => p.dataset.instrument)")

    def wait(self, js: str, arg: Any = None, what: str = "") -> Any:
        try:
            return self.page.wait_for_function(js, arg=arg, timeout=WAIT_MS)
        except Exception as exc:  # Playwright's TimeoutError: say what we waited for
            raise AssertionError(f"timed out waiting for {what or js}: {exc}") from None

    def wait_url(self, ids: list[str]) -> None:
        query = "?i=" + ",".join(ids)
        self.wait("(q) => location.search === q", query, what=f"the URL to be {query}")

    def wait_live(self, ids: list[str]) -> None:
        self.wait(
            """(ids) => ids.every((id) => {
                 const p = [...document.querySelectorAll('.panel')].find((x) => x.dataset.instrument === id);
                 return p && p.dataset.state === 'live' && p.querySelector('.badge').dataset.verified === 'ok';
               })""",
            ids,
            what=f"live, verified panels {ids}",
        )

    def seq(self, instrument: str) -> int:
        return self.page.evaluate(
            "(id) => Number([...document.querySelectorAll('.panel')].find((p) => p.dataset.instrument === id).dataset.seq)",
            instrument,
        )

    def wait_newer(self, instrument: str, seq: int) -> None:
        self.wait(
            "([id, seq]) => { const p = [...document.querySelectorAll('.panel')].find((x) => x.dataset.instrument === id);"
            " return p && Number(p.dataset.seq) > seq; }",
            [instrument, seq],
            what=f"a newer book of {instrument} than seq {seq}",
        )


@pytest.fixture
def picker(browser: Any, pipeline: Pipeline) -> Iterator[Picker]:
    pipeline.wait_ready()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield Picker(page, pipeline.url)
    context.close()


def _matches(inst: Instrument, text: str) -> bool:
    haystack = f"{inst.id} {inst.description} {inst.kind}".lower()
    return all(word in haystack for word in text.lower().split())


def test_the_bridge_lists_the_whole_universe(pipeline: Pipeline) -> None:
    listed = pipeline.instruments()
    assert [i["id"] for i in listed] == [i.id for i in UNIVERSE]
    assert {i["kind"] for i in listed} == {"crypto", "equity", "fx", "future"}


def test_typing_narrows_the_list_and_picking_adds_a_panel_and_updates_the_url(picker: Picker) -> None:
    picker.open("?i=BTC-USD")
    picker.wait_live(["BTC-USD"])
    assert len(picker.visible()) == SIZE, "with no filter every instrument is listed"
    # a thousand chips scroll inside the picker: the books stay near the top of the page
    box = picker.page.locator("#picker-list").bounding_box()
    assert box is not None and box["height"] < 160, f"the picker list is {box} tall"
    top = picker.page.evaluate("document.getElementById('panels').getBoundingClientRect().top")
    assert top < 250, f"the panels start {top} px down the page"

    text = QUIET.id.lower()
    picker.page.locator("#picker-filter").fill(text)
    expected = [i.id for i in UNIVERSE if i.id != "BTC-USD" and _matches(i, text)]
    picker.wait("(n) => document.querySelectorAll('#picker-list label.chip:not([hidden])').length === n", len(expected) + 1, what="the list to narrow")
    shown = picker.visible()
    assert shown[0] == "BTC-USD", "the picked instrument stays first and visible"
    assert shown[1] == QUIET.id, "the exact id ranks first among the matches"
    assert sorted(shown[1:]) == sorted(expected)
    assert picker.page.locator("#picker-count").text_content() == f"{len(expected)} of {SIZE - 1} match"

    picker.page.locator(f'#picker-list input[value="{QUIET.id}"]').check()
    picker.wait_url(["BTC-USD", QUIET.id])
    assert picker.panel_ids() == ["BTC-USD", QUIET.id]
    picker.wait_live([QUIET.id])
    seq = picker.seq(QUIET.id)
    picker.wait_newer(QUIET.id, seq)  # books flow for the quietest instrument too
    assert picker.visible()[:2] == ["BTC-USD", QUIET.id], "picked instruments come first, in panel order"
    assert picker.errors == [], f"console errors: {picker.errors}"


def test_a_description_filter_and_the_keyboard_pick_the_busiest(picker: Picker) -> None:
    picker.open("?i=ETH-USD")
    picker.wait_live(["ETH-USD"])
    page = picker.page
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "picker-filter", "'/' focuses the filter"

    text = BUSY.description
    page.keyboard.type(text)
    expected = [i.id for i in UNIVERSE if i.id != "ETH-USD" and _matches(i, text)]
    assert BUSY.id in expected
    picker.wait("(n) => document.querySelectorAll('#picker-list label.chip:not([hidden])').length === n", len(expected) + 1, what="the list to narrow")
    page.keyboard.press("Escape")
    assert page.locator("#picker-filter").input_value() == "", "Escape clears the filter"
    assert len(picker.visible()) == SIZE

    page.keyboard.type(BUSY.id.lower())
    page.keyboard.press("Enter")  # picks the first match: the exact id
    picker.wait_url(["ETH-USD", BUSY.id])
    picker.wait_live([BUSY.id])
    assert page.locator("#picker-filter").input_value() == "", "the filter is cleared after a pick"

    # Down from the filter moves into the list, at the first instrument not picked yet
    page.keyboard.type("usd-")
    page.keyboard.press("ArrowDown")
    first = page.evaluate("document.activeElement.value")
    assert first == next(i.id for i in UNIVERSE if i.id.lower().startswith("usd-") and i.id not in ("ETH-USD", BUSY.id))
    page.keyboard.press("Space")
    picker.wait_url(["ETH-USD", BUSY.id, first])
    # the list is one stop in the tab order, however many instruments it holds
    page.locator("#picker-filter").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('#picker-list') !== null")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('#picker-list') === null"), "Tab leaves the list"
    assert picker.errors == [], f"console errors: {picker.errors}"


def test_the_url_selects_generated_instruments(picker: Picker) -> None:
    ids = [BUSY.id, GENERATED[len(GENERATED) // 2].id, "USD-JPY"]
    picker.open("?i=" + ",".join(ids))
    picker.wait_live(ids)
    assert picker.panel_ids() == ids
    assert picker.visible()[:3] == ids, "the picked instruments lead the list"
    checked = picker.page.evaluate("[...document.querySelectorAll('#picker-list input:checked')].map((b) => b.value)")
    assert checked == ids
    picker.page.get_by_role("button", name=f"Remove {ids[1]}").click()
    picker.wait_url([ids[0], ids[2]])
    assert not picker.page.locator(f'#picker-list input[value="{ids[1]}"]').is_checked()
    assert picker.errors == [], f"console errors: {picker.errors}"
