"""The batch review page (OUT/index.html): its HTML, and the page in a real headless Chromium.

Browser tests skip only when no Chromium/chromedriver is installed; with
``SLIDESCAN_REQUIRE_BROWSER=1`` (set by ``.ci/run``) they fail instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from report_fixtures import make_report
from scan_helpers import CELL_UM, SLIDE_MPP
from slide_fixtures import square_image, write_pyramid, write_random_bytes

from slidescan.about import RESEARCH_USE_NOTICE
from slidescan.batch.directory import scan_directory
from slidescan.io.pacing import Pacer
from slidescan.report.outcome import SlideOutcome
from slidescan.report.review_page import (
    PAGE_NAME,
    ReviewEntry,
    ReviewPage,
    entry_for,
    render_page,
    script_json,
    tissue_area_mm2,
)
from slidescan.scan.scan_result import ScanOptions

REQUIRE_BROWSER_ENV = "SLIDESCAN_REQUIRE_BROWSER"
HOSTILE = "c_\"'><img src=x onerror=alert(1)>&amp;<script>alert(2)<\\script>"
# name → (slide side, tissue side) in heatmap cells: three tissue areas to sort by
SLIDES = {"a_small.tif": (4, 1), "b_large.tif": (5, 3), f"{HOSTILE}.tif": (4, 2)}
BROKEN = "d_broken.svs"
ALL = sorted([*SLIDES, BROKEN])


class Page(HTMLParser):
    """The parts of the page the tests look at: rows' cells, links, images, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.links: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.scripts: list[dict[str, str | None]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._cell: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "tr" and "data-i" in a:
            self.rows.append({"class": a["class"], "cells": {}, "links": []})
        elif tag == "td" and self.rows:
            self._cell = (a["class"] or "")[2:]
            self.rows[-1]["cells"][self._cell] = ""
        elif tag == "a":
            self.links.append(a["href"] or "")
            if self._cell:
                self.rows[-1]["links"].append(a["href"])
        elif tag == "img":
            self.images.append(a)
        elif tag == "script":
            self.scripts.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell:
            self.rows[-1]["cells"][self._cell] += data


def _slide(path: Path, cells: int, tissue: int) -> Path:
    image = square_image(SLIDE_MPP, cells * CELL_UM, tissue * CELL_UM, (0.0, 0.0))
    return write_pyramid(path, image, mpp=SLIDE_MPP)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> dict[str, Any]:
    """A real directory run with overlays in a sibling folder; the page after every slide."""
    root = tmp_path_factory.mktemp("review")
    slides = root / "slides"
    slides.mkdir()
    for name, (cells, tissue) in SLIDES.items():
        _slide(slides / name, cells, tissue)
    write_random_bytes(slides / BROKEN)
    out, overlays = root / "out", root / "overlays"
    snapshots = []

    def snapshot(outcome: SlideOutcome) -> None:
        snapshots.append((out / PAGE_NAME).read_text(encoding="utf-8"))

    options = ScanOptions(workers=0, device="cpu", progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Pacer, "due", lambda self: True)  # a rewrite after every slide, however quick
        outcomes = scan_directory(
            slides, out, weights=weights, options=options, overlay_dir=overlays,
            on_outcome=snapshot,
        )  # fmt: skip
    return {"out": out, "outcomes": outcomes, "snapshots": snapshots}


def _page(batch: dict[str, Any]) -> str:
    return (batch["out"] / PAGE_NAME).read_text(encoding="utf-8")


def test_one_row_per_slide_with_its_numbers(batch: dict[str, Any]) -> None:
    page = Page(_page(batch))
    assert [r["cells"]["slide"].split("report")[0] for r in page.rows] == ALL
    assert [o.status for o in batch["outcomes"]] == ["done", "done", "done", "failed"]
    rows = {r["cells"]["slide"].split("report")[0]: r for r in page.rows}
    area = (CELL_UM / 1000) ** 2
    for name, (_, tissue) in SLIDES.items():
        cells = rows[name]["cells"]
        assert float(cells["tissue_mm2"]) == pytest.approx(tissue**2 * area, abs=0.006)
        assert cells["call"] in ("POSITIVE", "negative") and cells["status"] == "done"
        assert 0.0 <= float(cells["max_p"]) <= 1.0
    broken = rows[BROKEN]
    assert "failed" in broken["class"].split() and broken["cells"]["error"]
    assert broken["links"] == [] and broken["cells"]["call"] == "—"
    assert RESEARCH_USE_NOTICE in _page(batch)
    assert "4 of 4 slides finished" in _page(batch)


