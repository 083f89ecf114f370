"""Ctrl-C at any moment of a real scan: exit 130, no traceback, nothing partial left behind."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from scan_helpers import SLIDE_MPP, ctrl_c_scan
from slide_fixtures import tissue_image, write_pyramid

from slidescan.io.outputs import is_complete

# Seconds after start: during imports, model loading, tissue masking, the scan, the commit.
MOMENTS = [0.5, 1.5, 2.5, 3.5, 5.0, 6.5, 8.0]


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interrupt")
    return write_pyramid(root / "big.tif", tissue_image(3072, 4096)[0], mpp=SLIDE_MPP)


@pytest.mark.parametrize("after", MOMENTS)
def test_ctrl_c_leaves_nothing_partial(
    slide: Path, weights: Path, tmp_path: Path, after: float
) -> None:
    out = tmp_path / "out" / "big.zarr"
    returncode, stderr = ctrl_c_scan(slide, weights, out, after)
    if returncode < 0:  # killed by a signal: a native crash, with faulthandler's stacks
        name = signal.Signals(-returncode).name
        pytest.fail(f"native crash on Ctrl-C ({name}):\n{stderr[-4000:]}")
    assert "Traceback" not in stderr, stderr[-3000:]
    folder = out.parent
    left = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if returncode == 0:  # finished before the signal: a complete result
        assert is_complete(out) and left == ["big.geojson", "big.json", "big.png", "big.zarr"]
        return
    assert returncode == 130, (returncode, stderr[-2000:])
    # "interrupted" from slidescan; nothing but a newline when the signal beat its handler
    # (during start-up, typer itself exits 130).
    assert stderr.strip().splitlines()[-1:] in (["interrupted"], []), stderr[-2000:]
    assert [name for name in left if name.startswith(".")] == [], "partials or locks left"
    # Interrupted before the commit: nothing; after it (before the result line): all of it.
    assert left in ([], ["big.geojson", "big.json", "big.png", "big.zarr"]), left
