"""Turn a heatmap into a lesion-based slide call, the way pathologists stage nodes (pure: no I/O).

A **lesion** is a connected region (8-neighbours) of cells at or above the *extent* threshold that
holds at least ``seed_cells`` cells at or above the stricter *seed* threshold (hysteresis
thresholding: the seed makes the detection rare on normal tissue, the extent measures the
lesion's real size). Why several seed cells: a slide of 10,000 tiles has tens of thousands of
chances to produce one or two very confident false tiles next to each other, so a one-cell seed
must sit so far in the tail of normal tiles that no held-out set can estimate it, while three
confident tiles together are rare enough to calibrate, and any metastasis larger than 0.2 mm
covers several tiles.
Each lesion's longest diameter puts it in a Camelyon17 / AJCC pN category:

- *macrometastasis*: longest diameter > 2 mm;
- *micrometastasis*: > 0.2 mm and ≤ 2 mm;
- *isolated tumour cells* (ITC): ≤ 0.2 mm.

The slide takes its largest lesion's category (``negative`` when it has none) and is *positive*
when that is a micrometastasis or larger (pN1mi and above; ITC alone stage as pN0(i+)).

The seed threshold is calibrated on simulated all-normal slides of realistic size
(:func:`calibrate_seed_thresholds`), not on single windows: a slide has thousands of chances to
produce a false lesion, so the rate that matters is per slide, and it grows with tissue area
(:func:`false_positive_rate`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from scipy import ndimage

from slidescan.report.slide_report import CallNumbers, Lesion
from slidescan.vocabulary import Category

MACRO_MM = 2.0
MICRO_MM = 0.2
SEED_CELLS = 3  # seed tiles a lesion needs on the default stride-96 grid (see above)


def seed_cells_for(stride: int, patch_size: int = 96) -> int:
    """``SEED_CELLS`` patch areas in cells of a grid of ``stride`` (more cells at finer strides)."""
    return math.ceil(SEED_CELLS * (patch_size / stride) ** 2 - 1e-9)


def lesion_category(diameter_mm: float) -> Category:
    """pN category of one lesion from its longest diameter in mm."""
    if diameter_mm > MACRO_MM:
        return Category.macrometastasis
    if diameter_mm > MICRO_MM:
        return Category.micrometastasis
    return Category.itc


@dataclass(frozen=True)
class SlideCall(CallNumbers):
    """The slide-level result and the numbers behind it."""

    lesions: tuple[Lesion, ...] = field(default=())
    # Where the lesions lie: i + 1 on the cells of lesions[i] (see label_lesions); for outlines
    # and polygons, not part of the JSON.
    lesion_labels: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 0), dtype=np.int32), repr=False, compare=False
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of the fields (lesions largest first)."""
        # Field by field: asdict would deep-copy the label grid only for it to be dropped.
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lesion_labels"}
        out["lesions"] = [asdict(lesion) for lesion in self.lesions]
        return out


def label_lesions(
    probability: np.ndarray,
    *,
    seed_threshold: float,
    extent_threshold: float,
    cell_mm: float,
    seed_cells: int = 1,
) -> tuple[np.ndarray, list[Lesion]]:
    """Lesions of a (rows, cols) heatmap (NaN where no tissue), largest diameter first, and where
    each lies: an int32 (rows, cols) grid holding ``i + 1`` on the cells of ``lesions[i]`` and 0
    elsewhere (for outlines and polygons).

    A lesion's longest diameter is the largest distance between two of its cell centres plus one
    cell (each end cell contributes half its width), times ``cell_mm``, the grid stride in mm; so
    a single cell measures one cell and a straight run of k cells measures k cells.
    """
    grid = _check_grid(probability)
    _check_thresholds(seed_threshold, extent_threshold, cell_mm)
    if seed_cells < 1:
        raise ValueError(f"seed_cells must be >= 1, got {seed_cells}")
    labels, seeds = _regions(grid, extent_threshold, seed_cells)
    boxes = ndimage.find_objects(labels)
    found = []
    for lab in np.flatnonzero(seeds >= seed_threshold) + 1:
        box = boxes[lab - 1]
        local = labels[box] == lab
        rows, cols = np.nonzero(local)
        probs = grid[box][local]
        diameter = (_max_distance(rows, cols) + 1.0) * cell_mm
        lesion = Lesion(
            row=float(rows.mean() + box[0].start),
            col=float(cols.mean() + box[1].start),
            diameter_mm=float(diameter),
            area_mm2=float(len(rows) * cell_mm * cell_mm),
            tiles=len(rows),
            mean_probability=float(probs.mean()),
            max_probability=float(probs.max()),
            category=lesion_category(diameter),
        )
        found.append((lesion, int(lab)))
    found.sort(key=lambda pair: (-pair[0].diameter_mm, -pair[0].max_probability))
    relabel = np.zeros(len(seeds) + 1, dtype=np.int32)
    for i, (_, old) in enumerate(found):
        relabel[old] = i + 1
    return relabel[labels], [lesion for lesion, _ in found]


