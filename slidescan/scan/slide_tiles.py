"""Inference input: patches for the chosen grid cells, read a block of cells at a time.

One ``read_at_mpp`` per block of ``block × block`` cells, sliced into patches, is far cheaper
than one read per patch (OpenSlide decodes each tile once, and there is one resample).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from slidescan.engine.stain_norm import StainMap
from slidescan.io.slide import Slide, open_slide
from slidescan.scan.tiling import TileGrid


class SlideTileDataset(Dataset):
    """Item ``i`` = (uint8 patches K×3×P×P, int64 cells K×2 as (row, col)) of block ``i``.

    Only the wanted cells of a block are returned, read from one region covering them. With
    ``dense`` an item is instead (uint8 region 1×3×H×W, int64 K×4 rows of (row, col, row in
    region, col in region)) for a fully convolutional model (see ``pcamnet.forward_dense``). Each
    process opens its own :class:`Slide` lazily (OpenSlide handles do not survive ``fork``),
    except that ``slide``, an open handle, serves the process that passes it; a handle is never
    pickled, so the dataset works with any DataLoader workers.
    """

    def __init__(
        self,
        path: Path,
        grid: TileGrid,
        cells: np.ndarray,
        *,
        mpp: float | None = None,
        block: int = 8,
        dense: bool = False,
        reader: str = "auto",
        stain: StainMap | None = None,
        slide: Slide | None = None,
    ) -> None:
        cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        rows, cols = grid.shape
        outside = (cells < 0).any(axis=1) | (cells[:, 0] >= rows) | (cells[:, 1] >= cols)
        if outside.any():
            raise ValueError(f"cell {cells[outside][0].tolist()} outside grid shape {grid.shape}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.path = Path(path)
        self.grid = grid
        self.mpp = mpp
        self.block = block
        self.dense = dense
        self.reader = reader
        self.stain = stain  # applied to each read region, before it is cut into tiles

        block_cols = -(-cols // block)
        keys = (cells[:, 0] // block) * block_cols + cells[:, 1] // block
        order = np.argsort(keys, kind="stable")
        _, starts = np.unique(keys[order], return_index=True)
        # Cells sorted by block, and where each block's run starts and ends.
        self._cells = cells[order]
        self._bounds = np.append(starts, len(order)).astype(np.int64)

        # The caller's open handle serves this process (and stays the caller's to close);
        # other processes, DataLoader workers, open their own.
        self._slide: Slide | None = slide
        self._pid: int | None = os.getpid() if slide is not None else None
        self._owned = slide is None

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def read_block(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Block ``i`` as (region H×W×3 covering its wanted cells, cells K×2, top-left cell)."""
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range 0..{len(self) - 1}")
        cells = self._cells[self._bounds[i] : self._bounds[i + 1]]
        grid = self.grid
        r0, c0 = (int(v) for v in cells.min(axis=0))
        r1, c1 = (int(v) for v in cells.max(axis=0))
        size = (
            (c1 - c0) * grid.stride + grid.patch_size,
            (r1 - r0) * grid.stride + grid.patch_size,
        )
        region = self._open().read_at_mpp(grid.cell_to_level0(r0, c0), size, grid.target_mpp)
        if self.stain is not None:
            region = self.stain(region)
        return region, cells, (r0, c0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        region, cells, (r0, c0) = self.read_block(i)
        if self.dense:
            # The whole region, for a fully convolutional model; cells relative to its top-left.
            rel = cells - np.array([r0, c0])
            return torch.from_numpy(region).permute(2, 0, 1)[None].contiguous(), torch.from_numpy(
                np.concatenate([cells, rel], axis=1)
            )
        grid, p = self.grid, self.grid.patch_size
        # Channels-first in one copy per patch (no HWC batch to transpose afterwards).
        chw = region.transpose(2, 0, 1)
        patches = np.empty((len(cells), 3, p, p), np.uint8)
        for k, (r, c) in enumerate(cells):
            y, x = int(r - r0) * grid.stride, int(c - c0) * grid.stride
            patches[k] = chw[:, y : y + p, x : x + p]
        return torch.from_numpy(patches), torch.from_numpy(cells.copy())

    def close(self) -> None:
        """Close this process's slide handle (reopened on the next read)."""
        if self._slide is not None and self._pid == os.getpid() and self._owned:
            self._slide.close()
        self._slide = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slide"] = None
        state["_pid"] = None
        return state

    def _open(self) -> Slide:
        pid = os.getpid()
        if self._slide is None or self._pid != pid:
            # A handle inherited through fork is the parent's and unsafe here; open our own.
            slide = open_slide(self.path, mpp=self.mpp, reader=self.reader)
            if not np.isclose(slide.mpp, self.grid.slide_mpp, rtol=1e-6):
                slide.close()
                raise ValueError(
                    f"{self.path.name}: slide mpp {slide.mpp} != grid slide_mpp "
                    f"{self.grid.slide_mpp}; open the slide with the grid's mpp"
                )
            self._slide, self._pid, self._owned = slide, pid, True
        return self._slide


def collate_blocks(
    items: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate block items into one batch of patches and their cells.

    In a DataLoader worker the batch is built straight into shared memory (as torch's default
    collate does), so it crosses to the main process without another copy.
    """
    if not items:
        raise ValueError("collate_blocks needs at least one item")
    patches, cells = zip(*items, strict=True)
    return _cat(patches), _cat(cells)


def _cat(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if len(parts) == 1 and get_worker_info() is None:
        return parts[0]
    out = None
    if get_worker_info() is not None:
        shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
        numel = math.prod(shape)
        storage = parts[0].untyped_storage()._new_shared(numel * parts[0].element_size())
        out = parts[0].new(storage).view(-1)[:numel].view(shape)
    return torch.cat(parts, out=out)


class BlockBatches(Sampler[list[int]]):
    """Consecutive blocks grouped into batches of at least ``batch_size`` patches (the last may
    be smaller), so DataLoader workers hand over whole model batches."""

    def __init__(self, dataset: SlideTileDataset, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sizes = np.diff(dataset._bounds)
        self.batch_size = batch_size
        self._batches = self._group()

    def _group(self) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        count = 0
        for i, size in enumerate(self.sizes):
            current.append(i)
            count += int(size)
            if count >= self.batch_size:
                batches.append(current)
                current, count = [], 0
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)
