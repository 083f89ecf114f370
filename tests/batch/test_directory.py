"""Batch runs over a folder: per-slide outputs, summary.csv, failures recorded, resumable reruns."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from scan_helpers import CELL_UM, FAST, SLIDE_MPP, write_untrained_weights
from scan_helpers import invoke as invoke_cli
from slide_fixtures import (
    square_image,
    tissue_image,
    write_pyramid,
    write_random_bytes,
    write_truncated,
)
from typer.testing import Result

from slidescan.batch.directory import find_slides
from slidescan.batch.slide_jobs import run_batch
from slidescan.batch.summary import LOG_NAME, SummaryBook, write_summary
from slidescan.engine.weights import load_weights, save_weights
from slidescan.io.heatmap import read_heatmap
from slidescan.io.outputs import SlideOutputs, is_complete, read_report, report_path
from slidescan.io.pacing import Pacer
from slidescan.report.outcome import SUMMARY_FIELDS, SlideOutcome
from slidescan.report.slide_report import SlideReport
from slidescan.scan.scan_result import ScanOptions, ScanResult
from slidescan.scan.scanner import Scanner

GOOD = ["a_good.tif", "b_good.tif"]
BAD = ["c_truncated.tif", "d_noise.svs"]


def _good_slide(path: Path, at_cells: tuple[int, int]) -> Path:
    """A 4×4-cell slide with a 2×2-cell purple square of "tissue"."""
    at_um = (at_cells[0] * CELL_UM, at_cells[1] * CELL_UM)
    return write_pyramid(
        path, square_image(SLIDE_MPP, 4 * CELL_UM, 2 * CELL_UM, at_um), mpp=SLIDE_MPP
    )


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("slides")
    _good_slide(d / GOOD[0], (0, 0))
    _good_slide(d / GOOD[1], (1, 2))
    # Noisy pixels: the cut lands inside level 0's tiles, not between whole levels.
    src = tmp_path_factory.mktemp("source") / "noisy.tif"
    noisy = write_pyramid(src, tissue_image(768, 1024)[0], mpp=SLIDE_MPP)
    write_truncated(d / BAD[0], noisy, keep=0.5)
    write_random_bytes(d / BAD[1])
    (d / "notes.txt").write_text("not a slide")
    (d / ".hidden.tif").write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory, slide_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("good")
    for name in GOOD:
        shutil.copy(slide_dir / name, d / name)
    return d


class CountingScanner:
    """A scanner for run_batch that records which slides were actually scanned."""

    def __init__(self, weights: Path, **options: Any) -> None:
        opts = {"workers": 0, "device": "cpu", "progress": False, **options}
        self.scanner = Scanner(load_weights(weights), ScanOptions(**opts))
        self.scanned: list[str] = []
        self.recalled: list[str] = []

    def fingerprints(self, slide: Path) -> tuple[str, str]:
        return self.scanner.fingerprints(slide)

    def write(self, slide: Path, outputs: SlideOutputs) -> ScanResult:
        self.scanned.append(slide.name)
        return self.scanner.write(slide, outputs)

    def recall(self, slide: Path, outputs: SlideOutputs, previous: SlideReport) -> ScanResult:
        self.recalled.append(slide.name)
        return self.scanner.recall(slide, outputs, previous)


def read_summary(out_dir: Path) -> dict[str, dict[str, str]]:
    with open(out_dir / "summary.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == SUMMARY_FIELDS
        return {row["slide"]: row for row in reader}


def outputs(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.iterdir())


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def invoke(*args: str | Path) -> Result:
    return invoke_cli("run", *args)


EXPECTED_OUTPUTS = [
    *(f"{stem}{ext}" for stem in ("a_good", "b_good") for ext in (".geojson", ".json", ".zarr")),
    "summary.csv",
]


def test_find_slides_ignores_other_files(slide_dir: Path) -> None:
    assert [p.name for p in find_slides(slide_dir)] == GOOD + BAD


def test_batch_outputs_and_summary(slide_dir: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    scan_one = CountingScanner(weights)
    outcomes = run_batch(find_slides(slide_dir), out, scan_one)

    assert [o.slide for o in outcomes] == GOOD + BAD
    assert [o.status for o in outcomes] == ["done", "done", "failed", "failed"]
    # Nothing for failed slides but their story in the log; no partials.
    assert outputs(out) == sorted([*EXPECTED_OUTPUTS, LOG_NAME])
    log = (out / LOG_NAME).read_text()
    for name in BAD:
        assert f"{name}: FAILED" in log
    assert log.count(": FAILED: ") == len(BAD) and "Traceback (most recent call last)" in log
    for name in GOOD:
        heatmap = out / name.replace(".tif", ".zarr")
        assert is_complete(heatmap)
        probability, tissue, attrs = read_heatmap(heatmap)
        assert attrs["slide_path"] == name, "outputs name the slide by file name only"
        assert int(tissue.sum()) == 4 and np.isfinite(probability[tissue]).all()
        assert read_report(heatmap)["slide"] == name

    rows = read_summary(out)
    assert list(rows) == GOOD + BAD  # one row per slide file, notes.txt not among them
    for name in GOOD:
        row = rows[name]
        assert row["status"] == "done" and row["error"] == ""
        assert row["heatmap"] == name.replace(".tif", ".zarr")
        assert row["tiles"] == "4" and row["positive"] in ("true", "false")
        assert row["category"] in ("negative", "itc", "micrometastasis", "macrometastasis")
        assert float(row["largest_lesion_mm"]) >= 0.0 and int(row["lesions"]) >= 0
        assert row["reliable"] == "true" and row["flags"] == ""
    for name in BAD:
        row = rows[name]
        assert row["status"] == "failed" and row["error"] and not row["error"].startswith(name)
        assert row["heatmap"] == row["category"] == row["tiles"] == row["reliable"] == ""


def test_rerun_skips_complete_and_overwrite_redoes(
    good_dir: Path, weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    first = CountingScanner(weights)
    run_batch(find_slides(good_dir), out, first)
    assert first.scanned == GOOD
    before = {name: stamp(out / name) for name in EXPECTED_OUTPUTS[:-1]}
    reports = {name: read_report(out / f"{name[:-4]}.zarr") for name in GOOD}

    again = CountingScanner(weights)
    outcomes = run_batch(find_slides(good_dir), out, again)
    assert again.scanned == []
    assert [o.status for o in outcomes] == ["skipped", "skipped"]
    assert {name: stamp(out / name) for name in before} == before  # untouched
    rows = read_summary(out)
    for name in GOOD:  # the summary still carries the earlier results
        call = reports[name]["call"]
        assert rows[name]["status"] == "skipped"
        assert rows[name]["category"] == call["category"]
        assert rows[name]["largest_lesion_mm"] == f"{call['largest_diameter_mm']:.3f}"
        assert rows[name]["lesions"] == str(len(call["lesions"]))
        assert rows[name]["tiles"] == str(reports[name]["tiles_scanned"])

    redo = CountingScanner(weights, overwrite=True)
    outcomes = run_batch(find_slides(good_dir), out, redo, overwrite=True)
    assert redo.scanned == GOOD
    assert [o.status for o in outcomes] == ["done", "done"]
    after = {name: stamp(out / name) for name in before}
    assert all(after[name] != before[name] for name in before)
    assert outputs(out) == EXPECTED_OUTPUTS


def test_interrupted_slides_are_redone(good_dir: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    run_batch(find_slides(good_dir), out, CountingScanner(weights))
    # a_good: killed between the renames (heatmap without report).
    (out / "a_good.json").unlink()
    # b_good: killed mid-scan (only the hidden partials).
    shutil.rmtree(out / "b_good.zarr")
    (out / "b_good.json").unlink()
    (out / ".b_good.zarr.partial").mkdir()
    (out / ".b_good.zarr.partial" / "junk").write_text("x")
    (out / ".b_good.json.partial").write_text("{")

    scan_one = CountingScanner(weights)
    outcomes = run_batch(find_slides(good_dir), out, scan_one)
    assert scan_one.scanned == GOOD
    assert [o.status for o in outcomes] == ["done", "done"]
    assert outputs(out) == EXPECTED_OUTPUTS
    assert all(is_complete(out / f"{name[:-4]}.zarr") for name in GOOD)


@pytest.mark.parametrize("changed", [{"stride": 48}, {"tta": True}, {"mpp": SLIDE_MPP}])
def test_rerun_with_other_settings_is_redone(
    good_dir: Path, weights: Path, tmp_path: Path, changed: dict[str, Any]
) -> None:
    out = tmp_path / "results"
    run_batch(find_slides(good_dir), out, CountingScanner(weights))
    other = CountingScanner(weights, **changed)
    outcomes = run_batch(find_slides(good_dir), out, other)
    assert other.scanned == GOOD, "a result made with other settings must not be kept"
    assert [o.status for o in outcomes] == ["redone", "redone"]
    assert [r["status"] for r in read_summary(out).values()] == ["redone", "redone"]
    same = CountingScanner(weights, **changed)
    assert [o.status for o in run_batch(find_slides(good_dir), out, same)] == ["skipped"] * 2
    assert same.scanned == []
    assert outputs(out) == EXPECTED_OUTPUTS


def test_a_new_threshold_is_recalled_not_rescanned(
    good_dir: Path, weights: Path, tmp_path: Path
) -> None:
    """Issue 23, item 4: the threshold changes only the call, so only the call is redone."""
    out = tmp_path / "results"
    run_batch(find_slides(good_dir), out, CountingScanner(weights))
    heatmaps = {name: read_heatmap(out / f"{name[:-4]}.zarr")[0] for name in GOOD}
    other = CountingScanner(weights, threshold=0.25)
    outcomes = run_batch(find_slides(good_dir), out, other)
    assert other.scanned == [] and other.recalled == GOOD
    assert [o.status for o in outcomes] == ["recalled", "recalled"]
    assert [r["status"] for r in read_summary(out).values()] == ["recalled", "recalled"]
    for name in GOOD:
        heatmap = out / f"{name[:-4]}.zarr"
        np.testing.assert_array_equal(read_heatmap(heatmap)[0], heatmaps[name])
        report = read_report(heatmap)
        assert report["call"]["seed_threshold"] == 0.25
        assert report["fingerprint"] == other.scanner.fingerprint(good_dir / name)
    same = CountingScanner(weights, threshold=0.25)
    assert [o.status for o in run_batch(find_slides(good_dir), out, same)] == ["skipped"] * 2
    assert outputs(out) == EXPECTED_OUTPUTS


def test_a_named_sensitivity_is_recalled_and_recorded(tmp_path: Path, good_dir: Path) -> None:
    """Issue 22: --sensitivity high is the card's seed threshold, named in the report; going
    back and forth between operating points redoes only the call."""
    weights = tmp_path / "w.pt"
    loaded = load_weights(write_untrained_weights(weights))
    loaded.card.operating_points = {"high": {"seed_threshold": 0.3}}
    save_weights(weights, loaded.model, loaded.card)
    out = tmp_path / "results"
    run_batch(find_slides(good_dir), out, CountingScanner(weights))
    standard = read_report(out / "a_good.zarr")
    assert "operating_point" not in standard["settings"]  # earlier versions' results stay valid
    # A result of a version before operating points: its heatmap and report never named one.
    heatmap = out / "a_good.zarr"
    group = zarr.open_group(str(heatmap), mode="r+")
    del group.attrs["operating_point"]
    old = json.loads(report_path(heatmap).read_text())
    del old["attributes"]["operating_point"]
    report_path(heatmap).write_text(json.dumps(old))
    high = CountingScanner(weights, sensitivity="high")
    outcomes = run_batch(find_slides(good_dir), out, high)
    assert high.scanned == [] and [o.status for o in outcomes] == ["recalled", "recalled"]
    report = read_report(out / "a_good.zarr")
    assert report["settings"]["operating_point"] == "high"
    assert report["call"]["seed_threshold"] == 0.3
    assert read_heatmap(out / "a_good.zarr")[2]["operating_point"] == "high"
    row = read_summary(out)["a_good.tif"]
    assert (row["operating_point"], row["seed_threshold"]) == ("high", "0.3")
    back = CountingScanner(weights)
    outcomes = run_batch(find_slides(good_dir), out, back)
    assert back.scanned == [] and [o.status for o in outcomes] == ["recalled", "recalled"]
    assert read_report(out / "a_good.zarr")["fingerprint"] == standard["fingerprint"]
    # A given seed threshold is a custom point, named so in the report.
    custom = CountingScanner(weights, threshold=0.4)
    run_batch(find_slides(good_dir), out, custom)
    assert read_report(out / "a_good.zarr")["settings"]["operating_point"] == "custom"


def test_other_weights_redo_and_reports_name_their_fingerprint(
    good_dir: Path, weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    run_batch(find_slides(good_dir), out, CountingScanner(weights))
    first = read_report(out / "a_good.zarr")
    assert first["settings"]["weights_sha256"] == load_weights(weights).sha256
    other_weights = write_untrained_weights(tmp_path / "other.pt", seed=1)
    other = CountingScanner(other_weights)
    run_batch(find_slides(good_dir), out, other)
    assert other.scanned == GOOD
    second = read_report(out / "a_good.zarr")
    assert second["fingerprint"] != first["fingerprint"]
    assert read_heatmap(out / "a_good.zarr")[2]["fingerprint"] == second["fingerprint"]


def test_rerun_makes_missing_overlays(good_dir: Path, weights: Path, tmp_path: Path) -> None:
    out, overlays = tmp_path / "results", tmp_path / "overlays"
    run_batch(find_slides(good_dir), out, CountingScanner(weights))
    again = CountingScanner(weights)
    outcomes = run_batch(find_slides(good_dir), out, again, overlay_dir=overlays)
    # An overlay is drawn from the stored heatmap: no rescan.
    assert again.scanned == [] and [o.status for o in outcomes] == ["recalled", "recalled"]
    assert sorted(p.name for p in overlays.iterdir()) == ["a_good.png", "b_good.png"]
    (overlays / "b_good.png").unlink()  # deleted by hand: made again, the other kept
    third = CountingScanner(weights)
    outcomes = run_batch(find_slides(good_dir), out, third, overlay_dir=overlays)
    assert third.recalled == ["b_good.tif"] and third.scanned == []
    assert [o.status for o in outcomes] == ["skipped", "recalled"]
    assert sorted(p.name for p in overlays.iterdir()) == ["a_good.png", "b_good.png"]


def test_slide_locked_by_a_live_run_is_left_alone(
    good_dir: Path, weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    out.mkdir()
    holder = {"host": "elsewhere", "pid": 4242, "started": time.time()}
    (out / ".a_good.zarr.lock").write_text(json.dumps(holder))
    scanner = CountingScanner(weights)
    outcomes = run_batch(find_slides(good_dir), out, scanner)
    assert [o.status for o in outcomes] == ["busy", "done"]
    assert "elsewhere pid 4242" in outcomes[0].error
    assert not (out / "a_good.zarr").exists() and (out / ".a_good.zarr.lock").exists()


def test_same_stem_slides_do_not_share_an_output(
    good_dir: Path, weights: Path, tmp_path: Path
) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(good_dir / GOOD[0], slides / "same.svs")  # OpenSlide reads it by content
    shutil.copy(good_dir / GOOD[1], slides / "same.tif")
    out = tmp_path / "results"
    for _ in range(2):  # first run and rerun
        outcomes = run_batch(find_slides(slides), out, CountingScanner(weights))
        assert [o.slide for o in outcomes] == ["same.svs", "same.tif"]
        assert outcomes[0].status in ("done", "skipped")
        assert outcomes[1].status == "failed" and "same.zarr" in outcomes[1].error
    assert read_report(out / "same.zarr")["slide"] == "same.svs"


# --- the same through the command line --------------------------------------------------------


def test_a_missing_operating_point_fails_the_batch_once_before_anything_is_written(
    good_dir: Path, weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    result = invoke(good_dir, "--out", out, "--weights", weights, "--sensitivity", "high", *FAST)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.count("names no 'high' operating point") == 1
    assert not out.exists()


def test_cli_batch_with_failures_exits_1(slide_dir: Path, weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = invoke(slide_dir, "--out", out, "--weights", weights, *FAST)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert outputs(out) == sorted([*EXPECTED_OUTPUTS, LOG_NAME, "index.html", "thumbnails"])
    assert sorted(p.name for p in (out / "thumbnails").iterdir()) == ["a_good.png", "b_good.png"]
    rows = read_summary(out)
    assert [rows[n]["status"] for n in GOOD + BAD] == ["done", "done", "failed", "failed"]
    failures = result.stderr.splitlines()
    for name in BAD:
        (line,) = [ln for ln in failures if name in ln]
        assert line.startswith(f"FAILED {name}: ") and line.count(name) == 1
        assert not rows[name]["error"].startswith(name), "summary.csv names the slide once"
    for name in GOOD:
        assert name in result.stdout and "research use only" in result.stdout
    assert "2/4 slides done (2 done), 2 failed" in result.stdout


def test_cli_batch_all_good_exit_0_and_resumes(
    good_dir: Path, weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    overlays = tmp_path / "overlays"
    args = [good_dir, "--out", out, "--weights", weights, *FAST]
    first = invoke(*args, "--overlay", overlays)
    assert first.exit_code == 0, first.output
    assert "2/2 slides done (2 done), 0 failed" in first.stdout
    assert f"review page: {out / 'index.html'}" in first.stdout
    assert sorted(p.name for p in overlays.iterdir()) == ["a_good.png", "b_good.png"]
    before = stamp(out / "a_good.zarr")

    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "already done" not in again.stdout, "skipped slides are counted, not listed"
    assert "2/2 slides done (2 skipped), 0 failed" in again.stdout
    assert stamp(out / "a_good.zarr") == before
    assert [r["status"] for r in read_summary(out).values()] == ["skipped", "skipped"]

    redo = invoke(*args, "--overwrite")
    assert redo.exit_code == 0, redo.output
    assert "already done" not in redo.stdout
    assert stamp(out / "a_good.zarr") != before
    assert [r["status"] for r in read_summary(out).values()] == ["done", "done"]


def test_summary_merges_the_rows_of_runs_sharing_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "summary.csv"
    # Run 1 scanned a and found b busy; run 2 scanned b and found a busy, then wrote last.
    write_summary(path, [SlideOutcome("a.tif", "done", tiles=4), SlideOutcome("b.tif", "busy")])
    write_summary(path, [SlideOutcome("a.tif", "busy"), SlideOutcome("b.tif", "done", tiles=5)])
    with open(path, newline="") as fh:
        rows = {row["slide"]: row for row in csv.DictReader(fh)}
    assert [rows["a.tif"]["status"], rows["b.tif"]["status"]] == ["done", "done"]
    assert [rows["a.tif"]["tiles"], rows["b.tif"]["tiles"]] == ["4", "5"]
    # A later run's news replaces a slide's row; slides it does not mention keep theirs.
    write_summary(path, [SlideOutcome("b.tif", "failed", error="boom")])
    with open(path, newline="") as fh:
        rows = {row["slide"]: row for row in csv.DictReader(fh)}
    assert rows["b.tif"]["status"] == "failed" and rows["a.tif"]["status"] == "done"
    assert list(rows) == ["a.tif", "b.tif"]


class _Clock:
    """Every reading advances it 0.25 s: each write seems to take that long."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def test_summary_book_paces_rewrites_and_flushes_the_rest(tmp_path: Path) -> None:
    clock = _Clock()
    book = SummaryBook(tmp_path, Pacer(share=0.5, clock=clock))
    book.record(SlideOutcome("a.tif", "done", tiles=1))  # the first row: written at once
    assert list(read_summary(tmp_path)) == ["a.tif"]
    book.record(SlideOutcome("b.tif", "failed", error="boom", detail="Traceback: boom"))
    assert list(read_summary(tmp_path)) == ["a.tif"], "rewritten before it was due"
    assert "Traceback: boom" in (tmp_path / LOG_NAME).read_text(), "the log must not wait"
    clock.now += 1.0  # waited 2× the last write's cost: due again at share 0.5
    book.record(SlideOutcome("c.tif", "done", tiles=3))
    assert list(read_summary(tmp_path)) == ["a.tif", "b.tif", "c.tif"]
    book.flush()  # nothing pending: no rewrite needed, no harm done
    assert read_summary(tmp_path)["b.tif"]["error"] == "boom"


