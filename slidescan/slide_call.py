"""Turn a heatmap into a per-slide metastasis call (pure: no I/O)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from skimage.measure import label


@dataclass(frozen=True)
class SlideCall:
    """The slide-level result and the numbers behind it."""

    positive: bool
    score: float
    threshold: float
    tile_threshold: float
    positive_tiles: int
    tissue_tiles: int
    largest_region_mm2: float
    max_probability: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of the fields."""
        return asdict(self)


def call_slide(
    probability: np.ndarray,
    *,
    threshold: float,
    cell_mm: float,
    tile_threshold: float | None = None,
    smoothing: int = 3,
    min_region_cells: int = 1,
) -> SlideCall:
    """Call a slide positive or negative from its (rows, cols) heatmap, NaN where no tissue.

    The score is the maximum, over tissue cells, of the heatmap after a NaN-aware mean filter
    over the ``smoothing`` x ``smoothing`` neighbourhood (centred; NaN neighbours are left out of
    the mean, not counted as zero), taken over windows that are at least half tissue. Why: a
    single noisy tile should not call a slide positive, while a metastasis spans neighbouring
    tiles and survives the averaging. ``smoothing=1`` makes
    the score the plain maximum. The slide is positive when ``score >= threshold`` and its
    largest 8-connected region of positive tiles has at least ``min_region_cells`` cells.

    A tile is positive at ``tile_threshold`` (default: ``threshold``). The slide threshold is
    usually higher (see :func:`calibrate_slide_threshold`): a tile threshold is tuned for
    accuracy on single patches, and a slide has thousands of chances to cross it.
    ``positive_tiles`` counts positive tiles; ``largest_region_mm2`` is their largest region's
    cell count x ``cell_mm`` squared. A heatmap with no tissue gives a negative call
    with score 0.0 and zero counts.
    """
    grid = np.asarray(probability, dtype=np.float64)
    if grid.ndim != 2:
        raise ValueError(f"probability must be a 2-D (rows, cols) grid, got shape {grid.shape}")
    tile_threshold = threshold if tile_threshold is None else tile_threshold
    if not (math.isfinite(threshold) and math.isfinite(tile_threshold)):
        raise ValueError(f"thresholds must be finite, got {threshold}, {tile_threshold}")
    if not (cell_mm > 0 and math.isfinite(cell_mm)):
        raise ValueError(f"cell_mm must be a positive length, got {cell_mm}")
    if smoothing < 1 or smoothing % 2 == 0:
        raise ValueError(f"smoothing must be a positive odd window size, got {smoothing}")
    if min_region_cells < 1:
        raise ValueError(f"min_region_cells must be >= 1, got {min_region_cells}")

    tissue = np.isfinite(grid)
    tissue_tiles = int(tissue.sum())
    if tissue_tiles == 0:
        return SlideCall(
            False, 0.0, float(threshold), float(tile_threshold), 0, tissue_tiles, 0.0, 0.0
        )

    smoothed, counts = _nan_mean_filter(grid, tissue, smoothing)
    # Windows that are mostly glass would score a lone tile unsmoothed; they count only when
    # no window on the slide has enough tissue (a tiny biopsy).
    full = tissue & (counts >= (smoothing * smoothing + 1) // 2)
    score = float(smoothed[full if full.any() else tissue].max())
    above = tissue & (grid >= tile_threshold)
    largest_cells = _largest_region_cells(above)
    return SlideCall(
        positive=bool(score >= threshold and largest_cells >= min_region_cells),
        score=score,
        threshold=float(threshold),
        tile_threshold=float(tile_threshold),
        positive_tiles=int(above.sum()),
        tissue_tiles=tissue_tiles,
        largest_region_mm2=float(largest_cells * cell_mm * cell_mm),
        max_probability=float(grid[tissue].max()),
    )


def _nan_mean_filter(
    grid: np.ndarray, tissue: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the finite values in each centred size x size window (NaN if it has none), and
    how many finite values each window holds."""
    if size == 1:
        return grid, tissue.astype(np.float64)
    pad = size // 2
    values = np.pad(np.where(tissue, grid, 0.0), pad)
    counts = np.pad(tissue.astype(np.float64), pad)
    # Window sums rather than a running integral image: no cancellation error, and the grid is
    # small (~1e6 cells) so size^2 work per cell is cheap.
    sums = sliding_window_view(values, (size, size)).sum(axis=(-2, -1))
    n = sliding_window_view(counts, (size, size)).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / n, n


def _largest_region_cells(mask: np.ndarray) -> int:
    """Cell count of the largest 8-connected True region (0 when there is none)."""
    if not mask.any():
        return 0
    labels = label(mask, connectivity=2)
    return int(np.bincount(labels.ravel())[1:].max())


def smoothing_cells(patch_size: int, stride: int) -> int:
    """Odd window (in cells) spanning about 3 patch widths, whatever the grid stride."""
    n = max(1, round(3 * patch_size / stride))
    return n if n % 2 else n + 1


def calibrate_slide_threshold(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    window: int = 3,
    quantile: float = 0.999,
    draws: int = 200_000,
    seed: int = 0,
) -> float:
    """Threshold for the smoothed slide score, from validation patches.

    The score averages a ``window``×``window`` neighbourhood, so the threshold is set at the
    ``quantile`` of the mean of ``window``² probabilities drawn at random from the *negative*
    validation patches: a neighbourhood of normal tissue crosses it with probability about
    1 − ``quantile`` (less when normal tiles are spatially correlated — then more often).
    """
    negatives = np.asarray(probs, dtype=np.float64)[np.asarray(labels) == 0]
    if negatives.size == 0:
        raise ValueError("calibrating a slide threshold needs negative validation patches")
    rng = np.random.default_rng(seed)
    means = rng.choice(negatives, size=(draws, window * window)).mean(axis=1)
    return float(np.quantile(means, quantile))
