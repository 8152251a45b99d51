"""A real `agentctl serve` (the simulator as its model) and Debian's Chromium driven by Playwright for Python."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, sync_playwright

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import serve_with_model
from tests.support import REPO_ROOT, ApiClient

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Written by the tests on every run; one phone and one desktop screenshot are committed under docs/ by hand.
SCREENSHOTS = REPO_ROOT / ".agentctl" / "screenshots"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# Installed before the page's own scripts: records long tasks, CSP violations, and anything a hostile payload runs.
_PROBES = """
window.__longTasks = [];
window.__cspViolations = [];
window.__xss = [];
try {
  new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longTasks.push(e.duration); })
    .observe({ type: "longtask", buffered: true });
} catch (e) {}
document.addEventListener("securitypolicyviolation",
  (e) => window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI));
"""


@pytest.fixture(scope="module")
def web_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[ApiClient]:
    server = serve_with_model(tmp_path_factory.mktemp("web"), migrated_database_url, simulator)
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is missing: `make services` installs Debian's chromium package")
    # As root (CI containers) Chromium refuses to start with its sandbox.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
    yield launched
    launched.close()


class Tab:
    """A page of its own browser context, with what its console said and what the probes recorded."""

    def __init__(self, context: BrowserContext, base_url: str) -> None:
        self.context = context
        self.base_url = base_url
        self.page: Page = context.new_page()
        self.console: list[ConsoleMessage] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda message: self.console.append(message))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: object) -> None:
        self.dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.dismiss()  # type: ignore[attr-defined]

    def open(self) -> Page:
        self.page.goto(self.base_url + "/")
        self.page.wait_for_function("() => document.documentElement.dataset.ready === 'true'")
        return self.page

    def csp_violations(self) -> list[str]:
        reported = self.page.evaluate("window.__cspViolations") or []
        logged = [m.text for m in self.console if "Content Security Policy" in m.text]
        return [*reported, *logged]


@pytest.fixture
def new_tab(browser: Browser, web_server: ApiClient) -> Iterator:
    """Tabs in fresh browser contexts (no cookies); each checked for CSP violations and page errors at the end."""
    tabs: list[Tab] = []

    def make(viewport: dict[str, int] = DESKTOP, base_url: str | None = None) -> Tab:
        context = browser.new_context(viewport=viewport)
        context.add_init_script(_PROBES)
        tab = Tab(context, base_url or web_server.server.base_url)
        tabs.append(tab)
        return tab

    yield make
    try:
        for tab in tabs:
            assert tab.csp_violations() == []
            assert tab.errors == []
    finally:
        for tab in tabs:
            tab.context.close()
