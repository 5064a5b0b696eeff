"""The HTML reports opened as a person opens them: headless Chromium, network off.

Driver: selenium with Debian's `chromium-driver`, which Debian builds from the same source
and version as its `chromium`, so driver and browser always match (playwright's own browser
download does not work offline, and pointing it at a foreign Chromium is unsupported).
`.ci/run` installs both packages. Elsewhere the test skips, naming what to install; with
$CI set it fails instead, so CI cannot pass without really opening the pages.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from run_folders import curve_rows, write_run

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
VPT = "embedding.vectors_per_token"
# Collects uncaught errors and rejected promises from the first line of the page on.
ERROR_HOOK = """window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e)));
window.addEventListener('unhandledrejection', e => window.__errors.push(String(e.reason)));"""


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        why = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; .ci/run installs them")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                "downloadThroughput": 0, "uploadThroughput": 0})
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ERROR_HOOK})
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, page: Path) -> None:
    """Load the file; fail on any JavaScript error, console error, or request off this file."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("performance")  # drop what earlier pages left
    driver.get_log("browser")
    driver.get(page.resolve().as_uri())
    count = int(driver.execute_script("return document.body.dataset.plotCount"))
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.querySelectorAll('.js-plotly-plot .main-svg').length > 0 && "
        "document.querySelectorAll('.js-plotly-plot').length") == count)
    assert driver.execute_script("return window.__errors") == []
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    requested = {json.loads(e["message"])["message"].get("params", {}).get("request", {}).get("url", "")
                 for e in driver.get_log("performance")} - {""}
    assert {u for u in requested if not u.startswith(("file:", "data:"))} == set()  # it opens offline


def every_plot_drew(driver) -> int:
    """Count of plots; each must have drawn data (a trace layer with points or lines)."""
    drawn = driver.execute_script("""
        return Array.from(document.querySelectorAll('figure.plot')).map(f => {
          const plot = f.querySelector('.js-plotly-plot');
          const r = plot ? plot.getBoundingClientRect() : {width: 0, height: 0};
          return {id: f.dataset.plotId, w: r.width, h: r.height,
                  marks: plot ? plot.querySelectorAll('.scatterlayer .trace path, .scatterlayer .point, .barlayer .point').length : 0};
        });""")
    bad = [d for d in drawn if d["w"] < 200 or d["h"] < 200 or d["marks"] == 0]
    assert bad == []
    return len(drawn)


def not_blank(png: bytes) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert pixels.std() > 10 and len(np.unique(pixels)) > 20


def test_compare_report_renders_offline(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from tiframework.reports.compare.report import compare

    for vpt, level in ((2, 0.15), (16, 0.05)):
        for seed in range(3):
            write_run(tmp_path / "runs" / f"v{vpt}-s{seed}", [f"{VPT}={vpt}", f"training.seed={seed}"],
                      curve_rows(level, 10 * seed + vpt), images=True)
    done = compare([str(tmp_path / "runs")], by=[VPT], out_dir=tmp_path / "out", wandb=False,
                   a="vectors_per_token=16", b="vectors_per_token=2", margin=0.05)
    open_page(browser, done.files["html"])
    # The answer first, one row per metric, with the direction chosen by --a/--b and the equivalence margin.
    answer = browser.find_elements(By.CSS_SELECTOR, "#answer-table tbody tr")
    assert len(answer) == len(done.result["headline"]) and "B (vectors_per_token=2) better" in answer[0].text
    assert "within ±0.05 (TOST" in answer[0].text and "A = vectors_per_token=16" in browser.page_source
    rows = browser.find_elements(By.CSS_SELECTOR, "#verdict-table tbody tr")
    assert len(rows) == len(done.result["pairs"]) and all(r.is_displayed() for r in rows)
    assert "vectors_per_token=2 better" in rows[0].text
    # Answer above verdicts above every plot; the intervals say they are per test.
    answer_top = browser.find_element(By.ID, "answer-table").rect["y"]
    table_top = browser.find_element(By.ID, "verdict-table").rect["y"]
    assert answer_top < table_top
    assert all(f.rect["y"] > table_top for f in browser.find_elements(By.CSS_SELECTOR, "figure.plot"))
    headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#verdict-table th")]
    assert "A − B [95% CI, per test]" in headers
    # No run plateaued in either arm: a degenerate test, shown and left out of Holm's family.
    assert "left out of the Holm family" in rows[-1].text and "runs that reached a plateau" in rows[-1].text
    assert "higher is worse" in browser.find_element(By.ID, "verdict-table").text  # the fried score
    arm_text = browser.find_element(By.ID, "arm-table").text
    assert "chosen checkpoint step" in arm_text
    # Every run here was scored on one eval image set: the report says so.
    assert "same eval images" in browser.find_element(By.ID, "notes").text
    tested = sum(m["tested"] for m in done.result["metrics"].values())
    assert every_plot_drew(browser) == 2 * len(done.result["metrics"]) + tested + 1  # + a paired-difference plot each
    assert browser.find_element(By.CSS_SELECTOR, "figure[data-plot-id='diff-eval-clip-fidelity']").is_displayed()
    images = browser.find_elements(By.CSS_SELECTOR, ".image-grid img")
    assert len(images) == 6 * 4 and all(browser.execute_script("return arguments[0].naturalWidth", i) == 96
                                        for i in images)
    not_blank(browser.get_screenshot_as_png())
    not_blank(browser.find_element(By.CSS_SELECTOR, "figure.plot").screenshot_as_png)


def test_sweep_report_page_renders_offline(browser, tmp_path):
    import yaml
    from selenium.webdriver.common.by import By

    from runs import QUICKSTART
    from tiframework.reports.sweep.report import write_report
    from tiframework.sweeps.launch import run_sweep

    sweep = tmp_path / "search.yaml"
    sweep.write_text(yaml.safe_dump({
        "experiment": str(QUICKSTART), "seeds": [0, 1, 2], "sampler": "grid",
        "overrides": {"model.preset": "tiny", "logging.runs_dir": str(tmp_path / "runs"), "logging.wandb": False},
        "space": {VPT: {"type": "categorical", "choices": [1, 2, 4]},
                  "training.learning_rate": {"type": "categorical", "choices": ["0.02", "0.005"]}},
        "confirm": {"top": 2, "seeds": 2}}))
    run_sweep(sweep, runner="run_folders:FolderRunner", progress=False)
    out = write_report(str(tmp_path / "runs" / "sweeps" / "search"))
    open_page(browser, out / "report.html")
    # The confirmed answer leads: above the trial table, the top 2 and the baseline on fresh seeds.
    confirmed = browser.find_element(By.ID, "confirmed")
    assert confirmed.rect["y"] < browser.find_element(By.ID, "trial-table").rect["y"]
    assert "Confirmed best" in confirmed.text and "Winner's curse" in confirmed.text and "Holm p" in confirmed.text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#confirm-table tbody tr")) == 3
    rows = browser.find_elements(By.CSS_SELECTOR, "#trial-table tbody tr")
    assert len(rows) == 6 and all(r.is_displayed() for r in rows)
    headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#trial-table th")]
    assert {"best_fidelity_ci_low", "best_fidelity_ci_high"} <= set(headers)
    assert every_plot_drew(browser) == 3  # per trial, vs VPT, vs learning rate
    not_blank(browser.get_screenshot_as_png())