def test_links_are_relative_and_point_at_the_files(batch: dict[str, Any]) -> None:
    out: Path = batch["out"]
    page = Page(_page(batch))
    for row in page.rows[:3]:
        links = [unquote(h) for h in row["links"]]
        assert all(h.startswith("./") for h in links), links  # never a scheme, never absolute
        targets = [(out / h).resolve() for h in links]
        assert all(t.is_file() for t in targets), links
        assert sorted(t.suffix for t in targets) == [".geojson", ".json", ".png"]
        assert any(h.startswith("./../overlays/") for h in links)
    assert {img["src"] for img in page.images} == {
        h for r in page.rows for h in r["links"] if h.endswith(".png")
    }
    assert "./summary.csv" in page.links and "./slidescan.log" in page.links


def test_hostile_slide_name_is_text_only(batch: dict[str, Any]) -> None:
    text = _page(batch)
    page = Page(text)
    assert HOSTILE in [r["cells"]["slide"].split("report")[0][:-4] for r in page.rows]
    # The page's own elements and attributes only: the name is text and quoted URLs.
    assert [tag for tag, _ in page.tags].count("script") == 2
    assert len(page.images) == len(SLIDES)
    assert all(set(a) == {"src", "alt", "loading"} for a in page.images)
    assert all(set(a) == {"href"} for tag, a in page.tags if tag == "a")
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;amp;" in text


def test_script_json_cannot_end_the_script() -> None:
    hostile = {"name": "</script><script>alert(1)</script><!-- \u2028 & >"}
    text = script_json(hostile)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == hostile


def test_entries_with_hostile_text_everywhere() -> None:
    evil = "</script><script>alert(1)</script>\"'<b>&"
    entry = ReviewEntry(
        slide=evil, status="failed", category=evil, flags=evil, error=evil, reliable=False,
        overlay="./x.png",
    )  # fmt: skip
    text = render_page([entry], finished=True, title=evil)
    assert text.count("<script") == 2 and text.count("</script") == 2 and "<b>" not in text
    page = Page(text)
    assert page.images[0]["alt"] == f"heatmap of {evil}"
    assert page.rows[0]["cells"]["error"] == evil


def test_an_unreliable_call_never_wears_a_trusted_badge_and_p_never_rounds_to_1() -> None:
    """Issue 23, item 2: an unreliable negative is not the green "negative" of a reliable one,
    and 0.99999 is not shown as 1.000."""
    entries = [
        ReviewEntry(slide="ok.tif", status="done", positive=False, reliable=True,
                    max_probability=0.99999),
        ReviewEntry(slide="odd.tif", status="done", positive=False, reliable=False,
                    max_probability=0.2),
        ReviewEntry(slide="bad.tif", status="failed", error="boom"),
    ]  # fmt: skip
    text = render_page(entries, finished=True)
    rows = {r["cells"]["slide"]: r for r in Page(text).rows}
    assert rows["ok.tif"]["cells"]["call"] == "negative"
    assert rows["odd.tif"]["cells"]["call"].startswith("negative?")
    assert 'class="badge neg">negative<' in text and text.count('class="badge neg"') == 1
    assert rows["ok.tif"]["cells"]["max_p"] == "> 0.999"
    assert rows["odd.tif"]["cells"]["max_p"] == "0.200"
    assert "3 of 3 slides finished" in text and "1 failed" in text


def test_the_page_names_the_operating_points_of_its_calls() -> None:
    """Issue 22: a folder may mix standard and high calls (reruns, merged runs): the header
    names each point with its seed threshold."""
    entries = [
        ReviewEntry(slide="a.tif", status="done", positive=False, reliable=True,
                    operating_point="standard", seed_threshold=0.9862),
        ReviewEntry(slide="b.tif", status="recalled", positive=True, reliable=True,
                    operating_point="high", seed_threshold=0.98),
        ReviewEntry(slide="c.tif", status="pending"),
    ]  # fmt: skip
    text = render_page(entries, finished=False)
    assert "lesion call: high (seed threshold 0.98); standard (seed threshold 0.9862)" in text
    assert "lesion call" not in render_page(entries[2:], finished=False)


def test_page_updates_after_every_slide_then_stops_reloading(batch: dict[str, Any]) -> None:
    snapshots = batch["snapshots"]
    assert [f"{i} of 4 slides finished" in s for i, s in enumerate(snapshots, 1)] == [True] * 4
    for snapshot in snapshots:
        assert 'http-equiv="refresh"' in snapshot and '"finished": false' in snapshot
        assert len(Page(snapshot).rows) == 4  # pending slides listed too
    assert "not yet done" in snapshots[0] and ">pending<" in snapshots[0]
    final = _page(batch)
    assert 'http-equiv="refresh"' not in final and '"finished": true' in final
    assert "finished" in final and ">pending<" not in final


