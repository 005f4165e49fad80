"""The HTML report in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, installed
by ``.ci/run``): every picture loads, the tables hold the methods and metrics, the regression is
flagged, nothing is fetched from outside the report folder, and history text is shown, not run."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import cv2
import pytest

from matchmill.evaluation.benchmarks.history import append_history, history_rows
from matchmill.cli import main

from tests.helpers.report_history import build_history

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HOSTILE = '<script>document.title="pwned"</script><img src="http://example.invalid/x.png">'

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (.ci/run installs Debian's chromium and chromium-driver)"
)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_browser")
    history = build_history(root, latest_pose_pairs=True)
    # a method whose name and dataset are markup: the page must show them as text
    append_history(history.history_url, history_rows(
        run_id="hostile", date=_dt.datetime(2025, 3, 3, tzinfo=_dt.timezone.utc), benchmark="pose", dataset=HOSTILE,
        out_url=f"file://{root}/gone", method=HOSTILE, metrics={"auc@5": 0.1}, num_pairs=1, config_hash=None,
        model_hashes={}))
    out = root / "report"
    assert main(["report", history.history_url, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}", "--window-size=1280,1000",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _cell_texts(driver, table_css: str) -> list[list[str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tr')).map("
        "r => Array.from(r.cells).map(c => c.textContent.trim()))", table_css)


def test_report_renders_in_chromium(report_dir, browser):
    browser.get((report_dir / "report.html").as_uri())
    assert browser.title == "matchmill benchmark report"

    # every picture is linked and loaded at its real size; nothing outside the folder is fetched
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    pngs = sorted(p.name for p in report_dir.glob("*.png"))
    assert sorted(src for src, _, _ in images) == pngs
    assert any(name.endswith("_pose_cdf.png") for name in pngs) and any(name.endswith("_mma.png") for name in pngs)
    for src, complete, width in images:
        assert complete and width == cv2.imread(str(report_dir / src)).shape[1] > 0, src
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('[src], [href]'))"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'))")
    assert links and all(":" not in link and not link.startswith("/") for link in links), links
    css = browser.execute_script(
        "return Array.from(document.styleSheets).flatMap(s => Array.from(s.cssRules).map(r => r.cssText)).join(' ')")
    assert css and "url(" not in css and "@import" not in css
    assert browser.execute_script(
        "return document.scripts.length + document.querySelectorAll('link, iframe, object, embed').length") == 0

    # the overview tables hold every method and metric
    overview = _cell_texts(browser, "table.overview")
    headers = [row for row in overview if row[0] == "metric"]
    assert ["metric", "orb", "sift"] in headers and ["metric", "sift"] in headers
    metrics = {row[0] for row in overview}
    assert {f"mma@{t}" for t in range(1, 11)} | {"homography_acc@1", "num_matches_mean", "auc@5", "auc@20"} <= metrics

    # the regression of sift's MMA is flagged, visibly, and orb's value is not
    regressions = _cell_texts(browser, "table.regressions")
    assert ["hpatches", "sift", "mma@1"] in [row[:1] + row[2:4] for row in regressions]
    assert "regression(s) against the previous run" in browser.find_element("id", "regressions").text
    row = next(r for r in overview if r[0] == "mma@1")
    assert "regression" not in row[1] and row[2].endswith("▼ regression")
    flags = browser.find_elements("css selector", "table.overview .flag")
    assert flags and all(f.is_displayed() for f in flags)

    # markup from the history is text: no script ran, the name is shown literally
    assert HOSTILE in browser.find_element("tag name", "body").text

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height), 12000))
    shot = report_dir / "screenshot.png"
    assert browser.save_screenshot(str(shot))
    image = cv2.imread(str(shot))
    assert image.shape[1] == 1280 and image.shape[0] > 1500 and image.std() > 10
