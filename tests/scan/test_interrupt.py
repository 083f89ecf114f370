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
    assert "Traceback" not in stderr, stderr[-3000:]
    folder = out.parent
    left = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if returncode == 0:  # finished before the signal: a complete result
        assert is_complete(out) and left == ["big.geojson", "big.json", "big.png", "big.zarr"]
        return
    if returncode in (-signal.SIGSEGV, -signal.SIGABRT):
        # Seen about once in 50 interrupts mid-scan early in issue 10; not reproduced since
        # (0 in 100 interrupts at random moments, 2026-12-02/03), cause never pinned down.
        # Even then nothing partial may be left; faulthandler's stacks say where it crashed.
        assert [name for name in left if name.startswith(".")] == [], "partials or locks left"
        pytest.xfail(f"native crash on Ctrl-C (signal {-returncode}):\n{stderr[-3000:]}")
    assert returncode == 130, (returncode, stderr[-2000:])
    # "interrupted" from slidescan; nothing but a newline when the signal beat its handler
    # (during start-up, typer itself exits 130).
    assert stderr.strip().splitlines()[-1:] in (["interrupted"], []), stderr[-2000:]
    assert [name for name in left if name.startswith(".")] == [], "partials or locks left"
    # Interrupted before the commit: nothing; after it (before the result line): all of it.
    assert left in ([], ["big.geojson", "big.json", "big.png", "big.zarr"]), left
