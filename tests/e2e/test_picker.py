"""The dashboard's instrument picker with a venue-sized universe, in a real headless Chromium.

One pipeline (`marketdata sim --universe 1000` and the ingestor and a bridge, as
subprocesses) and one browser serve the module; each test opens its own browser
context. The simulator runs at 5 events/s per instrument on average (5,000 in all),
so even the quietest instrument gets a book every couple of seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from marketdata.instruments import Instrument, universe
from tests.e2e.browser import Dash, Pipeline
from tests.support import wait_for

pytestmark = pytest.mark.browser

SIZE, SEED = 1000, 4
UNIVERSE = universe(SIZE, SEED)
GENERATED = sorted(UNIVERSE[8:], key=lambda i: i.activity)
QUIET, BUSY = GENERATED[0], GENERATED[-1]

VISIBLE_JS = "() => [...document.querySelectorAll('#picker-list label.chip:not([hidden]) input')].map((b) => b.value)"
NARROWED_JS = "(n) => document.querySelectorAll('#picker-list label.chip:not([hidden])').length === n"


@pytest.fixture(scope="module")
def pipeline(chromium: str) -> Iterator[Pipeline]:
    with Pipeline(rate=5.0, seed=SEED, sim_args=["--universe", str(SIZE)]) as running:
        yield running


def open_picker(dash: Dash, query: str) -> None:
    dash.open(query)
    dash.wait(f"() => document.querySelectorAll('#picker-list label.chip').length === {SIZE}", what="the picker to list every instrument")


def visible(dash: Dash) -> list[str]:
    return dash.page.evaluate(VISIBLE_JS)


def wait_url(dash: Dash, ids: list[str]) -> None:
    query = "?i=" + ",".join(ids)
    dash.wait("(q) => location.search === q", query, what=f"the URL to be {query}")


def _matches(inst: Instrument, text: str) -> bool:
    haystack = f"{inst.id} {inst.description} {inst.kind}".lower()
    return all(word in haystack for word in text.lower().split())


def test_the_bridge_lists_the_whole_universe(pipeline: Pipeline) -> None:
    # The list is published by the ingestor once it has subscribed; the bridge serves what it read last.
    listed = wait_for(lambda: pipeline.instruments() or None, timeout=30, what="the bridge to list the instruments")
    assert [i["id"] for i in listed] == [i.id for i in UNIVERSE]
    assert {i["kind"] for i in listed} == {"crypto", "equity", "fx", "future"}


def test_typing_narrows_the_list_and_picking_adds_a_panel_and_updates_the_url(dash: Dash) -> None:
    open_picker(dash, "?i=BTC-USD")
    dash.wait_live(["BTC-USD"])
    assert len(visible(dash)) == SIZE, "with no filter every instrument is listed"
    # a thousand chips scroll inside the picker: the books stay near the top of the page
    box = dash.page.locator("#picker-list").bounding_box()
    assert box is not None and box["height"] < 160, f"the picker list is {box} tall"
    top = dash.page.evaluate("document.getElementById('panels').getBoundingClientRect().top")
    assert top < 250, f"the panels start {top} px down the page"

    text = QUIET.id.lower()
    dash.page.locator("#picker-filter").fill(text)
    expected = [i.id for i in UNIVERSE if i.id != "BTC-USD" and _matches(i, text)]
    dash.wait(NARROWED_JS, len(expected) + 1, what="the list to narrow")
    shown = visible(dash)
    assert shown[0] == "BTC-USD", "the picked instrument stays first and visible"
    assert shown[1] == QUIET.id, "the exact id ranks first among the matches"
    assert sorted(shown[1:]) == sorted(expected)
    assert dash.page.locator("#picker-count").text_content() == f"{len(expected)} of {SIZE - 1} match"

    dash.page.locator(f'#picker-list input[value="{QUIET.id}"]').check()
    wait_url(dash, ["BTC-USD", QUIET.id])
    assert dash.panel_ids() == ["BTC-USD", QUIET.id]
    dash.wait_live([QUIET.id])
    dash.wait_progress(dash.seqs([QUIET.id]), "a newer book of the quietest instrument")
    assert visible(dash)[:2] == ["BTC-USD", QUIET.id], "picked instruments come first, in panel order"
    assert dash.errors == [], f"console errors: {dash.errors}"


def test_a_description_filter_and_the_keyboard_pick_the_busiest(dash: Dash) -> None:
    open_picker(dash, "?i=ETH-USD")
    dash.wait_live(["ETH-USD"])
    page = dash.page
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "picker-filter", "'/' focuses the filter"

    text = BUSY.description
    page.keyboard.type(text)
    expected = [i.id for i in UNIVERSE if i.id != "ETH-USD" and _matches(i, text)]
    assert BUSY.id in expected
    dash.wait(NARROWED_JS, len(expected) + 1, what="the list to narrow")
    page.keyboard.press("Escape")
    assert page.locator("#picker-filter").input_value() == "", "Escape clears the filter"
    assert len(visible(dash)) == SIZE

    page.keyboard.type(BUSY.id.lower())
    page.keyboard.press("Enter")  # picks the first match: the exact id
    wait_url(dash, ["ETH-USD", BUSY.id])
    dash.wait_live([BUSY.id])
    assert page.locator("#picker-filter").input_value() == "", "the filter is cleared after a pick"

    # Down from the filter moves into the list, at the first instrument not picked yet
    page.keyboard.type("usd-")
    page.keyboard.press("ArrowDown")
    first = page.evaluate("document.activeElement.value")
    assert first == next(i.id for i in UNIVERSE if i.id.lower().startswith("usd-") and i.id not in ("ETH-USD", BUSY.id))
    page.keyboard.press("Space")
    wait_url(dash, ["ETH-USD", BUSY.id, first])
    # the list is one stop in the tab order, however many instruments it holds
    page.locator("#picker-filter").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('#picker-list') !== null")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('#picker-list') === null"), "Tab leaves the list"
    assert dash.errors == [], f"console errors: {dash.errors}"


def test_the_url_selects_generated_instruments(dash: Dash) -> None:
    ids = [BUSY.id, GENERATED[len(GENERATED) // 2].id, "USD-JPY"]
    open_picker(dash, "?i=" + ",".join(ids))
    dash.wait_live(ids)
    assert dash.panel_ids() == ids
    assert visible(dash)[:3] == ids, "the picked instruments lead the list"
    checked = dash.page.evaluate("[...document.querySelectorAll('#picker-list input:checked')].map((b) => b.value)")
    assert checked == ids
    dash.page.get_by_role("button", name=f"Remove {ids[1]}").click()
    wait_url(dash, [ids[0], ids[2]])
    assert not dash.page.locator(f'#picker-list input[value="{ids[1]}"]').is_checked()
    assert dash.errors == [], f"console errors: {dash.errors}"