def test_interrupted_batch_still_writes_every_finished_row(
    good_dir: Path, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Pacer, "due", lambda self: False)  # nothing written along the way
    scanner = CountingScanner(weights)
    real_write = scanner.write

    def write_then_interrupt(slide: Path, outputs: SlideOutputs) -> ScanResult:
        if scanner.scanned:
            raise KeyboardInterrupt
        return real_write(slide, outputs)

    monkeypatch.setattr(scanner, "write", write_then_interrupt)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(find_slides(good_dir), out, scanner)
    assert {name: row["status"] for name, row in read_summary(out).items()} == {GOOD[0]: "done"}


def test_a_row_recorded_earlier_never_replaces_a_newer_one(tmp_path: Path) -> None:
    path = tmp_path / "summary.csv"
    # Run B scanned the slide at 10:05 and wrote at once; run A's failure at 10:00 came late.
    write_summary(path, [SlideOutcome("a.tif", "done", finished="2026-12-03T10:05:00+00:00")])
    write_summary(path, [SlideOutcome("a.tif", "failed", finished="2026-12-03T10:00:00+00:00")])
    assert read_summary(tmp_path)["a.tif"]["status"] == "done"
    write_summary(path, [SlideOutcome("a.tif", "redone", finished="2026-12-03T10:09:00+00:00")])
    assert read_summary(tmp_path)["a.tif"]["status"] == "redone"


def test_book_stamps_rows_and_keeps_the_original_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SummaryBook(tmp_path) as book:
        book.record(SlideOutcome("a.tif", "done"))
    assert read_summary(tmp_path)["a.tif"]["finished"].endswith("+00:00")

    def disk_full(path: Path, outcomes: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("slidescan.batch.summary.write_summary", disk_full)
    monkeypatch.setattr(Pacer, "due", lambda self: False)
    with pytest.raises(KeyboardInterrupt), SummaryBook(tmp_path) as book:  # Ctrl-C stays Ctrl-C
        book.record(SlideOutcome("b.tif", "done"))
        raise KeyboardInterrupt
    with pytest.raises(OSError, match="No space"), SummaryBook(tmp_path) as book:
        book.record(SlideOutcome("b.tif", "done"))  # no other error: the write's own is raised
