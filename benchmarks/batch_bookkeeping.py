"""Bookkeeping cost of a directory run: summary.csv and index.html per finished slide, by size.

For batches of N slides, times one rewrite of summary.csv and of the review page holding N rows,
and the total over the whole batch when every slide rewrites both ("unpaced", quadratic) and
when the rewrites are paced (:class:`slidescan.io.pacing.Pacer`, the default) assuming each
slide takes --slide-seconds to scan.

    python benchmarks/batch_bookkeeping.py --sizes 100 1000 10000 --slide-seconds 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from slidescan.batch.summary import write_summary
from slidescan.io.pacing import Pacer
from slidescan.report.outcome import SlideOutcome
from slidescan.report.review_page import ReviewEntry, ReviewPage


def _outcome(i: int) -> SlideOutcome:
    return SlideOutcome(
        slide=f"slide-{i:06d}.svs", status="done", positive=i % 3 == 0, category="negative",
        largest_lesion_mm=0.0, lesions=0, reliable=True, tiles=5000, seconds=30.0,
        heatmap=f"slide-{i:06d}.zarr",
    )  # fmt: skip


def one_rewrite(n: int, repeats: int = 3) -> tuple[float, float, int]:
    """Seconds for one summary.csv and one index.html rewrite at ``n`` rows; the page's bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        outcomes = [_outcome(i) for i in range(n)]
        write_summary(out / "summary.csv", outcomes)
        page = ReviewPage(out, [Path(o.slide) for o in outcomes], None)
        for o in outcomes:
            page.entries[o.slide] = ReviewEntry(
                slide=o.slide, status="done", positive=o.positive, category=o.category,
                max_probability=0.1, largest_lesion_mm=0.0, lesions=0, tissue_mm2=80.0,
                reliable=True, report=f"./{o.heatmap[:-5]}.json",
            )  # fmt: skip
        summary_s, page_s = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            write_summary(out / "summary.csv", outcomes[-1:])
            summary_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            page.write()
            page_s.append(time.perf_counter() - start)
        return min(summary_s), min(page_s), (out / "index.html").stat().st_size


def paced_total(n: int, cost_at_n: float, slide_seconds: float) -> float:
    """Seconds spent rewriting over a batch of ``n`` slides, simulated with the real Pacer on a
    simulated clock; a rewrite at k rows costs k/n of ``cost_at_n``."""
    now = [0.0]
    pacer = Pacer(clock=lambda: now[0])
    total = 0.0
    for k in range(1, n + 1):
        now[0] += slide_seconds
        if pacer.due() or k == n:
            with pacer.timed():
                now[0] += cost_at_n * k / n
            total += cost_at_n * k / n
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--slide-seconds", type=float, default=5.0, help="Scan time per slide.")
    args = parser.parse_args()
    print(
        "| slides | summary.csv rewrite | index.html rewrite | page size | unpaced total, "
        "% of batch | paced total, % of batch |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        summary_s, page_s, size = one_rewrite(n)
        batch_s = n * args.slide_seconds
        # Unpaced: rewrite k rows after slide k, k = 1..n: about n/2 times the cost at n rows.
        unpaced = (summary_s + page_s) * n / 2
        paced = sum(paced_total(n, cost, args.slide_seconds) for cost in (summary_s, page_s))
        print(
            f"| {n:,} | {summary_s * 1000:.1f} ms | {page_s * 1000:.1f} ms | {size / 1e6:.2f} MB "
            f"| {unpaced:.0f} s, {100 * unpaced / batch_s:.2f} % "
            f"| {paced:.0f} s, {100 * paced / batch_s:.2f} % |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
