"""Batch runs on a Dask LocalCluster of worker processes: same outputs, summary and resumability."""

from __future__ import annotations

import csv
from pathlib import Path

import dask
import numpy as np
import pytest
from scan_helpers import CELL_UM, FAST, SLIDE_MPP, write_untrained_weights
from slide_fixtures import square_image, write_pyramid, write_random_bytes
from typer.testing import CliRunner

from slidescan.cli import app
from slidescan.io.heatmap import read_heatmap


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    weights = write_untrained_weights(tmp_path_factory.mktemp("w") / "w.pt")
    slides = tmp_path_factory.mktemp("slides")
    for i, name in enumerate(["a.tif", "b.tif", "c.tif"]):
        image = square_image(SLIDE_MPP, 4 * CELL_UM, 2 * CELL_UM, (i * 0.5 * CELL_UM, CELL_UM))
        write_pyramid(slides / name, image, mpp=SLIDE_MPP)
    write_random_bytes(slides / "z_broken.svs")
    return weights, slides


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv") as fh:
        return {row["slide"]: row for row in csv.DictReader(fh)}


def test_cluster_run_matches_local_run_and_resumes(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    weights, slides = setup
    runner = CliRunner()
    local, dask = tmp_path / "local", tmp_path / "dask"
    base = ["run", str(slides), "--weights", str(weights), *FAST]
    r_local = runner.invoke(app, [*base, "--out", str(local)])
    r_dask = runner.invoke(app, [*base, "--out", str(dask), "--scheduler", "local:2"])
    # A broken slide is recorded, the rest go on, and the exit code says something failed.
    assert r_local.exit_code == r_dask.exit_code == 1
    summary = _summary(dask)
    assert list(summary) == ["a.tif", "b.tif", "c.tif", "z_broken.svs"]
    assert [summary[s]["status"] for s in summary] == ["done", "done", "done", "failed"]
    assert summary["z_broken.svs"]["status"] == "failed" and summary["z_broken.svs"]["error"]
    for name in ("a", "b", "c"):
        p_local, t_local, a_local = read_heatmap(local / f"{name}.zarr")
        p_dask, t_dask, a_dask = read_heatmap(dask / f"{name}.zarr")
        assert t_dask.any()
        np.testing.assert_array_equal(t_local, t_dask)
        np.testing.assert_allclose(p_local, p_dask, atol=1e-5, equal_nan=True)
        assert a_dask["call"] == a_local["call"]
        assert (dask / f"{name}.json").is_file()

    # Rerun on the cluster: complete slides are skipped, untouched.
    mtime = (dask / "a.json").stat().st_mtime_ns
    r_again = runner.invoke(app, [*base, "--out", str(dask), "--scheduler", "local:2"])
    assert r_again.exit_code == 1
    again = _summary(dask)
    assert [again[s]["status"] for s in again] == ["skipped", "skipped", "skipped", "failed"]
    assert (dask / "a.json").stat().st_mtime_ns == mtime


def test_scheduler_needs_a_directory(setup: tuple[Path, Path], tmp_path: Path) -> None:
    weights, slides = setup
    result = CliRunner().invoke(
        app,
        ["run", str(slides / "a.tif"), "--out", str(tmp_path / "a.zarr"), "--weights",
         str(weights), "--scheduler", "local:1"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--scheduler" in result.stderr
    assert not (tmp_path / "a.zarr").exists()


def test_unreachable_scheduler_is_one_clear_error(setup: tuple[Path, Path], tmp_path: Path) -> None:
    weights, slides = setup
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        result = CliRunner().invoke(
            app,
            ["run", str(slides), "--out", str(tmp_path / "o"), "--weights", str(weights),
             "--scheduler", "tcp://127.0.0.1:9"],
        )  # fmt: skip
    assert result.exit_code == 1
    assert "cannot connect to Dask scheduler" in result.stderr
    assert "Traceback" not in result.output