def test_rewrites_are_paced_but_the_finished_page_always_written(tmp_path: Path) -> None:
    now = [0.0]

    def clock() -> float:  # every reading advances it: each write seems to take 0.25 s
        now[0] += 0.25
        return now[0]

    page = ReviewPage(
        tmp_path, [Path("a.svs"), Path("b.svs"), Path("c.svs")], None,
        pacer=Pacer(share=0.5, clock=clock),
    )  # fmt: skip
    page.add(SlideOutcome(slide="a.svs", status="failed", error="boom"))
    assert "1 of 3 slides finished" in _text(page.path)
    page.add(SlideOutcome(slide="b.svs", status="failed", error="boom"))
    assert "1 of 3 slides finished" in _text(page.path), "rewritten before it was due"
    now[0] += 1.0
    page.add(SlideOutcome(slide="c.svs", status="failed", error="boom"))
    assert "3 of 3 slides finished" in _text(page.path)
    page.add(SlideOutcome(slide="c.svs", status="failed", error="bang"))
    assert page.write(finished=True)
    assert '"finished": true' in _text(page.path) and "bang" in _text(page.path)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_geojson_linked_only_when_it_exists(tmp_path: Path) -> None:
    report = {"call": {"max_probability": 0.25}, "tiles_scanned": 4,
              "attributes": {"cell_level0_px": 100, "slide_mpp": 1.0}}  # fmt: skip
    (tmp_path / "s 1#.json").write_text(json.dumps(report))
    outcome = SlideOutcome(slide="s 1#.svs", status="skipped", heatmap="s 1#.zarr")
    entry = entry_for(outcome, tmp_path, None)
    assert (entry.report, entry.geojson, entry.overlay) == ("./s%201%23.json", "", "")
    assert entry.max_probability == 0.25 and entry.tissue_mm2 == pytest.approx(0.04)
    (tmp_path / "s 1#.geojson").write_text("{}")
    assert entry_for(outcome, tmp_path, None).geojson == "./s%201%23.geojson"
    failed = SlideOutcome(slide="s 1#.svs", status="failed", heatmap="s 1#.zarr", error="x")
    assert entry_for(failed, tmp_path, None).report == "", "no links to an earlier run's files"


def test_tissue_area_from_the_report() -> None:
    report = {"tiles_scanned": 10, "attributes": {"cell_level0_px": 200, "slide_mpp": 0.5}}
    assert tissue_area_mm2(report) == pytest.approx(10 * 0.1**2)
    assert tissue_area_mm2({"tiles_scanned": 3}) is None


def test_a_page_that_cannot_be_written_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / PAGE_NAME).mkdir()  # a folder where the page should go
    page = ReviewPage(tmp_path, [tmp_path / "a.tif"], None)
    with caplog.at_level(logging.WARNING):
        assert page.write() is False
        page.add(SlideOutcome(slide="a.tif", status="done", heatmap="a.zarr"))
    assert "could not write the review page" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == [PAGE_NAME], "no temporaries left"


