"""`slidescan demo`: the shipped demo slide, its truth, and the whole demo end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import webbrowser
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scan_helpers import invoke
from shapely.geometry import shape

from slidescan.batch.demo import DEMO_SLIDE, DEMO_TRUTH, demo_folder, match_lesions, read_truth
from slidescan.io.heatmap import read_heatmap
from slidescan.io.slide import open_slide

ROOT = Path(__file__).resolve().parents[2]


def test_demo_slide_is_small_and_as_its_truth_says() -> None:
    slide_file = demo_folder() / DEMO_SLIDE
    assert slide_file.stat().st_size <= 4_000_000
    truth = read_truth()
    with open_slide(slide_file) as slide:
        assert list(slide.dimensions) == truth["size_px"]
        assert slide.mpp == pytest.approx(0.972, abs=1e-4) and slide.mpp_source != "default"
        assert len(slide.level_dimensions) >= 2  # a pyramid, as real slides are
    categories = [les["category"] for les in truth["lesions"]]
    assert categories == ["macrometastasis", "micrometastasis"]
    assert truth["call"] == {"positive": True, "category": "macrometastasis"}
    assert "CC0" in (demo_folder() / "README.md").read_text()


def test_demo_slide_is_rebuilt_by_its_script(data_dir: Path, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_demo_slide.py"), "--data", str(data_dir),
         "--out", str(tmp_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    assert (tmp_path / DEMO_TRUTH).read_bytes() == (demo_folder() / DEMO_TRUTH).read_bytes()
    # Pixels, not bytes: another JPEG encoder build may pack the same image differently.
    rebuilt = tifffile.imread(tmp_path / DEMO_SLIDE).astype(np.int16)
    shipped = tifffile.imread(demo_folder() / DEMO_SLIDE).astype(np.int16)
    assert rebuilt.shape == shipped.shape
    assert np.abs(rebuilt - shipped).mean() < 0.5


def _reported(x: float, y: float, category: str, diameter: float = 1.0) -> dict:
    return {"centroid_level0": [x, y], "category": category, "diameter_mm": diameter}


TRUTH = {
    "mpp": 1.0,  # 1 µm/px: 1,000 px per mm
    "lesions": [
        {"category": "macrometastasis", "diameter_mm": 2.2, "centre_level0": [2000, 2000]},
        {"category": "micrometastasis", "diameter_mm": 0.6, "centre_level0": [6000, 1000]},
    ],
}


def test_match_lesions_pairs_nearest_within_reach() -> None:
    reported = [
        _reported(6100, 1000, "micrometastasis", 0.7),
        _reported(2100, 2000, "macrometastasis", 2.3),
    ]
    (macro, micro), extra = match_lesions(reported, TRUTH)
    assert macro.right and macro.found_diameter_mm == 2.3 and macro.offset_mm == pytest.approx(0.1)
    assert micro.right and micro.offset_mm == pytest.approx(0.1)
    assert extra == 0


def test_match_lesions_reports_misses_wrong_categories_and_extras() -> None:
    reported = [
        _reported(2000, 2000, "micrometastasis", 1.5),  # under-measured: wrong category
        _reported(6000, 1600, "itc", 0.1),  # 0.6 mm away: beyond the micro's 0.3 + 0.2 mm reach
    ]
    (macro, micro), extra = match_lesions(reported, TRUTH)
    assert macro.found_category == "micrometastasis" and not macro.right
    assert micro.found_category is None and not micro.right
    assert extra == 1


def test_demo_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "--device", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "slidescan macrometastasis (positive)  right" in result.stdout
    assert "NOT FOUND" not in result.stdout and "Research use only" in result.stdout
    names = sorted(p.name for p in out.iterdir())
    stem = Path(DEMO_SLIDE).stem
    assert names == sorted(
        [DEMO_SLIDE, f"{stem}.geojson", f"{stem}.json", f"{stem}.png", f"{stem}.zarr",
         "index.html", "summary.csv", "truth.csv", "annotations", "validation"]
    )  # fmt: skip
    # QuPath opens the copy beside the outputs (issue 23, item 11), not the installed file.
    assert f"open {out / DEMO_SLIDE} (a copy of the demo slide)" in result.stdout
    assert (out / DEMO_SLIDE).read_bytes() == (demo_folder() / DEMO_SLIDE).read_bytes()
    # The demo goes through `validate` with its truth: both lesions found, the call right.
    assert (
        "slidescan validate" in result.stdout and "FROC score 1.000 over 2 lesions" in result.stdout
    )
    validation = json.loads((out / "validation" / "validation.json").read_text())
    assert validation["sensitivity"]["count"] == "1/1" and validation["kappa"] == 1.0

    report = json.loads((out / f"{stem}.json").read_text())
    assert report["call"]["category"] == "macrometastasis" and report["reliable"]
    probability, tissue, _ = read_heatmap(out / f"{stem}.zarr")
    assert probability.shape == tissue.shape and np.isfinite(probability[tissue]).all()
    features = json.loads((out / f"{stem}.geojson").read_text())["features"]
    assert len(features) == len(report["call"]["lesions"]) == 2
    assert all(shape(f["geometry"]).is_valid for f in features)
    with Image.open(out / f"{stem}.png") as png:
        assert png.size[0] > 500
    assert DEMO_SLIDE in (out / "index.html").read_text()

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    again = invoke("demo", "--out", out, "--device", "cpu", "--workers", "0", "--open")
    assert again.exit_code == 0 and "done before with the same settings" in again.stdout
    assert opened == [(out / "index.html").resolve().as_uri()]


def test_demo_refuses_a_file_or_a_folder_of_other_results(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = invoke("demo", "--out", afile, "--device", "cpu", "--workers", "0")
    assert result.exit_code == 1 and "needs a folder, and this is a file (--out)" in result.stderr
    results = tmp_path / "results"
    results.mkdir()
    (results / "case-0001.json").write_text("{}")
    (results / "summary.csv").write_text("slide,status\ncase-0001.svs,done\n")
    result = invoke("demo", "--out", results, "--device", "cpu", "--workers", "0")
    assert result.exit_code == 1 and "holds other results (case-0001.json)" in result.stderr
    assert "case-0001" in (results / "summary.csv").read_text()  # left alone
    assert "Traceback" not in result.output
