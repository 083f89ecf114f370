"""Hostile files: malformed slides end in one clean line or a complete scan, in bounded time and
memory. CI runs a sample; ``benchmarks/malformed_slides.py`` runs the whole corpus."""

from __future__ import annotations

import os
import resource
from collections import Counter
from pathlib import Path

from scan_helpers import SLIDE_MPP
from slide_fuzz import MUTATIONS, run_corpus

from slidescan.engine.weights import load_weights
from slidescan.scan.scan_result import ScanOptions
from slidescan.scan.scanner import Scanner

CASES = int(os.environ.get("SLIDESCAN_FUZZ_CASES", "80"))


def test_malformed_slides_fail_cleanly(tmp_path: Path, weights: Path) -> None:
    scanner = Scanner(load_weights(weights), ScanOptions(workers=0, device="cpu", progress=False))
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = list(run_corpus(CASES, tmp_path, scanner, SLIDE_MPP))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
    bad = [f"{o.case.name}: {o.kind}" for o in outcomes if o.kind.startswith("BAD")]
    assert not bad, "\n".join(bad)
    assert {o.case.mutation for o in outcomes} == set(MUTATIONS)
    kinds = Counter(o.kind for o in outcomes)
    assert kinds["error"] > CASES // 4, kinds  # the corpus does reach the error paths
    slowest = max(outcomes, key=lambda o: o.seconds)
    assert slowest.seconds < 20, f"{slowest.case.name} took {slowest.seconds:.1f} s"
    assert grown_mb < 1024, f"peak memory grew by {grown_mb:.0f} MB"