def _regions(grid: np.ndarray, extent: float, seed_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Labelled regions at ``extent`` and each region's ``seed_cells``-th highest probability
    (-inf where it has fewer cells): a region is a lesion when that reaches the seed."""
    tissue = np.isfinite(grid)
    values = np.where(tissue, grid, -np.inf)
    labels, n = ndimage.label(values >= extent, structure=np.ones((3, 3)))
    seeds = np.full(n, -np.inf)
    if n == 0:
        return labels, seeds
    lab = labels[labels > 0]
    val = values[labels > 0]
    order = np.lexsort((-val, lab))  # by region, then by probability, highest first
    lab, val = lab[order], val[order]
    starts = np.searchsorted(lab, np.arange(1, n + 1))
    counts = np.bincount(lab, minlength=n + 1)[1:]
    has = counts >= seed_cells
    seeds[has] = val[starts[has] + seed_cells - 1]
    return labels, seeds


def call_slide(
    probability: np.ndarray,
    *,
    seed_threshold: float,
    extent_threshold: float,
    cell_mm: float,
    seed_cells: int = 1,
) -> SlideCall:
    """The slide's pN-style call from its heatmap (see the module docstring)."""
    grid = _check_grid(probability)
    labels, lesions = label_lesions(
        grid, seed_threshold=seed_threshold, extent_threshold=extent_threshold, cell_mm=cell_mm,
        seed_cells=seed_cells,
    )  # fmt: skip
    tissue = np.isfinite(grid)
    largest = lesions[0].diameter_mm if lesions else 0.0
    category = lesion_category(largest) if lesions else Category.negative
    return SlideCall(
        positive=category.rank >= Category.micrometastasis.rank,
        category=category,
        largest_diameter_mm=float(largest),
        seed_threshold=float(seed_threshold),
        extent_threshold=float(extent_threshold),
        seed_tiles=int(seed_cells),
        positive_tiles=int((tissue & (np.where(tissue, grid, 0) >= extent_threshold)).sum()),
        tissue_tiles=int(tissue.sum()),
        max_probability=float(grid[tissue].max()) if tissue.any() else None,
        lesions=tuple(lesions),
        lesion_labels=labels,
    )


def slide_critical_seed(
    probability: np.ndarray, *, extent_threshold: float, cell_mm: float, seed_cells: int = 1
) -> float:
    """The highest seed threshold at which this heatmap is still called positive (0 if none).

    Positive means a lesion > 0.2 mm; a region's extent does not depend on the seed threshold,
    so the answer is the highest ``seed_cells``-th probability among regions (at
    ``extent_threshold``) wider than that.
    """
    grid = _check_grid(probability)
    labels, seeds = _regions(grid, extent_threshold, seed_cells)
    boxes = ndimage.find_objects(labels)
    best = 0.0
    # Largest candidates first: most regions are single cells and never reach 0.2 mm.
    for lab in np.argsort(-seeds) + 1:
        seed = seeds[lab - 1]
        if seed <= best:
            break
        rows, cols = np.nonzero(labels[boxes[lab - 1]] == lab)
        if (_max_distance(rows, cols) + 1.0) * cell_mm > MICRO_MM:
            best = float(seed)
    return best


def simulate_normal_slides(
    negative_probs: np.ndarray, *, tissue_cells: int, slides: int, seed: int = 0
) -> np.ndarray:
    """``slides`` square all-tissue heatmaps of about ``tissue_cells`` cells, each cell drawn at
    random from ``negative_probs`` (probabilities of normal patches): (slides, side, side)."""
    pool = np.asarray(negative_probs, dtype=np.float64).ravel()
    if pool.size == 0:
        raise ValueError("simulating normal slides needs probabilities of normal patches")
    side = max(1, round(math.sqrt(tissue_cells)))
    return np.random.default_rng(seed).choice(pool, size=(slides, side, side))


def false_positive_rate(
    negative_probs: np.ndarray,
    *,
    seed_threshold: float,
    extent_threshold: float,
    cell_mm: float,
    tissue_cells: int,
    seed_cells: int = 1,
    slides: int = 200,
    seed: int = 0,
) -> float:
    """Fraction of simulated all-normal slides of ``tissue_cells`` cells called positive."""
    critical = _critical_seeds(
        negative_probs, extent_threshold, cell_mm, tissue_cells, seed_cells, slides, seed
    )
    return float((critical >= seed_threshold).mean())


def calibrate_seed_thresholds(
    negative_probs: np.ndarray,
    *,
    extent_threshold: float,
    cell_mm: float,
    tissue_cells: int = 40_000,
    seed_cells: int = 1,
    target_rates: tuple[float, ...] = (0.01,),
    slides: int = 400,
    seed: int = 0,
) -> list[float]:
    """For each of ``target_rates``, the seed threshold that calls at most that share of the same
    simulated all-normal slides of ``tissue_cells`` cells positive (never below
    ``extent_threshold``).

    ``negative_probs``: the model's probabilities on normal patches held out of training
    (ideally each under the 8 flips/rotations, as a mosaic of those patches would show them).
    Cells of real slides are spatially correlated, which random mosaics are not: choose a
    ``target_rate`` below the rate you can accept.
    """
    for rate in target_rates:
        if not 0 < rate < 1:
            raise ValueError(f"target_rate must be in (0, 1), got {rate}")
    critical = _critical_seeds(
        negative_probs, extent_threshold, cell_mm, tissue_cells, seed_cells, slides, seed
    )
    # Called positive when critical >= seed: the seed must exceed the (1 - rate) quantile.
    return [
        max(float(np.nextafter(np.quantile(critical, 1 - rate), np.inf)), float(extent_threshold))
        for rate in target_rates
    ]


def _critical_seeds(
    negative_probs: np.ndarray,
    extent_threshold: float,
    cell_mm: float,
    tissue_cells: int,
    seed_cells: int,
    slides: int,
    seed: int,
) -> np.ndarray:
    grids = simulate_normal_slides(
        negative_probs, tissue_cells=tissue_cells, slides=slides, seed=seed
    )
    return np.array(
        [
            slide_critical_seed(
                g, extent_threshold=extent_threshold, cell_mm=cell_mm, seed_cells=seed_cells
            )
            for g in grids
        ]
    )


def _max_distance(rows: np.ndarray, cols: np.ndarray) -> float:
    """Largest distance between two of the points (cell centres), in cells."""
    if len(rows) < 2:
        return 0.0
    pts = np.stack([rows, cols], axis=1).astype(np.float64)
    if len(pts) > 64:
        # The farthest pair lies on the region's outline: keep each row's and column's extremes.
        keep = np.zeros(len(pts), dtype=bool)
        for axis in (0, 1):
            key = pts[:, axis]
            other = pts[:, 1 - axis]
            order = np.lexsort((other, key))
            k = key[order]
            first = np.r_[True, k[1:] != k[:-1]]
            last = np.r_[k[1:] != k[:-1], True]
            keep[order[first | last]] = True
        pts = pts[keep]
    diff = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def _check_grid(probability: np.ndarray) -> np.ndarray:
    grid = np.asarray(probability, dtype=np.float64)
    if grid.ndim != 2:
        raise ValueError(f"probability must be a 2-D (rows, cols) grid, got shape {grid.shape}")
    return grid


def _check_thresholds(seed: float, extent: float, cell_mm: float) -> None:
    if math.isnan(seed) or not math.isfinite(extent):
        raise ValueError(f"thresholds must be numbers, got seed {seed}, extent {extent}")
    if not (cell_mm > 0 and math.isfinite(cell_mm)):
        raise ValueError(f"cell_mm must be a positive length, got {cell_mm}")
