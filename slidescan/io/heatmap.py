"""Write and read the per-slide heatmap: a zarr v3 group filled in while the scan runs.

Design: the writer keeps the whole probability grid in memory (float32; a 100k x 100k px slide
at 96 px cells is ~1000 x 1000 cells = 4 MB) and remembers which zarr chunks have changed.
:meth:`HeatmapWriter.flush` writes each changed chunk once, as one whole-chunk write, so K
scored cells cost at most (number of chunks touched) zarr writes rather than K. The in-memory
grid is authoritative because the writer always creates the group itself.

The group is also an OME-Zarr (NGFF 0.5) image with a tissue label image, so napari and other
OME-Zarr viewers overlay it on the slide; see :mod:`slidescan.io.heatmap_format` for the layout
and the coordinate convention.

Crash safety (writing under a temporary name and renaming) is the caller's job.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from slidescan.errors import SlidescanError
from slidescan.io.heatmap_format import (
    ATTR_FORMAT,
    ATTR_FORMAT_VERSION,
    ATTR_OME,
    AXES,
    FORMAT_NAME,
    FORMAT_VERSION,
    LABELS_GROUP,
    PROBABILITY_KEY,
    RESERVED_ATTRS,
    TISSUE_KEY,
    TISSUE_LABEL_ARRAY,
    HeatmapGeometry,
    ome_image_attrs,
    ome_labels_attrs,
    ome_tissue_label_attrs,
)

# Roughly one default chunk of cells: bounds how much is lost from disk if the scan dies,
# without writing after every small batch.
DEFAULT_FLUSH_CELLS = 256 * 256


class HeatmapWriter:
    """Create a heatmap group at ``path`` and fill it incrementally.

    ``shape`` is the (rows, cols) cell grid and ``chunks`` its zarr chunking. ``attrs`` are
    stored next to the format name and version (which they may not override). Pending cells
    are flushed automatically every ``flush_cells`` cells, and on :meth:`flush`/:meth:`close`.
    ``slide_mpp`` (µm per level-0 pixel), ``cell_origin_level0`` (level-0 ``(x, y)`` of the
    top-left of cell (0, 0)'s area) and ``cell_level0_px`` (cell side in level-0 pixels) place
    the OME-Zarr image on the slide in micrometres; give all three or none (then the image is
    in unitless cells).
    An existing ``path`` is an error unless ``overwrite`` is True, because zarr would delete it.
    Usable as a context manager (closes, i.e. flushes, on exit).
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, int],
        chunks: tuple[int, int] = (256, 256),
        attrs: dict[str, Any] | None = None,
        *,
        overwrite: bool = False,
        flush_cells: int = DEFAULT_FLUSH_CELLS,
        slide_mpp: float | None = None,
        cell_origin_level0: tuple[float, float] | list[float] | None = None,
        cell_level0_px: float | None = None,
    ) -> None:
        rows, cols = (int(n) for n in shape)
        if rows < 1 or cols < 1:
            raise ValueError(f"heatmap shape must be positive, got {shape}")
        chunk_rows, chunk_cols = (int(n) for n in chunks)
        if chunk_rows < 1 or chunk_cols < 1:
            raise ValueError(f"heatmap chunks must be positive, got {chunks}")
        extra = dict(attrs or {})
        _check_not_reserved(extra)
        geometry = _geometry(slide_mpp, cell_origin_level0, cell_level0_px)
        path = Path(path)
        if path.exists() and not overwrite:
            raise SlidescanError(f"heatmap output already exists: {path}")

        self.path = path
        self.shape = (rows, cols)
        self.chunks = (chunk_rows, chunk_cols)
        self._flush_cells = max(1, int(flush_cells))
        self._grid = np.full(self.shape, np.nan, dtype=np.float32)
        self._dirty: set[tuple[int, int]] = set()
        self._pending = 0
        self._closed = False

        self._group = zarr.open_group(store=str(path), mode="w", zarr_format=3)
        self._probability = self._group.create_array(
            PROBABILITY_KEY,
            shape=self.shape,
            chunks=self.chunks,
            dtype="float32",
            fill_value=np.nan,
            dimension_names=AXES,
        )
        self._tissue = self._group.create_array(
            TISSUE_KEY,
            shape=self.shape,
            chunks=self.chunks,
            dtype="bool",
            fill_value=False,
            dimension_names=AXES,
        )
        labels = self._group.create_group(LABELS_GROUP)
        labels.attrs[ATTR_OME] = ome_labels_attrs()
        tissue_label = labels.create_group(TISSUE_KEY)
        tissue_label.attrs[ATTR_OME] = ome_tissue_label_attrs(geometry)
        self._tissue_label = tissue_label.create_array(
            TISSUE_LABEL_ARRAY,
            shape=self.shape,
            chunks=self.chunks,
            dtype="uint8",
            fill_value=0,
            dimension_names=AXES,
        )
        self._group.attrs.update(
            {
                ATTR_FORMAT: FORMAT_NAME,
                ATTR_FORMAT_VERSION: FORMAT_VERSION,
                ATTR_OME: ome_image_attrs(geometry),
                **extra,
            }
        )

    @property
    def probability(self) -> np.ndarray:
        """A copy of the whole in-memory probability grid (NaN where nothing was written)."""
        return self._grid.copy()

    def write_tissue(self, tissue: np.ndarray) -> None:
        """Store the tissue mask: bool, or integers where nonzero means tissue.

        Floating-point fractions are refused: choosing their cut-off belongs to tissue detection.
        """
        self._check_open()
        tissue = np.asarray(tissue)
        if tissue.shape != self.shape:
            raise ValueError(f"tissue shape {tissue.shape} != heatmap shape {self.shape}")
        if tissue.dtype != np.bool_:
            if not np.issubdtype(tissue.dtype, np.integer):
                raise TypeError(f"tissue must be bool or integer, got {tissue.dtype}")
            tissue = tissue != 0
        self._tissue[...] = tissue
        self._tissue_label[...] = tissue.astype(np.uint8)

    def write_cells(self, cells: np.ndarray, probs: np.ndarray) -> None:
        """Record probabilities ``probs`` (K,) for grid ``cells`` (K, 2) given as (row, col).

        Values are buffered in memory; whole changed chunks reach disk on flush.
        """
        self._check_open()
        cells = np.asarray(cells)
        probs = np.asarray(probs, dtype=np.float32).reshape(-1)
        if cells.size == 0 and probs.size == 0:
            return
        if cells.ndim != 2 or cells.shape[1] != 2 or not np.issubdtype(cells.dtype, np.integer):
            raise ValueError(
                f"cells must be an integer (K, 2) array, got {cells.dtype} {cells.shape}"
            )
        if cells.shape[0] != probs.shape[0]:
            raise ValueError(f"{cells.shape[0]} cells but {probs.shape[0]} probabilities")
        rows, cols = cells[:, 0], cells[:, 1]
        if (
            rows.min() < 0
            or cols.min() < 0
            or rows.max() >= self.shape[0]
            or cols.max() >= self.shape[1]
        ):
            raise ValueError(f"cell index outside the {self.shape} heatmap grid")
        # NaN means "not scored" on disk, so a real score must be a finite probability.
        if not np.all(np.isfinite(probs)) or probs.min() < 0.0 or probs.max() > 1.0:
            raise ValueError("probabilities must be finite and within [0, 1]")

        self._grid[rows, cols] = probs
        chunk_ids = np.unique(np.stack([rows // self.chunks[0], cols // self.chunks[1]], 1), axis=0)
        self._dirty.update((int(r), int(c)) for r, c in chunk_ids)
        self._pending += len(probs)
        if self._pending >= self._flush_cells:
            self.flush()

    def flush(self) -> None:
        """Write every chunk changed since the last flush, one zarr write per chunk."""
        self._check_open()
        chunk_rows, chunk_cols = self.chunks
        for ci, cj in sorted(self._dirty):
            window = (
                slice(ci * chunk_rows, min((ci + 1) * chunk_rows, self.shape[0])),
                slice(cj * chunk_cols, min((cj + 1) * chunk_cols, self.shape[1])),
            )
            self._probability[window] = self._grid[window]
        self._dirty.clear()
        self._pending = 0

    def update_attrs(self, **attrs: Any) -> None:
        """Add or replace group attributes (JSON-serialisable; not the format name/version)."""
        self._check_open()
        _check_not_reserved(attrs)
        self._group.attrs.update(attrs)

    def close(self) -> None:
        """Flush what is pending; further writes are errors. Closing twice is harmless."""
        if self._closed:
            return
        self.flush()
        self._closed = True

    def __enter__(self) -> HeatmapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"heatmap writer for {self.path} is closed")


def update_heatmap_attrs(path: Path, **attrs: Any) -> None:
    """Add or replace attributes of a finished heatmap group (not the format's own)."""
    _check_not_reserved(attrs)
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.update(attrs)


def read_heatmap(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load ``(probability, tissue, attrs)`` from a heatmap group written by :class:`HeatmapWriter`.

    Raises SlidescanError when ``path`` is missing, not zarr, or not a slidescan heatmap of a
    version this code understands.
    """
    path = Path(path)
    if not path.exists():
        raise SlidescanError(f"heatmap not found: {path}")
    try:
        group = zarr.open_group(store=str(path), mode="r")
    except Exception as err:  # zarr raises several types for "not a group here"
        raise SlidescanError(f"not a zarr group: {path} ({type(err).__name__})") from err
    attrs = dict(group.attrs)
    if attrs.get(ATTR_FORMAT) != FORMAT_NAME:
        raise SlidescanError(f"not a slidescan heatmap (no '{ATTR_FORMAT}: {FORMAT_NAME}'): {path}")
    version = attrs.get(ATTR_FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SlidescanError(
            f"unsupported heatmap format version {version!r} (expected {FORMAT_VERSION!r}): {path}"
        )
    try:
        probability = np.asarray(_array(group, PROBABILITY_KEY)[...], dtype=np.float32)
        tissue = np.asarray(_array(group, TISSUE_KEY)[...], dtype=bool)
    except KeyError as err:
        raise SlidescanError(f"heatmap is missing array {err}: {path}") from err
    return probability, tissue, attrs


def _geometry(
    slide_mpp: float | None,
    cell_origin_level0: tuple[float, float] | list[float] | None,
    cell_level0_px: float | None,
) -> HeatmapGeometry | None:
    """The writer's placement arguments as one geometry, or None when none were given."""
    if slide_mpp is None and cell_origin_level0 is None and cell_level0_px is None:
        return None
    if slide_mpp is None or cell_origin_level0 is None or cell_level0_px is None:
        raise ValueError("give slide_mpp, cell_origin_level0 and cell_level0_px together, or none")
    x0, y0 = (float(v) for v in cell_origin_level0)
    return HeatmapGeometry(float(slide_mpp), (x0, y0), float(cell_level0_px))


def _check_not_reserved(attrs: Mapping[str, Any]) -> None:
    clash = RESERVED_ATTRS.intersection(attrs)
    if clash:
        raise ValueError(f"attributes {sorted(clash)} are reserved for the heatmap format")


def _array(group: zarr.Group, key: str) -> zarr.Array:
    """``group[key]`` as an array (KeyError if missing, SlidescanError if it is a group)."""
    node = group[key]
    if not isinstance(node, zarr.Array):
        raise SlidescanError(f"heatmap member {key!r} is not an array")
    return node
