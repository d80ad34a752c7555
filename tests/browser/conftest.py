"""A real headless Chromium: Debian's ``chromium``, driven by Playwright's Python package.

Nothing here downloads a browser build: Playwright launches the system
browser (``scripts/test.sh`` installs it where missing). A page records every
console error and uncaught exception, so a broken ``client.js`` fails the
tests that load it.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from playwright.async_api import Browser, Page, async_playwright

pytestmark = pytest.mark.integration

#: As the machine's notes advise for a root, offline Chromium: no sandbox (root),
#: and none of the background connections a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise AssertionError("Debian's chromium is missing: scripts/test.sh installs it")
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Watched:
    """A page and what went wrong on it: console errors and uncaught exceptions."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def problems(self, *, network_ok: bool = False) -> list[str]:
        """Errors so far; ``network_ok`` forgives the browser's own lines about a
        server that was down (a refused connect or fetch, or a proxy's 502 for
        it), which a page cannot silence."""
        if not network_ok:
            return list(self.errors)
        return [e for e in self.errors if not _network(e)]


def _network(text: str) -> bool:
    return "WebSocket connection to" in text or "net::ERR_" in text or "502 (Bad Gateway)" in text


@pytest.fixture
async def watched(browser: Browser) -> AsyncIterator[Watched]:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    w = Watched(page)
    page.on("console", lambda m: w.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: w.errors.append(f"uncaught: {exc}"))
    try:
        yield w
    finally:
        await page.close()
