"""`slidescan run` on one slide, in-process: one result line, overlays, one-line errors, help."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scan_helpers import CELL_UM, FAST, SLIDE_MPP
from scan_helpers import invoke as invoke_cli
from slide_fixtures import (
    square_image,
    tissue_image,
    write_pyramid,
    write_random_bytes,
    write_truncated,
)
from typer.testing import Result

from slidescan.io.heatmap import read_heatmap
from slidescan.io.outputs import is_complete, read_report
from slidescan.progress import BARS_ENV


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    rgb = square_image(SLIDE_MPP, 4 * CELL_UM, 2 * CELL_UM, (CELL_UM, CELL_UM))
    good = write_pyramid(d / "slide.tif", rgb, mpp=SLIDE_MPP)
    noisy = write_pyramid(d / "noisy.tif", tissue_image(768, 1024)[0], mpp=SLIDE_MPP)
    return {
        "good": good,
        "no_mpp": write_pyramid(d / "no_mpp.tif", rgb, mpp=None),
        # Noisy pixels: the cut lands inside level 0's tiles, not between whole levels.
        "truncated": write_truncated(d / "truncated.tif", noisy, keep=0.5),
        "random": write_random_bytes(d / "random.svs"),
    }


def invoke(*args: str | Path) -> Result:
    return invoke_cli("run", *args)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())  # hidden partials included


def assert_one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    shown = lines(result.stderr)
    assert len(shown) == 1 and shown[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return shown[0]


def test_run_one_slide_prints_one_line(
    slides: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.zarr"
    result = invoke(slides["good"], "--out", out, "--weights", weights, *FAST)
    assert result.exit_code == 0, result.output
    shown = lines(result.stdout)
    assert len(shown) == 1, result.stdout
    line = shown[0]
    assert line.startswith("slide.tif: ") and "research use only" in line
    call = read_report(out)["call"]
    verdict = "POSITIVE" if call["positive"] else "negative"
    assert line.startswith(f"slide.tif: {verdict}")
    assert f"lesions {len(call['lesions'])}" in line
    assert f"{call['positive_tiles']}/4" in line
    assert is_complete(out) and entries(tmp_path) == ["x.geojson", "x.json", "x.zarr"]


def test_run_options_reach_the_scan(slides: dict[str, Path], weights: Path, tmp_path: Path):
    out = tmp_path / "x.zarr"
    png = tmp_path / "figs" / "x.png"
    args = ["--weights", weights, *FAST, "--threshold", "0", "--min-tissue", "0", "--stride", "48"]
    result = invoke(slides["good"], "--out", out, "--overlay", png, *args)
    assert result.exit_code == 0, result.output
    # Threshold 0: every scored tile is a seed, so the 7×7 cells of 46.7 µm are one lesion.
    assert "POSITIVE (micrometastasis" in result.stdout
    _, tissue, attrs = read_heatmap(out)
    assert attrs["seed_threshold"] == 0.0 and attrs["extent_threshold"] == 0.0
    assert attrs["min_tissue"] == 0.0 and attrs["stride"] == 48
    assert tissue.all() and tissue.shape == (7, 7)
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG"
    assert entries(png.parent) == ["x.png"]


def test_rerun_skips_recalls_or_rescans_like_a_batch(
    slides: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    """A single-slide rerun agrees with a directory run (issue 23, items 4 and 10): the same
    settings skip (exit 0), a new --threshold redoes only the call from the stored heatmap, and
    --overwrite scans again."""
    out = tmp_path / "x.zarr"
    args = [slides["good"], "--out", out, "--weights", weights, *FAST]
    assert invoke(*args).exit_code == 0
    heatmap_before = read_heatmap(out)[0]
    first = read_report(out)
    inode = (out / "probability").stat().st_ino

    same = invoke(*args)
    assert same.exit_code == 0, same.output
    assert lines(same.stdout) == [
        "slide.tif: already done with the same settings (--overwrite redoes it)"
    ]
    assert (out / "probability").stat().st_ino == inode

    recalled = invoke(*args, "--threshold", "0")
    assert recalled.exit_code == 0, recalled.output
    assert "recalled" in recalled.stdout and "POSITIVE" in recalled.stdout
    assert "[seed threshold 0]" in recalled.stdout  # a custom operating point says so
    report = read_report(out)
    assert report["heatmap_fingerprint"] == first["heatmap_fingerprint"]
    assert report["fingerprint"] != first["fingerprint"]
    assert report["call"]["seed_threshold"] == 0.0 and report["settings"]["seed_threshold"] == 0.0
    probability, _, attrs = read_heatmap(out)
    np.testing.assert_array_equal(probability, heatmap_before)  # the heatmap was not rescanned
    assert attrs["seed_threshold"] == 0.0 and attrs["fingerprint"] == report["fingerprint"]
    assert report["call"]["lesions"] and "Lesion" in (tmp_path / "x.geojson").read_text()
    assert entries(tmp_path) == ["x.geojson", "x.json", "x.zarr"]
    assert "already done" in invoke(*args, "--threshold", "0").stdout

    again = invoke(*args, "--overwrite")
    assert again.exit_code == 0, again.output
    assert read_report(out)["fingerprint"] == first["fingerprint"]


def test_a_foreign_folder_in_the_way_is_not_replaced(
    slides: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.zarr"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    message = assert_one_error_line(invoke(slides["good"], "--out", out, "--weights", weights))
    assert "not a slidescan result" in message and message.endswith("(--overwrite)")
    assert (out / "mine.txt").read_text() == "keep"


def test_default_mpp_rescans_only_slides_it_scales(
    slides: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    """Adding --default-mpp leaves slides with their own µm/px alone (issue 23, item 5)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "slide.tif").write_bytes(slides["good"].read_bytes())
    out = tmp_path / "out"
    assert invoke(folder, "--out", out, "--weights", weights, *FAST).exit_code == 0
    result = invoke(folder, "--out", out, "--weights", weights, "--default-mpp", "0.3", *FAST)
    assert result.exit_code == 0, result.output
    assert "1/1 slides done (1 skipped)" in result.stdout
    assert read_report(out / "slide.zarr")["settings"]["default_mpp"] is None

    recall = invoke(folder, "--out", out, "--weights", weights, "--threshold", "0", *FAST)
    assert recall.exit_code == 0, recall.output
    with open(out / "summary.csv", newline="") as fh:
        (row,) = csv.DictReader(fh)
    assert row["status"] == "recalled" and row["positive"] == "true"


