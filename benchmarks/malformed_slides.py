"""Hostile-file corpus: scan N malformed slides (seeded mutations of a valid tiled TIFF's header,
IFDs, tags and length) and print how each kind ended, the slowest case and the memory growth.

Every case must end in one clean line (a SlidescanError) or a complete scan; "BAD" rows are bugs.
The test suite runs the first 80 cases (tests/io/test_malformed_slides.py); this runs them all.

    python benchmarks/malformed_slides.py --cases 300
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from scan_helpers import SLIDE_MPP, write_untrained_weights  # noqa: E402
from slide_fuzz import run_corpus  # noqa: E402

from slidescan.engine.weights import load_weights  # noqa: E402
from slidescan.scan.scanner import Scanner, ScanOptions  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300, help="How many malformed slides.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = load_weights(write_untrained_weights(folder / "w.pt"))
        scanner = Scanner(weights, ScanOptions(workers=0, device="cpu", progress=False))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outcomes = list(run_corpus(args.cases, folder, scanner, SLIDE_MPP))
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    by_mutation: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        by_mutation[o.case.mutation]["BAD" if o.kind.startswith("BAD") else o.kind] += 1
    print("| mutation | cases | one-line error | complete scan | BAD |\n|---|---:|---:|---:|---:|")
    for mutation, counts in by_mutation.items():
        total = sum(counts.values())
        print(
            f"| {mutation} | {total} | {counts['error']} | {counts['scanned']} | {counts['BAD']} |"
        )
    slowest = max(outcomes, key=lambda o: o.seconds)
    print(
        f"\n{len(outcomes)} cases; slowest {slowest.case.name} {slowest.seconds:.2f} s; "
        f"peak memory grew by {grown_mb:.0f} MB"
    )
    bad = [o for o in outcomes if o.kind.startswith("BAD")]
    for o in bad:
        print(f"BAD {o.case.name}: {o.kind}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
