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
    assert len(re.findall(r"plotly\.js v\d", text)) == 1  # plotly.js inlined once, not per figure
    root = str(page.parents[2])
    assert root not in text and "/tmp" not in text
    assert "sweeps/fake" in text  # the source, relative to the results folder
    for heading in ("Against the baseline", "Random noise", "Minimal adversarial perturbations", "Layer weights",
                    "Sweep structure", "Pareto front", "Parameter importance", "Best configuration"):
        assert f"<h2>{heading}" in text, heading
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    # Markdown emphasis of the family's text is rendered, never printed.
    prose = re.sub(r"<script.*?</script>", "", text, flags=re.S)
    assert "<em>MDE (80 %)</em>" in prose and "*MDE" not in prose and "**" not in prose
    # Every trial links its folder, relative to the page, and the link resolves.
    links = re.findall(r'<a href="([^"]+)">(run_trial_[^<]+)</a>', text)
    assert len(links) == 16
    for href, name in links:
        assert not href.startswith("/") and (page.parent / href).resolve().name == name
        assert (page.parent / href).is_dir()
    # 5 configurations (4 regularized): no importance, a reason instead; the parallel coordinates are drawn.
    assert "Not computed: 4 configurations × 3 seeds, fewer than 8 distinct configurations" in text
    assert "one line per run, 5 configurations × 3 seeds" in text


_CHECKS_JS = """
const root = document.documentElement;
const out = {innerWidth: window.innerWidth, clientWidth: root.clientWidth, scrollWidth: root.scrollWidth, tables: []};
document.querySelectorAll("table.sortable").forEach(function (table, i) {
  const box = table.parentElement, style = getComputedStyle(box);
  box.scrollLeft = box.scrollWidth;  // scroll the table's own box to its last column
  const scrolled = box.scrollLeft > 0;
  const heads = table.querySelectorAll("thead th"), last = heads[heads.length - 1].getBoundingClientRect();
  const b = box.getBoundingClientRect();
  out.tables.push({i: i, fits: table.scrollWidth <= box.clientWidth + 1, overflowX: style.overflowX,
                   lastLeft: last.left, lastRight: last.right, boxLeft: b.left, boxRight: b.right,
                   scrolled: scrolled, header: heads[heads.length - 1].textContent});
  box.scrollLeft = 0;
});
return out;
"""


