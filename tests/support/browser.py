"""A real browser for the web pages' tests: Debian's Chromium, driven by Playwright (headless), with Chromium's
virtual WebAuthn authenticator standing in for a passkey (DevTools protocol, ``WebAuthn`` domain).

Chromium is found on PATH (``./dev test`` installs Debian's ``chromium`` package). Without it the browser tests
are skipped, except in CI (``LABRELAY_CI=1``), where a missing browser fails the run. Every page is opened on
``localhost`` (WebAuthn does not accept an IP address as a relying party), and every request the page makes is
recorded so that a test can check that nothing left for another origin.

Screenshots: with ``LABRELAY_SCREENSHOTS=DIR`` the tests that pass save their pages' screenshots in DIR
(``./dev screenshots`` writes docs/screenshots/).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # the machine has no network: no background calls to refuse
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        if os.environ.get("LABRELAY_CI"):
            pytest.fail("chromium is missing (Debian: apt-get install chromium); ./dev test installs it")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only the browser tests load Playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """One browser page on one relay, with what it asked for and what it complained about."""

    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    authenticator: str | None = None
    cdp: Any = None

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)
        self.page.wait_for_load_state("networkidle")

    def add_passkey_device(self) -> None:
        """Chromium's virtual authenticator: a platform passkey with user verification, always present."""
        self.cdp = self.page.context.new_cdp_session(self.page)
        self.cdp.send("WebAuthn.enable")
        result = self.cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": True,
                    "hasUserVerification": True,
                    "isUserVerified": True,
                    "automaticPresenceSimulation": True,
                }
            },
        )
        self.authenticator = result["authenticatorId"]

    def passkeys(self) -> list[dict[str, Any]]:
        assert self.cdp is not None
        assert self.authenticator is not None
        creds: list[dict[str, Any]] = self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator})[
            "credentials"
        ]
        return creds

    def status(self) -> str:
        return str(self.page.locator("#status").inner_text())

    def wait_status(self, kind: str, timeout: float = 60_000) -> str:
        """Wait for the live status line to turn ``ok``, ``warn`` (nothing went wrong, and nothing was done) or
        ``error``; fail with its text on another one."""
        self.page.wait_for_selector("#status.ok, #status.warn, #status.error", timeout=timeout)
        classes = self.page.locator("#status").get_attribute("class") or ""
        text = self.status()
        assert kind in classes.split(), f"status is {classes!r}: {text}"
        return text

    def submit(self, selector: str, kind: str, timeout: float = 60_000) -> str:
        """Clear the status line, click ``selector`` and wait for the status ``kind`` (``wait_status``): a status
        left by an earlier click is never taken for this one's."""
        self.page.evaluate("() => { const s = document.getElementById('status'); s.className = 'status'; }")
        self.page.locator(selector).click()
        return self.wait_status(kind, timeout)

    def shot(self, name: str) -> None:
        target = os.environ.get("LABRELAY_SCREENSHOTS")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            self.page.evaluate("() => window.scrollTo(0, 0)")  # the status line is sticky: show it at the top
            self.page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def localhost(url: str) -> str:
    return url.replace("127.0.0.1", "localhost")


@pytest.fixture
def open_tab(browser: Any) -> Iterator[Any]:
    """``open_tab(relay_url)``: a fresh browser context (no cookie, no storage) on that relay, as localhost."""
    contexts = []

    def make(url: str, *, locale: str = "fr-FR") -> Tab:
        context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        tab = Tab(page, localhost(url))
        page.on("request", lambda r: tab.requests.append(r.url))
        page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: tab.errors.append(str(e)))
        return tab

    yield make
    for context in contexts:
        context.close()
