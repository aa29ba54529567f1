"""What the browser tests share: the system Chromium, one browser per module, and `dash`, a page on the module's pipeline.

Each browser test module defines its own `pipeline` fixture (tests.e2e.browser.Pipeline,
started as that module needs it); `dash` opens a fresh browser context on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.browser import WAIT_MS, Dash, Pipeline, find_chromium, launch_chromium


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
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def dash(browser: Any, pipeline: Pipeline) -> Iterator[Dash]:
    pipeline.wait_ready()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    d = Dash(page, pipeline.url)
    page.on("console", lambda m: d.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: d.errors.append(f"uncaught: {e}"))
    yield d
    context.close()
