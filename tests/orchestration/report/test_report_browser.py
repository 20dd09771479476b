"""report.html in a real headless browser: Debian's Chromium driven by selenium through /usr/bin/chromedriver
(nothing is downloaded), the report served on 127.0.0.1. The page must load without console errors and
show every figure (loaded, non-zero natural size, displayed).

Marked ``integration`` (CI's ``make test`` runs it). Without Chromium, its driver or selenium the test fails
when ``CI`` is set (a CI image that lost its browser must not pass silently) and is skipped otherwise;
``make setup`` installs ``chromium chromium-driver`` from the system's packages when it can.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)  # fmt: skip
# Every <img>: its src, whether it finished loading, its natural size and whether it takes up space.
IMAGES_JS = """
return Array.from(document.images).map(i => ({
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
    shown: i.getClientRects().length > 0 && i.offsetWidth > 0 && i.offsetHeight > 0
}));
"""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Fail under CI (the browser test must run there), skip elsewhere."""
    message = f"{reason}: run `make setup` (as root or with sudo it runs apt-get install chromium chromium-driver)"
    if in_ci():
        pytest.fail(f"CI: {message}")
    pytest.skip(message)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium with its console log kept, a fresh profile, no network services of its own."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        unavailable(f"{' and '.join(missing)} missing")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium (a dev extra) is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium then never runs Selenium Manager, which would download one
    browser = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the base class names it `format`
        pass


@contextlib.contextmanager
def served(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def page_problems(browser: Any, url: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Load ``url``; returns its images (:data:`IMAGES_JS`) and what is wrong: SEVERE console entries and
    images not loaded, of zero natural size or not displayed."""
    browser.get_log("browser")  # drop what an earlier page left
    browser.get(url)
    assert browser.execute_script("return document.readyState") == "complete"
    images = browser.execute_script(IMAGES_JS)
    problems = [f"console: {e['message']}" for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    problems += [
        f"image {i['src']}: complete={i['complete']}, natural size {i['width']}×{i['height']}, shown={i['shown']}"
        for i in images
        if not (i["complete"] and i["width"] > 0 and i["height"] > 0 and i["shown"])
    ]
    return images, problems


def test_report_html_loads_cleanly_with_every_figure(
    driver: Any, ablation_report: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    shutil.copytree(ablation_report, site)
    # the checker must see what it is there for: a missing figure and a script error on a broken page
    (site / "broken.html").write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        '<img src="figures/missing.png" alt="gone"><script>undefined_function();</script></body></html>'
    )
    with served(site) as base:
        images, problems = page_problems(driver, f"{base}/report.html")
        assert problems == []
        assert driver.title == "Ablation report: ranked"
        figures = sorted(p.relative_to(site).as_posix() for p in (site / "figures").glob("*.png"))
        assert sorted(i["src"] for i in images) == figures  # every figure on the page, each once
        assert any(f.startswith("figures/cd_") for f in figures)
        assert all(i["width"] >= 900 for i in images)
        assert driver.find_element("css selector", 'img[src="figures/cd_auroc.png"]').is_displayed()

        _, broken = page_problems(driver, f"{base}/broken.html")
        assert any("undefined_function" in p for p in broken), broken
        assert any(p.startswith("image figures/missing.png") for p in broken), broken
