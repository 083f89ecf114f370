"""Pace a write whose cost grows with the batch (summary.csv, index.html) to a share of the time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


class Pacer:
    """Says when a periodic rewrite is due so that it takes at most ``share`` of the wall time.

    Rewriting the summary of a 10,000-slide batch after every slide costs a few tenths of a
    second each time, quadratic over the batch; paced, small batches still rewrite after every
    slide and large ones every few seconds.
    """

    def __init__(self, share: float = 0.01, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        self.clock = clock
        self._last_end: float | None = None
        self._last_cost = 0.0

    def due(self) -> bool:
        """True for the first write, then once the last write's cost is ``share`` of the wait."""
        if self._last_end is None:
            return True
        return self.clock() - self._last_end >= self._last_cost / self.share

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Measure one write (the next wait scales with it)."""
        start = self.clock()
        try:
            yield
        finally:
            self._last_end = self.clock()
            self._last_cost = self._last_end - start
