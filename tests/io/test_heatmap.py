"""HeatmapWriter / read_heatmap: zarr v3 round trip, incremental cell writes, format checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from slidescan.errors import SlidescanError
from slidescan.io.heatmap import HeatmapWriter, read_heatmap
from slidescan.io.heatmap_format import FORMAT_NAME, FORMAT_VERSION, PROBABILITY_KEY, TISSUE_KEY

SHAPE = (10, 13)
CHUNKS = (4, 5)  # small chunks so a 10x13 grid has ragged edge chunks to cross


def test_round_trip_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "hm.zarr"
    rng = np.random.default_rng(0)
    expected = np.full(SHAPE, np.nan, dtype=np.float32)
    mask = rng.random(SHAPE) < 0.6
    mask[3, 4] = mask[4, 5] = True  # diagonal neighbours in different chunks, rewritten below
    all_cells = np.argwhere(mask)
    probs = rng.random(len(all_cells)).astype(np.float32)
    tissue = np.zeros(SHAPE, dtype=np.uint8)
    tissue[all_cells[:, 0], all_cells[:, 1]] = 200

    with HeatmapWriter(path, SHAPE, chunks=CHUNKS, attrs={"slide": "s1", "mpp": 0.972}) as writer:
        writer.write_tissue(tissue)
        for part in np.array_split(np.arange(len(all_cells)), 4):  # several batches, any order
            writer.write_cells(all_cells[part], probs[part])
            expected[all_cells[part, 0], all_cells[part, 1]] = probs[part]
        writer.write_cells(np.array([[3, 4], [4, 5]]), np.array([0.25, 0.75]))  # chunk corner
        expected[3, 4], expected[4, 5] = 0.25, 0.75
        writer.update_attrs(model="seed", slide_positive=False)

    prob, tis, attrs = read_heatmap(path)
    assert prob.shape == SHAPE and prob.dtype == np.float32
    np.testing.assert_array_equal(prob, expected)  # NaN positions match, values exact
    assert np.isnan(prob[tissue == 0]).all()
    np.testing.assert_array_equal(tis, tissue != 0)
    assert attrs["format"] == FORMAT_NAME and attrs["format_version"] == FORMAT_VERSION
    assert attrs["slide"] == "s1" and attrs["mpp"] == 0.972
    assert attrs["model"] == "seed" and attrs["slide_positive"] is False


def test_untouched_heatmap_is_all_nan_and_plain_zarr_v3(tmp_path: Path) -> None:
    path = tmp_path / "hm.zarr"
    HeatmapWriter(path, SHAPE, chunks=CHUNKS).close()
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    assert group[PROBABILITY_KEY].shape == SHAPE and group[PROBABILITY_KEY].chunks == CHUNKS
    assert group[TISSUE_KEY].dtype == np.bool_
    prob, tis, _ = read_heatmap(path)
    assert np.isnan(prob).all() and not tis.any()


def test_pending_cells_reach_disk_only_on_flush(tmp_path: Path) -> None:
    path = tmp_path / "hm.zarr"
    writer = HeatmapWriter(path, SHAPE, chunks=CHUNKS, flush_cells=1000)
    writer.write_cells(np.array([[9, 12]]), np.array([0.5]))
    assert np.isnan(read_heatmap(path)[0][9, 12])  # buffered, not yet a zarr write
    writer.flush()
    assert read_heatmap(path)[0][9, 12] == 0.5
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write_cells(np.array([[0, 0]]), np.array([0.5]))


def test_auto_flush_after_flush_cells(tmp_path: Path) -> None:
    path = tmp_path / "hm.zarr"
    writer = HeatmapWriter(path, SHAPE, chunks=CHUNKS, flush_cells=2)
    writer.write_cells(np.array([[0, 0], [8, 8]]), np.array([0.1, 0.2]))
    prob = read_heatmap(path)[0]
    assert prob[0, 0] == np.float32(0.1) and prob[8, 8] == np.float32(0.2)


@pytest.mark.parametrize(
    ("cells", "probs"),
    [
        (np.array([[10, 0]]), np.array([0.5])),  # row out of range
        (np.array([[0, -1]]), np.array([0.5])),
        (np.array([[0, 0]]), np.array([np.nan])),  # NaN is reserved for "not scored"
        (np.array([[0, 0]]), np.array([1.5])),
        (np.array([[0, 0], [1, 1]]), np.array([0.5])),
        (np.array([[0.0, 1.0]]), np.array([0.5])),
    ],
)
def test_write_cells_rejects_bad_input(
    tmp_path: Path, cells: np.ndarray, probs: np.ndarray
) -> None:
    writer = HeatmapWriter(tmp_path / "hm.zarr", SHAPE, chunks=CHUNKS)
    with pytest.raises(ValueError):
        writer.write_cells(cells, probs)


def test_refuses_existing_path_and_reserved_attrs(tmp_path: Path) -> None:
    path = tmp_path / "hm.zarr"
    HeatmapWriter(path, SHAPE).close()
    with pytest.raises(SlidescanError, match="already exists"):
        HeatmapWriter(path, SHAPE)
    HeatmapWriter(path, SHAPE, overwrite=True).close()
    with pytest.raises(ValueError, match="reserved"):
        HeatmapWriter(tmp_path / "other.zarr", SHAPE, attrs={"format_version": "9"})
    with pytest.raises(ValueError, match="reserved"):
        HeatmapWriter(path, SHAPE, overwrite=True).update_attrs(format="x")


def test_read_rejects_missing_and_foreign(tmp_path: Path) -> None:
    with pytest.raises(SlidescanError, match="not found"):
        read_heatmap(tmp_path / "nope.zarr")
    foreign = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w", zarr_format=3)
    foreign.create_array("probability", shape=(2, 2), dtype="float32")
    with pytest.raises(SlidescanError, match="not a slidescan heatmap"):
        read_heatmap(tmp_path / "foreign.zarr")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(SlidescanError):
        read_heatmap(tmp_path / "plain_dir")


def test_read_rejects_other_format_version(tmp_path: Path) -> None:
    path = tmp_path / "hm.zarr"
    HeatmapWriter(path, SHAPE).close()
    zarr.open_group(str(path), mode="r+").attrs["format_version"] = "999"
    with pytest.raises(SlidescanError, match="unsupported heatmap format version"):
        read_heatmap(path)


def test_flush_writes_each_changed_chunk_once(tmp_path: Path) -> None:
    writer = HeatmapWriter(tmp_path / "hm.zarr", SHAPE, chunks=CHUNKS, flush_cells=10_000)
    writes: list[tuple[slice, slice]] = []
    array = writer._probability

    class CountingArray:
        def __setitem__(self, key: tuple[slice, slice], value: np.ndarray) -> None:
            writes.append(key)
            array[key] = value

    writer._probability = CountingArray()  # type: ignore[assignment]
    cells = np.argwhere(np.ones((4, 10), dtype=bool))  # 40 cells in chunks (0, 0) and (0, 1)
    writer.write_cells(cells, np.full(len(cells), 0.5))
    writer.close()
    assert writes == [(slice(0, 4), slice(0, 5)), (slice(0, 4), slice(5, 10))]
