"""Real-browser tests of the dashboard: Debian's chromium driven by Playwright's Python package with
the system executable (no ``playwright install``, no download). Skipped, with the reason, only where
chromium is not installed; a missing Playwright package is an error (CI installs it)."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("GLM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium():
    """A headless chromium; one per session, closed at the end."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium not found at {CHROMIUM}: apt-get install chromium chromium-driver "
                    "(or set GLM_CHROMIUM to its path)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()
