"""Two real `slidescan run` processes over one output folder (a SLURM array, a Dask retry)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from scan_helpers import CELL_UM, SLIDE_MPP, write_untrained_weights
from slide_fixtures import square_image, write_pyramid

from slidescan.io.heatmap import read_heatmap
from slidescan.io.outputs import is_complete, read_report

N_SLIDES = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("race")
    slides = root / "slides"
    slides.mkdir()
    for i in range(N_SLIDES):
        at = ((i % 3) * CELL_UM, (i // 3) * CELL_UM)
        image = square_image(SLIDE_MPP, 6 * CELL_UM, 3 * CELL_UM, at)
        write_pyramid(slides / f"s{i}.tif", image, mpp=SLIDE_MPP)
    return slides, write_untrained_weights(root / "w.pt")


def _run_together(slides: Path, weights: Path, out: Path, n: int = 2) -> list[str]:
    cmd = [
        sys.executable, "-m", "slidescan", "run", str(slides), "--out", str(out),
        "--weights", str(weights), "--device", "cpu", "--workers", "0",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    logs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
        assert "Traceback" not in stderr
        logs.append(stdout)
    return logs


def test_two_runs_share_the_work_without_corrupting_it(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    slides, weights = setup
    out = tmp_path / "out"
    logs = _run_together(slides, weights, out)
    names = [f"s{i}" for i in range(N_SLIDES)]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [], (
        "no temporaries or locks may be left"
    )
    for name in names:
        heatmap = out / f"{name}.zarr"
        assert is_complete(heatmap)
        report = read_report(heatmap)
        assert report["slide"] == f"{name}.tif"
        assert read_heatmap(heatmap)[2]["fingerprint"] == report["fingerprint"]
        # Scanned once: by one run, while the other found it locked or already finished.
        scans = sum(log.count(f"{name}.tif: negative") + log.count(f"{name}.tif: POSITIVE")
                    for log in logs)  # fmt: skip
        assert scans == 1, (name, logs)
    with open(out / "summary.csv", newline="") as fh:
        rows = {row["slide"]: row for row in csv.DictReader(fh)}
    assert set(rows) == {f"{n}.tif" for n in names}
    # Each run merges its rows into the file under a lock: whichever wrote last, every slide
    # shows the run that scanned it, never the other run's "busy" note.
    assert {row["status"] for row in rows.values()} <= {"done", "skipped"}, rows