def test_batch_goes_on_when_the_page_cannot_be_written(
    tmp_path: Path, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    _slide(slides / "a.tif", 4, 2)
    out = tmp_path / "out"
    (out / PAGE_NAME).mkdir(parents=True)
    options = ScanOptions(workers=0, device="cpu", progress=False)
    with caplog.at_level(logging.WARNING):
        outcomes = scan_directory(slides, out, weights=weights, options=options)
    assert [o.status for o in outcomes] == ["done"]
    assert (out / "summary.csv").is_file() and "could not write the review page" in caplog.text


# --- in a real browser -------------------------------------------------------------------------


def _browser_paths() -> tuple[str, str]:
    browser = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = "no Chromium/chromedriver installed (apt-get install chromium chromium-driver)"
    if os.environ.get(REQUIRE_BROWSER_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason}; {REQUIRE_BROWSER_ENV}=1 forbids skipping")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through chromedriver, keeping the console log."""
    browser_path, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2000"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser: Any, path: Path) -> None:
    browser.get(path.resolve().as_uri())
    browser.get_log("browser")  # drop what an earlier page logged: each test sees its own


def _errors(browser: Any) -> list[dict[str, Any]]:
    return [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _visible(browser: Any, column: str = "slide") -> list[str]:
    """The data-v sort keys of one column over the visible rows, top to bottom."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#slides tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.querySelector('td.c-' + arguments[0]).dataset.v)",
        column,
    )


def test_browser_loads_the_page_without_errors(browser: Any, batch: dict[str, Any]) -> None:
    _open(browser, batch["out"] / PAGE_NAME)
    assert browser.execute_script("return document.readyState") == "complete"
    assert len(browser.find_elements("css selector", "#slides tbody tr")) == len(ALL)
    assert _visible(browser) == [n.lower() for n in ALL]
    assert browser.find_element("id", "shown").text == "4 of 4 shown"  # the script ran
    assert "alert" not in json.dumps(browser.get_log("browser"))
    assert _errors(browser) == []


def test_browser_sorts_by_a_clicked_column(browser: Any, batch: dict[str, Any]) -> None:
    _open(browser, batch["out"] / PAGE_NAME)
    header = browser.find_element("css selector", 'th[data-key="tissue_mm2"] button')
    header.click()
    areas = _visible(browser, "tissue_mm2")
    assert areas[-1] == "", "the failed slide (no area) sorts last"
    assert [float(a) for a in areas[:-1]] == sorted(float(a) for a in areas[:-1])
    names = _visible(browser)
    assert names == ["a_small.tif", f"{HOSTILE}.tif".lower(), "b_large.tif", BROKEN]
    assert header.find_element("xpath", "..").get_attribute("aria-sort") == "ascending"
    header.click()
    assert _visible(browser) == ["b_large.tif", f"{HOSTILE}.tif".lower(), "a_small.tif", BROKEN]
    assert "sort=tissue_mm2-" in browser.current_url  # kept across the periodic reload
    browser.find_element("css selector", 'th[data-key="slide"] button').click()
    assert _visible(browser) == [n.lower() for n in ALL]
    assert _errors(browser) == []


def test_browser_filter_hides_rows(browser: Any, batch: dict[str, Any]) -> None:
    _open(browser, batch["out"] / PAGE_NAME)
    box = browser.find_element("id", "filter")
    box.send_keys("large")
    assert _visible(browser) == ["b_large.tif"]
    assert browser.find_element("id", "shown").text == "1 of 4 shown"
    box.clear()
    box.send_keys("onerror")  # the hostile name is plain text, so it is searchable
    assert _visible(browser) == [f"{HOSTILE}.tif".lower()]
    box.clear()
    box.send_keys(" ")
    assert len(_visible(browser)) == 4
    browser.execute_script(
        "const s = document.getElementById('show'); s.value = 'failed';"
        "s.dispatchEvent(new Event('change'));"
    )
    assert _visible(browser) == [BROKEN]
    assert _errors(browser) == []


def test_browser_loads_the_overlays(browser: Any, batch: dict[str, Any]) -> None:
    _open(browser, batch["out"] / PAGE_NAME)
    images = browser.find_elements("css selector", "#slides img")
    assert len(images) == len(SLIDES)
    for image in images:
        browser.execute_script("arguments[0].scrollIntoView()", image)  # they load lazily
    deadline = time.monotonic() + 10
    widths: list[int] = []
    while time.monotonic() < deadline:
        widths = [
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
            for i in images
        ]
        if all(widths):
            break
        time.sleep(0.1)
    assert all(w and w > 0 for w in widths), widths
    assert _errors(browser) == []


def test_browser_running_page_reloads_and_keeps_the_view(browser: Any, tmp_path: Path) -> None:
    entries = [
        ReviewEntry(slide="one.tif", status="done", positive=False, reliable=True),
        ReviewEntry(slide="two.tif", status="pending"),
    ]
    path = tmp_path / PAGE_NAME
    path.write_text(render_page(entries, finished=False, refresh_seconds=1), encoding="utf-8")
    _open(browser, path)
    assert "1 of 2 slides finished" in browser.find_element("id", "progress").text
    browser.find_element("id", "filter").send_keys("two")
    browser.find_element("tag name", "body").click()  # leave the box: reloads wait for that
    browser.execute_script("window.notReloaded = true")
    deadline = time.monotonic() + 10
    while browser.execute_script("return window.notReloaded === true"):
        assert time.monotonic() < deadline, "the running page never reloaded"
        time.sleep(0.2)
    assert browser.find_element("id", "filter").get_attribute("value") == "two"
    assert _visible(browser) == ["two.tif"]
    assert _errors(browser) == []


def test_final_page_picks_up_slides_another_run_finished(tmp_path: Path) -> None:
    page = ReviewPage(tmp_path, [tmp_path / "a.tif", tmp_path / "b.tif"], None)
    page.add(SlideOutcome("a.tif", "busy", error="a.zarr: being written by another run"))
    page.add(SlideOutcome("b.tif", "busy", error="b.zarr: being written by another run"))
    # The other run finishes a.tif (b.tif it never finishes).
    (tmp_path / "a.zarr").mkdir()
    finished = make_report(slide="a.tif", heatmap="a.zarr")
    call = dataclasses.replace(finished.call, category="macrometastasis", largest_diameter_mm=2.4)
    (tmp_path / "a.json").write_text(json.dumps(dataclasses.replace(finished, call=call).to_dict()))
    assert "macrometastasis" not in (tmp_path / PAGE_NAME).read_text()
    page.write(finished=True)
    assert page.entries["a.tif"].status == "done"
    assert page.entries["a.tif"].category == "macrometastasis"
    assert page.entries["b.tif"].status == "busy"
    assert "macrometastasis" in (tmp_path / PAGE_NAME).read_text()
