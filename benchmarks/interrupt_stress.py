"""Ctrl-C at random moments: interrupt N real `slidescan run` processes and count bad endings.

Each run scans a synthetic 3,072 × 4,096 px slide (2 loader workers, overlay on) and gets SIGINT
at a random moment (the whole process group, as a terminal's Ctrl-C does). A good ending is exit
130 (or 0 if it finished first), no traceback, and no partial or lock file left. A bad ending's
stderr (under faulthandler) is saved beside the results. The test suite interrupts at 7 fixed
moments (tests/scan/test_interrupt.py); this draws as many as you like.

    python benchmarks/interrupt_stress.py --runs 60 --seed 1
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from scan_helpers import SLIDE_MPP, ctrl_c_scan, write_untrained_weights  # noqa: E402
from slide_fixtures import tissue_image, write_pyramid  # noqa: E402

from slidescan.io.outputs import is_complete  # noqa: E402

RESULT_FILES = ["slide.geojson", "slide.json", "slide.png", "slide.zarr"]


def interrupt_once(slide: Path, weights: Path, out: Path, after: float) -> tuple[str, str]:
    """Start a scan, SIGINT its process group after ``after`` s; (ending, stderr)."""
    returncode, stderr = ctrl_c_scan(slide, weights, out / "slide.zarr", after, timeout=300)
    left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    complete = left == RESULT_FILES and is_complete(out / "slide.zarr")
    if "Traceback" in stderr:
        return "BAD: traceback", stderr
    if any(name.startswith(".") for name in left):
        return "BAD: partial or lock left", stderr
    if returncode == 130:
        # Interrupted before the commit: nothing; after it: the complete result.
        if left and not complete:
            return "BAD: incomplete result after 130", stderr
        return "interrupted (130), " + ("result complete" if left else "nothing left"), stderr
    if returncode == 0:
        if not complete:
            return "BAD: exit 0 without a complete result", stderr
        return "finished first (0), result complete", stderr
    return f"BAD: exit {returncode}", stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--earliest", type=float, default=2.0, help="Seconds after start.")
    parser.add_argument("--latest", type=float, default=9.0, help="Seconds after start.")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="interrupt-stress-"))
    slide = write_pyramid(root / "slide.tif", tissue_image(3072, 4096)[0], mpp=SLIDE_MPP)
    weights = write_untrained_weights(root / "weights.pt")
    endings: Counter[str] = Counter()
    for i in range(args.runs):
        out = root / f"run-{i}"
        after = rng.uniform(args.earliest, args.latest)
        ending, stderr = interrupt_once(slide, weights, out, after)
        endings[ending] += 1
        print(f"{i}: SIGINT at {after:.2f} s: {ending}", flush=True)
        if ending.startswith("BAD"):
            (root / f"bad-{i}.stderr.txt").write_text(stderr)
        else:
            shutil.rmtree(out, ignore_errors=True)
    print("\n| ending | runs |\n|---|---:|")
    for ending, count in sorted(endings.items()):
        print(f"| {ending} | {count} |")
    bad = sum(c for e, c in endings.items() if e.startswith("BAD"))
    if bad:
        print(f"\n{bad} bad ending(s) of {args.runs}; their stderr is in {root}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    print(f"\nno bad ending in {args.runs} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