@pytest.mark.parametrize("key", ["truncated", "random"])
def test_bad_slide_is_one_error_line_and_leaves_nothing(
    slides: dict[str, Path], weights: Path, tmp_path: Path, key: str
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = invoke(
        slides[key], "--out", out_dir / "x.zarr", "--overlay", out_dir / "x.png",
        "--weights", weights, "--mpp", "0.5", *FAST,
    )  # fmt: skip
    message = assert_one_error_line(result)
    assert slides[key].name in message
    assert entries(out_dir) == []


def test_missing_mpp_names_the_option(
    slides: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.zarr"
    args = [slides["no_mpp"], "--out", out, "--weights", weights, *FAST]
    message = assert_one_error_line(invoke(*args))
    assert "no_mpp.tif" in message and "or mpp (all slides)" in message
    assert entries(tmp_path) == []
    assert message.endswith("(--default-mpp)"), "the CLI names the option"
    result = invoke(*args, "--mpp", str(SLIDE_MPP))
    assert result.exit_code == 0, result.output
    assert read_heatmap(out)[2]["slide_mpp"] == SLIDE_MPP
    assert read_heatmap(out)[2]["slide_mpp_source"] == "--mpp"


def test_default_mpp_only_where_metadata_has_none(
    slides: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    for key in ("good", "no_mpp"):
        (folder / slides[key].name).write_bytes(slides[key].read_bytes())
    out = tmp_path / "out"
    result = invoke(folder, "--out", out, "--weights", weights, "--default-mpp", "0.3", *FAST)
    assert result.exit_code == 0, result.output
    meta = read_heatmap(out / "slide.zarr")[2]
    bare = read_heatmap(out / "no_mpp.zarr")[2]
    assert (meta["slide_mpp"], meta["slide_mpp_source"]) == (SLIDE_MPP, "slide metadata")
    assert (bare["slide_mpp"], bare["slide_mpp_source"]) == (0.3, "--default-mpp")


def test_full_paths_only_on_request(slides: dict[str, Path], weights: Path, tmp_path: Path):
    out = tmp_path / "x.zarr"
    assert invoke(slides["good"], "--out", out, "--weights", weights, *FAST).exit_code == 0
    assert str(slides["good"].parent) not in out.with_suffix(".json").read_text()
    again = invoke(
        slides["good"], "--out", out, "--weights", weights, "--overwrite", "--full-paths", *FAST
    )
    assert again.exit_code == 0, again.output
    assert read_heatmap(out)[2]["slide_path"] == str(slides["good"].resolve())


def test_unwritable_output_is_one_line_and_debug_shows_the_traceback(
    slides: dict[str, Path], weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slidescan.io.outputs as outputs_mod

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system", str(args[0]))

    # As root, permissions would not stop us: the folder creation fails as on a read-only mount.
    monkeypatch.setattr(outputs_mod.Path, "mkdir", read_only)
    args = [slides["good"], "--out", tmp_path / "ro" / "x.zarr", "--weights", weights, *FAST]
    message = assert_one_error_line(invoke(*args))
    assert "Read-only file system" in message and "ro" in message
    debug = invoke_cli("--debug", "run", *args)
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: ")


def test_blank_slide_says_no_tissue(weights: Path, tmp_path: Path) -> None:
    blank = write_pyramid(
        tmp_path / "blank.tif", np.full((768, 1024, 3), 255, np.uint8), mpp=SLIDE_MPP
    )
    out = tmp_path / "blank.zarr"
    result = invoke(blank, "--out", out, "--weights", weights, *FAST)
    assert result.exit_code == 0, result.output
    assert "no tissue found" in result.stdout
    report = read_report(out)
    assert report["warnings"] == ["no tissue found: nothing was scanned"]
    assert report["call"]["max_probability"] is None and report["tiles_scanned"] == 0
    # Nothing was looked at: never a negative to trust (summary.csv and the review page follow).
    assert report["reliable"] is False
    assert "no tissue found: nothing was scanned" in report["distribution"]["reasons"]


def test_wildly_wrong_mpp_is_refused_before_scanning(weights: Path, tmp_path: Path) -> None:
    """--mpp 50 (a typo for 0.50) would tile millions of upsampled patches: refuse at once."""
    slide = write_pyramid(tmp_path / "s.tif", tissue_image(768, 1024)[0], mpp=SLIDE_MPP)
    out = tmp_path / "s.zarr"
    result = invoke(slide, "--out", out, "--weights", weights, "--mpp", "50", *FAST)
    assert result.exit_code == 1
    assert "covers only" in result.output and "--any-scale" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
    forced = invoke(slide, "--out", out, "--weights", weights, "--mpp", "8", "--any-scale", *FAST)
    assert forced.exit_code == 0, forced.output


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--out", "x.h5"], "--out must end in .zarr"),
        (["--mpp", "-1"], "mpp must be a positive number, got -1.0 (--mpp)"),
        # The test model's card names no high-sensitivity point; a threshold and a named point
        # both set the seed (issue 22).
        (["--sensitivity", "high"], "names no 'high' operating point (it has: standard)"),
        (["--sensitivity", "high", "--threshold", "0.9"], "give one of them (--sensitivity)"),
    ],
)
def test_bad_options(
    slides: dict[str, Path], weights: Path, tmp_path: Path, extra: list[str], needle: str
) -> None:
    extra = [str(tmp_path / e) if e.startswith("x.") else e for e in extra]
    if "--out" not in extra:
        extra += ["--out", str(tmp_path / "x.zarr")]
    message = assert_one_error_line(invoke(slides["good"], *extra, "--weights", weights, *FAST))
    assert needle in message
    assert entries(tmp_path) == []


def test_missing_input_and_weights(slides: dict[str, Path], weights: Path, tmp_path: Path):
    message = assert_one_error_line(invoke(tmp_path / "nope.svs", "--weights", weights, *FAST))
    assert "nope.svs" in message
    out = tmp_path / "x.zarr"
    message = assert_one_error_line(
        invoke(slides["good"], "--out", out, "--weights", tmp_path / "none.pt", *FAST)
    )
    assert "none.pt" in message and "not found" in message
    assert entries(tmp_path) == []


def test_run_help_explains_options() -> None:
    result = invoke_cli("run", "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    for option in [
        "--out", "--weights", "--mpp", "--stride", "--min-tissue", "--threshold", "--overlay",
        "--tta", "--overwrite", "--batch-size", "--device", "--workers",
    ]:  # fmt: skip
        assert option in text
    mpp_help = text[text.index("--mpp") : text.index("--default-mpp")]
    assert "microns per pixel" in mpp_help.lower()
    assert "summary.csv" in text
    # Grouped (issue 23, item 9), and switches shown as switches, not "--tta <bool>".
    for panel in ("Outputs", "Model and call", "Scale", "Speed and hardware"):
        assert f" {panel} " in text
    assert "<bool>" not in result.output


def test_unwritable_overlay_fails_before_the_scan(
    slides: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the overlay folder should be")
    out = tmp_path / "x.zarr"
    args = [slides["good"], "--out", out, "--overlay", blocker / "x.png", "--weights", weights]
    message = assert_one_error_line(invoke(*args, *FAST))
    assert "cannot write the overlay" in message
    assert entries(tmp_path) == ["not-a-folder"], "nothing written, nothing half-done"


def test_batch_into_an_unwritable_folder_fails_at_once_in_one_line(
    weights: Path, tmp_path: Path
) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    write_pyramid(slides / "a.tif", tissue_image(768, 1024)[0], mpp=SLIDE_MPP)
    (tmp_path / "afile").write_text("not a folder")
    result = invoke(slides, "--out", tmp_path / "afile" / "results", "--weights", weights, *FAST)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {tmp_path / 'afile' / 'results'}: cannot write there "
                     f"({tmp_path / 'afile'} is a file, not a folder)"]  # fmt: skip


def test_recursive_case_folders_mirror_the_tree_and_keep_same_named_slides_apart(
    slides: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    """Issue 23, item 14: cases/P001/node_1.tif and cases/P002/node_1.tif never collide."""
    cases = tmp_path / "cases"
    for patient in ("P001", "P002"):
        (cases / patient).mkdir(parents=True)
        (cases / patient / "node_1.tif").write_bytes(slides["good"].read_bytes())
    (cases / ".hidden").mkdir()
    (cases / ".hidden" / "x.tif").write_bytes(slides["good"].read_bytes())
    patients = tmp_path / "patients.csv"
    patients.write_text("slide,patient\nP001/node_1.tif,P001\nP002/node_1.tif,P002\n")
    out = tmp_path / "out"
    args = [cases, "--out", out, "--weights", weights, "--recursive", "--patients", patients]
    result = invoke(*args, "--overlay", tmp_path / "png", *FAST)
    assert result.exit_code == 0, result.output
    assert "P001/node_1.tif: " in result.stdout and "P002/node_1.tif: " in result.stdout
    for patient in ("P001", "P002"):
        assert is_complete(out / patient / "node_1.zarr")
        assert (tmp_path / "png" / patient / "node_1.png").is_file()
    with open(out / "summary.csv", newline="") as fh:
        rows = {row["slide"]: row for row in csv.DictReader(fh)}
    assert sorted(rows) == ["P001/node_1.tif", "P002/node_1.tif"]
    assert rows["P001/node_1.tif"]["heatmap"] == "P001/node_1.zarr"
    with open(out / "patients.csv", newline="") as fh:
        assert sorted(row["patient"] for row in csv.DictReader(fh)) == ["P001", "P002"]
    page = (out / "index.html").read_text()
    assert "P001/node_1.tif" in page and "./P002/node_1.json" in page
    flat = invoke(cases, "--out", tmp_path / "flat", "--weights", weights, *FAST)
    assert flat.exit_code == 1 and "no slide files found" in flat.stderr


def test_a_slide_list_names_the_slides_to_scan(
    slides: dict[str, Path], weights: Path, tmp_path: Path
) -> None:
    """Issue 23, item 14: a text or CSV list, as batch schedulers write them."""
    for patient in ("P001", "P002"):
        (tmp_path / patient).mkdir()
        (tmp_path / patient / "node_1.tif").write_bytes(slides["good"].read_bytes())
    listed = tmp_path / "slides.txt"
    listed.write_text("# tonight's slides\nP001/node_1.tif\n\nP002/node_1.tif\n")
    result = invoke(listed, "--out", tmp_path / "out", "--weights", weights, *FAST)
    assert result.exit_code == 0, result.output
    assert is_complete(tmp_path / "out" / "P002" / "node_1.zarr")
    table = tmp_path / "slides.csv"
    table.write_text("patient,slide\nP001,P001/node_1.tif\n")
    again = invoke(table, "--out", tmp_path / "out", "--weights", weights, *FAST)
    assert again.exit_code == 0 and "1/1 slides done (1 skipped)" in again.stdout
    bad = tmp_path / "bad.txt"
    bad.write_text("P003/node_1.tif\n")
    message = assert_one_error_line(invoke(bad, "--out", tmp_path / "o2", "--weights", weights))
    assert "no such slide" in message and "P003" in message


def test_logs_get_lines_not_bars_and_quiet_keeps_the_summary(
    slides: dict[str, Path], weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23, item 9: where stderr is not a terminal (here, as in a SLURM log) no progress
    bar writes carriage returns; --quiet leaves errors and the final summary."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        (folder / name).write_bytes(slides["good"].read_bytes())
    result = invoke(folder, "--out", tmp_path / "out", "--weights", weights, *FAST)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "\x1b[" not in result.output
    assert "%|" not in result.stderr, "no progress bar in a log"
    assert [ln.split(":")[0] for ln in lines(result.stdout)[:2]] == ["a.tif", "b.tif"]
    monkeypatch.setenv(BARS_ENV, "1")  # --quiet sets it to 0; restored after the test
    quiet = invoke_cli(
        "--quiet", "run", folder, "--out", tmp_path / "q", "--weights", weights, *FAST
    )
    assert quiet.exit_code == 0, quiet.output
    assert lines(quiet.stdout) == [ln for ln in lines(quiet.stdout) if "slides done" in ln]
    assert len(lines(quiet.stdout)) == 1 and quiet.stderr.strip() == ""
