"""analysis.report --html: one self-contained page, opened in headless Chromium.

The input is the fake sweep of test_analysis (Ray's layout, numbers drawn at random).
The browser test needs the Debian packages chromium and chromium-driver; the set-up
installs them with apt-get when they are missing and skips with the reason when it cannot.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_analysis import write_fake_sweep

from analysis.report import main as report_main

CHROMEDRIVER = ("chromedriver", "/usr/bin/chromedriver")


def _chromedriver() -> str | None:
    for name in CHROMEDRIVER:
        path = shutil.which(name) or (name if Path(name).exists() else None)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chrome() -> str:
    """The chromedriver path, installing chromium + chromium-driver with apt-get when missing."""
    pytest.importorskip("selenium")
    if _chromedriver() is None:
        if shutil.which("apt-get") is None:
            pytest.skip("chromium-driver missing and no apt-get to install it")
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True,
                           capture_output=True, timeout=600, env={"DEBIAN_FRONTEND": "noninteractive",
                                                                  "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"could not install chromium / chromium-driver with apt-get: {e}")
    path = _chromedriver()
    if path is None:
        pytest.skip("chromium-driver not found after installing it")
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """report.html of a gathered fake sweep (written through the CLI)."""
    base = tmp_path_factory.mktemp("html")
    exp = write_fake_sweep(base / "sweeps", "fake")
    assert report_main([str(exp), "--html"]) == 0
    return base / "reports" / "fake" / "report.html"


def test_page_is_self_contained_and_holds_no_machine_paths(page):
    text = page.read_text()
    # No resource is fetched: no src/href to http(s) and no <link> stylesheet or script URL.
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?https?:""", text)
    assert "Plotly" in text and text.count("plotly-graph-div") >= 5
    root = str(page.parents[2])
    assert root not in text and "/tmp" not in text
    assert "sweeps/fake" in text  # the source, relative to the results folder
    for heading in ("Against the baseline", "Random noise", "Minimal adversarial perturbations", "Layer weights",
                    "Pareto front", "Parameter importance"):
        assert f"<h2>{heading}" in text, heading


def test_page_renders_in_headless_chromium(page, chrome, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chrome), options=opts)
    try:
        driver.get(page.as_uri())
        n_figs = len(driver.find_elements(By.CSS_SELECTOR, "div.plotly-graph-div"))
        assert n_figs >= 5
        # Every figure drew its SVG and at least one trace into it.
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(
            By.CSS_SELECTOR, "div.plotly-graph-div svg.main-svg g.trace")) >= n_figs)
        for div in driver.find_elements(By.CSS_SELECTOR, "div.plotly-graph-div"):
            assert div.find_elements(By.CSS_SELECTOR, "svg.main-svg"), div.get_attribute("id")
            assert div.size["height"] > 100
        tables = driver.find_elements(By.CSS_SELECTOR, "table.sortable")
        assert len(tables) >= 4 and all(t.find_elements(By.CSS_SELECTOR, "tbody tr") for t in tables)

        # Clicking a header sorts the rows by that column (descending on the second click).
        table = next(t for t in tables if "p (BH)" in t.text)
        headers = [h.text for h in table.find_elements(By.CSS_SELECTOR, "thead th")]
        col = headers.index("diff")
        header = table.find_elements(By.CSS_SELECTOR, "thead th")[col]

        def column() -> list[float]:
            return [float(r.find_elements(By.TAG_NAME, "td")[col].text)
                    for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

        header.click()
        assert column() == sorted(column())
        header.click()
        assert column() == sorted(column(), reverse=True)

        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 100, 12000))
        shot = tmp_path / "report_screenshot.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
    finally:
        driver.quit()


def test_cross_sweep_html(tmp_path):
    """Two sweeps in one page: arms labelled by configuration, one figure set, no machine paths."""
    from analysis.gather import gather

    for name, seeds, rng in (("a", (0, 1), 0), ("b", (2, 3), 1)):
        gather(write_fake_sweep(tmp_path / "sweeps", name, seeds=seeds, error_trial=False, rng_seed=rng), tmp_path)
    assert report_main(["a", "b", "--results", str(tmp_path), "--html"]) == 0
    text = (tmp_path / "reports" / "compare-a+b" / "report.html").read_text()
    assert "Comparison: a, b" in text and "<h2>Against the baseline" in text and str(tmp_path) not in text
    assert text.count("plotly-graph-div") >= 3
