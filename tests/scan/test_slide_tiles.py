"""Block-reading tile dataset: same pixels as per-tile reads, safe in DataLoader workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from slide_fixtures import tissue_image, write_pyramid
from torch.utils.data import DataLoader

from slidescan.io.slide import open_slide
from slidescan.scan.slide_tiles import BlockBatches, SlideTileDataset, collate_blocks
from slidescan.scan.tiling import TileGrid, make_grid

TARGET = 0.972


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rgb, _ = tissue_image(1152, 1536, seed=2)
    return write_pyramid(tmp_path_factory.mktemp("tiles") / "slide.tif", rgb, mpp=0.25)


def _all_cells(shape: tuple[int, int]) -> np.ndarray:
    return np.argwhere(np.ones(shape, bool))


def _per_tile(path: Path, grid: TileGrid, cells: np.ndarray) -> np.ndarray:
    with open_slide(path) as slide:
        return np.stack(
            [
                slide.read_at_mpp(grid.cell_to_level0(r, c), (96, 96), grid.target_mpp)
                for r, c in cells
            ]
        ).transpose(0, 3, 1, 2)


def _gather(dataset: SlideTileDataset) -> tuple[np.ndarray, np.ndarray]:
    patches, cells = collate_blocks([dataset[i] for i in range(len(dataset))])
    return patches.numpy(), cells.numpy()


@pytest.mark.parametrize("target", [TARGET, 1.0])
def test_blocks_match_per_tile_reads(slide_path: Path, target: float) -> None:
    grid = make_grid((1536, 1152), 0.25, target)
    wanted = _all_cells(grid.shape)[::2]  # a sparse selection, so blocks are partly empty
    dataset = SlideTileDataset(slide_path, grid, wanted, block=2)
    patches, cells = _gather(dataset)
    assert patches.dtype == np.uint8 and patches.shape == (len(wanted), 3, 96, 96)
    assert cells.dtype == np.int64
    assert sorted(map(tuple, cells)) == sorted(map(tuple, wanted))
    diff = np.abs(patches.astype(int) - _per_tile(slide_path, grid, cells))
    if target == 1.0:  # a whole number of level-0 px per cell: identical reads
        assert diff.max() == 0
    else:  # per-tile locations are rounded to level-0 px; blocks slice exact offsets
        assert diff.mean() < 1.5


def test_block_grouping(slide_path: Path) -> None:
    grid = make_grid((1536, 1152), 0.25, TARGET)  # 4 × 5 cells (the last row/column partial)
    assert len(SlideTileDataset(slide_path, grid, _all_cells(grid.shape), block=2)) == 6
    assert len(SlideTileDataset(slide_path, grid, _all_cells(grid.shape), block=8)) == 1
    one = SlideTileDataset(slide_path, grid, np.array([[2, 3]]), block=2)
    patches, cells = one[0]
    assert patches.shape == (1, 3, 96, 96) and cells.tolist() == [[2, 3]]
    with pytest.raises(IndexError):
        one[1]


def test_dataloader_with_workers(slide_path: Path) -> None:
    grid = make_grid((1536, 1152), 0.25, 1.0)
    dataset = SlideTileDataset(slide_path, grid, _all_cells(grid.shape), block=2)
    expected_patches, expected_cells = _gather(dataset)  # opens a handle in this process first
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_blocks)
    batches = list(loader)
    patches = torch.cat([p for p, _ in batches]).numpy()
    cells = torch.cat([c for _, c in batches]).numpy()
    np.testing.assert_array_equal(cells, expected_cells)
    np.testing.assert_array_equal(patches, expected_patches)
    dataset.close()


@pytest.mark.parametrize("batch_size", [1, 5, 7, 1000])
def test_block_batches_cover_every_block_once(slide_path: Path, batch_size: int) -> None:
    grid = make_grid((1536, 1152), 0.25, 1.0)
    wanted = _all_cells(grid.shape)[::3]  # uneven blocks
    dataset = SlideTileDataset(slide_path, grid, wanted, block=2)
    batches = list(BlockBatches(dataset, batch_size))
    assert [i for b in batches for i in b] == list(range(len(dataset)))
    sizes = [sum(len(dataset._cells[dataset._bounds[i] : dataset._bounds[i + 1]]) for i in b)
             for b in batches]  # fmt: skip
    assert all(n >= batch_size for n in sizes[:-1]) and sum(sizes) == len(wanted)
    # Minimal: dropping a batch's last block would leave it short.
    for b in batches[:-1]:
        assert sum(int(dataset._bounds[i + 1] - dataset._bounds[i]) for i in b[:-1]) < batch_size
    # Collated in two workers (straight into shared memory): the same tiles as in-process.
    expected_patches, expected_cells = _gather(dataset)
    loader = DataLoader(
        dataset, batch_sampler=BlockBatches(dataset, batch_size), num_workers=2,
        collate_fn=collate_blocks,
    )  # fmt: skip
    got = list(loader)
    assert [len(c) for _, c in got] == sizes
    assert all(p.dtype == torch.uint8 and c.dtype == torch.int64 for p, c in got)
    np.testing.assert_array_equal(torch.cat([c for _, c in got]).numpy(), expected_cells)
    np.testing.assert_array_equal(torch.cat([p for p, _ in got]).numpy(), expected_patches)
    dataset.close()


def test_pickle_drops_the_handle(slide_path: Path) -> None:
    grid = make_grid((1536, 1152), 0.25, TARGET)
    dataset = SlideTileDataset(slide_path, grid, _all_cells(grid.shape), block=4)
    first = dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._slide is None
    assert torch.equal(clone[0][0], first[0])


def test_mpp_override_is_used(tmp_path: Path) -> None:
    rgb, _ = tissue_image(400, 400)
    path = write_pyramid(tmp_path / "nompp.tif", rgb, mpp=None, levels=1)
    grid = make_grid((400, 400), 0.5, TARGET)
    patches, _ = SlideTileDataset(path, grid, _all_cells(grid.shape), mpp=0.5)[0]
    assert patches.shape == (9, 3, 96, 96)  # 400 px / 186.6 px per patch: 3 × 3 cells
    with pytest.raises(ValueError, match="slide mpp"):
        SlideTileDataset(path, grid, _all_cells(grid.shape), mpp=0.25)[0]


def test_cells_outside_grid_are_rejected(slide_path: Path) -> None:
    grid = make_grid((1536, 1152), 0.25, TARGET)
    with pytest.raises(ValueError, match="outside grid"):
        SlideTileDataset(slide_path, grid, np.array([[0, 5]]))