def _driver(chrome: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    # Software WebGL (the parallel coordinates) without the deprecation warning; no GPU here.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--enable-unsafe-swiftshader", "--window-size=1400,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(chrome), options=opts)


def _requests(driver) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def check_page(driver, page: Path, width: int, height: int, min_figures: int = 1) -> dict:
    """Load the page at width x height and assert what a reader needs: no horizontal overflow
    of the page, every table's last column reachable in its own box, every figure drawn, no
    console error and no request beyond the page itself."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(width, height)
    driver.get(page.as_uri())
    n_figs = len(driver.find_elements(By.CSS_SELECTOR, "div.plotly-graph-div"))
    assert n_figs >= min_figures
    # Every figure drew its SVG and a trace (the parallel coordinates: its WebGL lines) into it.
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('div.plotly-graph-div')).every(function (g) {"
        " return g.querySelector('svg.main-svg') && (g.querySelector('g.trace, g.parcoords')); })"))
    assert driver.execute_script("return window.innerWidth") == width
    checks = driver.execute_script(_CHECKS_JS)
    assert checks["scrollWidth"] <= min(checks["innerWidth"], checks["clientWidth"]), checks
    for t in checks["tables"]:
        assert t["boxRight"] <= checks["clientWidth"] + 0.5, t  # the box itself stays on the page
        if not t["fits"]:
            assert t["overflowX"] in ("auto", "scroll") and t["scrolled"], t
        # Scrolled to its end, the box shows the last column (its start too, unless the
        # column alone is wider than the box).
        wider = t["lastRight"] - t["lastLeft"] > t["boxRight"] - t["boxLeft"]
        assert t["lastRight"] <= t["boxRight"] + 1 and (t["lastLeft"] >= t["boxLeft"] - 1 or wider), t
    for div in driver.find_elements(By.CSS_SELECTOR, "div.plotly-graph-div"):
        assert 0 < div.size["width"] <= width and div.size["height"] > 100, div.get_attribute("id")
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    others = [u for u in _requests(driver) if u != page.as_uri() and not u.startswith(("data:", "blob:"))]
    assert others == [], others
    return checks


@pytest.mark.parametrize("width, height", [(1400, 900), (390, 844)])
def test_page_reads_on_desktop_and_phone(page, chrome, width, height):
    driver = _driver(chrome)
    try:
        checks = check_page(driver, page, width, height, min_figures=6)
        assert len(checks["tables"]) >= 6
        if width < 500:  # the per-trial table is wider than a phone: it scrolls in its box
            assert any(not t["fits"] for t in checks["tables"])
    finally:
        driver.quit()


def test_tables_sort_numbers_with_missing_last_filter_and_page(page, chrome, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _driver(chrome)
    try:
        driver.get(page.as_uri())
        tables = driver.find_elements(By.CSS_SELECTOR, "table.sortable")

        # One script per question (not one round trip per cell) keeps this test quick.
        def names(table) -> list[str]:
            return driver.execute_script("return Array.from(arguments[0].tHead.rows[0].cells, "
                                         "function (h) { return h.textContent; })", table)

        def table_with(header: str):
            return next(t for t in tables if header in names(t))

        def column(table, col: int) -> list[str]:  # the rows in their current order
            return driver.execute_script("var c = arguments[1]; return Array.from(arguments[0].tBodies[0].rows, "
                                         "function (r) { return r.cells[c].textContent; })", table, col)

        def shown_rows(table) -> list[str]:
            return driver.execute_script("return Array.from(arguments[0].tBodies[0].rows).filter("
                                         "function (r) { return !r.hidden; }).map(function (r) { return r.textContent; })",
                                         table)

        def header(table, name: str):
            col = names(table).index(name)
            return table.find_elements(By.CSS_SELECTOR, "thead th")[col], col

        # Every trial: Th is '–' for the baseline (and the errored trial's metrics are missing);
        # both sort last in either direction, numbers as numbers.
        trials = table_with("folder")
        for name in ("regularizer.th", "clean_acc"):
            th, col = header(trials, name)
            for _ in range(2):
                th.click()
                cells = column(trials, col)
                nums = [float(c) for c in cells if c != "–"]
                assert cells[len(nums):] == ["–"] * (len(cells) - len(nums)) and len(nums) < len(cells)
                assert nums == sorted(nums, reverse=th.get_attribute("data-dir") == "desc"), (name, cells)

        # The exploratory family: 25 rows per page, a filter box; the CI column sorts by its lower bound.
        expl = table_with("p (BH)")
        visible = shown_rows(expl)
        total = len(column(expl, 0))
        assert total > 25 and len(visible) == 25
        ci, col = header(expl, "95 % CI (uncorrected)")
        ci.click()
        ci.click()  # descending
        lows = [float(c.split(",")[0].strip("[")) for c in column(expl, col) if c.startswith("[")]
        assert len(lows) == total and lows == sorted(lows, reverse=True)
        box = driver.find_element(By.CSS_SELECTOR, ".tabletools input[type=search]")
        box.send_keys("median_l2")
        shown = shown_rows(expl)
        assert 0 < len(shown) < 25 and all("median_l2" in r for r in shown)
        info = driver.find_element(By.CSS_SELECTOR, ".tabletools .pageinfo").text
        assert f"of {len(shown)} rows (filtered from {total})" in info
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
    # The arm_key table of comparison.md, and each sweep's own numbers side by side per arm_key.
    assert "<h3>Arms and where they were trained</h3>" in text
    assert "<h3>Side by side, per sweep (keyed by arm_key)</h3>" in text
    for col in ("a: seeds", "b: seeds", "a: best_<wbr>val_<wbr>acc", "b: best_<wbr>val_<wbr>acc"):
        assert f">{col}</th>" in text, col
    md = (tmp_path / "reports" / "compare-a+b" / "comparison.md").read_text()
    assert "### Side by side, per sweep (keyed by arm_key)" in md and "| a: seeds |" in md


def screenshots(page: Path, out_dir: Path, sizes=((1400, 900), (390, 844))) -> list[Path]:
    """check_page at each size, then a full-height screenshot ``report_<W>x<H>.png`` (palette PNG)."""
    import base64

    from PIL import Image

    chrome = _chromedriver()
    assert chrome, "chromium-driver missing (apt-get install chromium chromium-driver)"
    driver = _driver(chrome)
    paths = []
    try:
        for width, height in sizes:
            check_page(driver, page, width, height)
            # The whole page as laid out in this viewport (no resize: 85vh boxes stay 85vh).
            size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            shot = out_dir / f"report_{width}x{height}.png"
            png = driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}})["data"]
            shot.write_bytes(base64.b64decode(png))
            # 256 colours, octree, no dither: a third of the RGB size, colour bars without bands.
            Image.open(shot).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                                                     dither=Image.Dither.NONE).save(shot, optimize=True)
            paths.append(shot)
    finally:
        driver.quit()
    return paths


if __name__ == "__main__":
    # python tests/test_html_report.py REPORT.html OUT_DIR: the checks above, then screenshots.
    import sys

    for p in screenshots(Path(sys.argv[1]).resolve(), Path(sys.argv[2])):
        print(p, p.stat().st_size)
