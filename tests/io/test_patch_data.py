"""Patch dataset readers: layout detection, exact pixels, validation errors, workers, real data."""

from __future__ import annotations

import csv
import gzip
import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from slidescan.errors import SlidescanError
from slidescan.io.patches import (
    CACHE_ENV_VAR,
    PATCH_SIZE,
    PatchDataset,
    open_patch_dataset,
    open_patch_datasets,
    open_unlabelled_patches,
    read_patch_image,
)
from slidescan.io.patches.pcam_h5 import cache_dir

PCAM = "camelyonpatch_level_2_split_{}_{}.h5"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep decompressed .h5.gz copies inside the test's tmp_path."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache))
    return cache


def _patch(seed: int, size: tuple[int, int] = (PATCH_SIZE, PATCH_SIZE), ch: int = 3) -> np.ndarray:
    shape = (size[1], size[0], ch) if ch > 1 else (size[1], size[0])
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path: Path, arr: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1)


def _assert_item(ds: PatchDataset, i: int, pixels: np.ndarray, label: int) -> None:
    img, lab = ds[i]
    assert img.shape == (3, PATCH_SIZE, PATCH_SIZE)
    assert img.dtype == torch.uint8
    assert isinstance(lab, int) and lab == label
    assert torch.equal(img, _chw(pixels))


def _write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("id", "label")):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _kaggle(root: Path, labels: dict[str, int]) -> dict[str, np.ndarray]:
    pixels = {i: _save(root / "train" / f"{i}.tif", _patch(n)) for n, i in enumerate(labels)}
    _write_csv(root / "train_labels.csv", [(i, str(v)) for i, v in labels.items()])
    return pixels


def _h5_pair(folder: Path, split: str, n: int, *, seed: int = 0, gz: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    y = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
    for kind, arr in (("x", x), ("y", y)):
        path = folder / PCAM.format(split, kind)
        with h5py.File(path, "w") as f:
            f.create_dataset(kind, data=arr)
        if gz:
            with path.open("rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            path.unlink()
    return x, y.reshape(-1).astype(np.int64)


# ---------------------------------------------------------------- Kaggle


def test_kaggle_layout_items_in_csv_order(tmp_path: Path) -> None:
    labels = {"d4": 1, "a1": 0, "c3": 1, "b2": 0}
    pixels = _kaggle(tmp_path, labels)
    ds = open_patch_dataset(tmp_path)
    assert isinstance(ds, PatchDataset)
    assert len(ds) == 4
    assert ds.ids == ["d4", "a1", "c3", "b2"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [1, 0, 1, 0]
    for n, id_ in enumerate(ds.ids):
        _assert_item(ds, n, pixels[id_], labels[id_])
    assert "kaggle" in ds.description and "4 patches: 2 tumour" in ds.description


def test_kaggle_csv_path_and_labels_csv_beside_images(tmp_path: Path) -> None:
    _kaggle(tmp_path / "k", {"x": 1, "y": 0})
    assert open_patch_dataset(tmp_path / "k" / "train_labels.csv").ids == ["x", "y"]

    flat = tmp_path / "flat"
    a = _save(flat / "p1.png", _patch(5))
    _save(flat / "p2.png", _patch(6))
    _write_csv(flat / "labels.csv", [("p2", "0"), ("p1", "1")])
    ds = open_patch_dataset(flat)
    assert ds.ids == ["p2", "p1"] and ds.labels.tolist() == [0, 1]
    _assert_item(ds, 1, a, 1)


def test_kaggle_missing_images_named_and_counted(tmp_path: Path) -> None:
    _kaggle(tmp_path, {"have": 0})
    missing = [f"gone{i}" for i in range(7)]
    _write_csv(tmp_path / "train_labels.csv", [("have", "0")] + [(m, "1") for m in missing])
    with pytest.raises(SlidescanError) as err:
        open_patch_dataset(tmp_path)
    msg = str(err.value)
    assert "7 labelled id(s) have no image" in msg
    assert all(m in msg for m in missing[:5]) and "gone5" not in msg and "..." in msg
    assert "have," not in msg


def test_kaggle_image_without_label(tmp_path: Path) -> None:
    _kaggle(tmp_path, {"a": 0, "b": 1})
    _save(tmp_path / "train" / "stray.tif", _patch(9))
    (tmp_path / "train" / "notes.txt").write_text("not an image, ignored")
    with pytest.raises(SlidescanError, match=r"1 image file\(s\) have no label.*stray\.tif"):
        open_patch_dataset(tmp_path)


@pytest.mark.parametrize("bad", ["2", "x", "", "-1"])
def test_kaggle_bad_label_value(tmp_path: Path, bad: str) -> None:
    _kaggle(tmp_path, {"a": 0, "b": 1})
    _write_csv(tmp_path / "train_labels.csv", [("a", "0"), ("b", bad)])
    with pytest.raises(SlidescanError, match=r"1 row\(s\).*other than 0/1: line 3 \(b"):
        open_patch_dataset(tmp_path)


def test_kaggle_bad_header(tmp_path: Path) -> None:
    _kaggle(tmp_path, {"a": 0})
    _write_csv(tmp_path / "train_labels.csv", [("a", "0")], header=("name", "class"))
    with pytest.raises(SlidescanError, match="expected a header 'id,label'"):
        open_patch_dataset(tmp_path)


# ---------------------------------------------------------------- PatchCamelyon HDF5


def test_h5_folder_split_selection(tmp_path: Path) -> None:
    xt, yt = _h5_pair(tmp_path, "train", 5, seed=1)
    xv, yv = _h5_pair(tmp_path, "valid", 3, seed=2)
    train = open_patch_dataset(tmp_path)
    valid = open_patch_dataset(tmp_path, split="valid")
    assert len(train) == 5 and len(valid) == 3
    assert train.labels.tolist() == yt.tolist() and valid.labels.tolist() == yv.tolist()
    assert train.ids[2] == PCAM.format("train", "x") + ":2"
    for i in range(5):
        _assert_item(train, i, xt[i], int(yt[i]))
    _assert_item(valid, -1, xv[2], int(yv[2]))
    assert "5 patches: 2 tumour" in train.description
    with pytest.raises(
        SlidescanError, match=r"no PatchCamelyon 'test' split \(found: train, valid"
    ):
        open_patch_dataset(tmp_path, split="test")
    with pytest.raises(IndexError):
        train[5]


@pytest.mark.parametrize("given", ["x", "y"])
def test_h5_file_path_finds_partner(tmp_path: Path, given: str) -> None:
    x, y = _h5_pair(tmp_path, "valid", 4, seed=3)
    ds = open_patch_dataset(tmp_path / PCAM.format("valid", given), split="train")
    assert len(ds) == 4 and ds.labels.tolist() == y.tolist()
    _assert_item(ds, 3, x[3], int(y[3]))


def test_h5_gzip_decompressed_once_into_cache(tmp_path: Path, _private_cache: Path) -> None:
    data = tmp_path / "data"
    x, y = _h5_pair(data, "train", 6, seed=4, gz=True)
    ds = open_patch_dataset(data)
    assert len(ds) == 6 and ds.labels.tolist() == y.tolist()
    _assert_item(ds, 4, x[4], int(y[4]))
    assert ds.ids[0] == PCAM.format("train", "x") + ":0"  # the given name, not the cache copy
    cached = sorted(_private_cache.iterdir())
    assert [p.suffix for p in cached] == [".h5", ".h5"]
    stamps = [p.stat().st_mtime_ns for p in cached]

    again = open_patch_dataset(data / (PCAM.format("train", "y") + ".gz"))
    _assert_item(again, 5, x[5], int(y[5]))
    assert sorted(_private_cache.iterdir()) == cached
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert sorted(p.name for p in data.iterdir()) == sorted(
        PCAM.format("train", k) + ".gz" for k in "xy"
    )


def test_tampered_cache_copy_is_made_again(tmp_path: Path, _private_cache: Path) -> None:
    data = tmp_path / "data"
    x, y = _h5_pair(data, "train", 6, seed=4, gz=True)
    open_patch_dataset(data)
    cached_x = next(p for p in _private_cache.iterdir() if "_x-" in p.name)
    cached_x.write_bytes(b"planted by someone else")  # same name, wrong content
    ds = open_patch_dataset(data)
    _assert_item(ds, 2, x[2], int(y[2]))
    assert cached_x.stat().st_size > 1000


def test_cache_writable_by_others_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(CACHE_ENV_VAR, str(shared))
    _h5_pair(tmp_path / "data", "train", 2, gz=True)
    with pytest.raises(SlidescanError, match="others may write to it"):
        open_patch_dataset(tmp_path / "data")


def test_default_cache_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "slidescan"


def test_h5_mismatched_lengths(tmp_path: Path) -> None:
    _h5_pair(tmp_path, "train", 4)
    with h5py.File(tmp_path / PCAM.format("train", "y"), "w") as f:
        f.create_dataset("y", data=np.zeros((3, 1, 1, 1), np.uint8))
    with pytest.raises(SlidescanError, match="has 4 patches but .* has 3 labels"):
        open_patch_dataset(tmp_path)


def test_h5_missing_partner(tmp_path: Path) -> None:
    _h5_pair(tmp_path, "train", 2)
    (tmp_path / PCAM.format("train", "y")).unlink()
    with pytest.raises(SlidescanError, match="has a x file but no y file"):
        open_patch_dataset(tmp_path)
    with pytest.raises(SlidescanError, match="partner file .*_y.h5"):
        open_patch_dataset(tmp_path / PCAM.format("train", "x"))


class _WithOpenCount(torch.utils.data.Dataset):
    """Items plus how many HDF5 files the process reading them has opened."""

    def __init__(self, ds: PatchDataset, opened: list[int]) -> None:
        self.ds, self.opened = ds, opened

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img, label = self.ds[i]
        return img, label, self.opened.count(os.getpid())


def test_h5_handle_per_worker_through_dataloader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _h5_pair(tmp_path, "train", 10, seed=7)
    ds = open_patch_dataset(tmp_path)
    opened: list[int] = []
    real_file = h5py.File

    def counting_file(*args, **kwargs):
        opened.append(os.getpid())
        return real_file(*args, **kwargs)

    monkeypatch.setattr(h5py, "File", counting_file)
    _assert_item(ds, 0, x[0], int(y[0]))  # the parent now holds a handle that workers inherit
    assert opened == [os.getpid()]
    loader = torch.utils.data.DataLoader(
        _WithOpenCount(ds, opened), batch_size=3, num_workers=2, multiprocessing_context="fork"
    )
    images, labels, opens = zip(*loader, strict=True)
    assert torch.equal(torch.cat(images), torch.from_numpy(x).permute(0, 3, 1, 2))
    assert torch.cat(labels).tolist() == y.tolist()
    # Each worker opened its own handle exactly once (inherited parent entry has another pid).
    assert torch.cat(opens).tolist() == [1] * 10

    clone = pickle.loads(pickle.dumps(ds))  # what spawn/forkserver workers receive
    _assert_item(clone, 9, x[9], int(y[9]))


# ---------------------------------------------------------------- class folders


@pytest.mark.parametrize("names", [("0", "1"), ("normal", "tumor"), ("normal", "tumour")])
def test_image_folder_layout(tmp_path: Path, names: tuple[str, str]) -> None:
    neg, pos = names
    px = {
        "n_b": _save(tmp_path / neg / "n_b.png", _patch(1)),
        "n_a": _save(tmp_path / neg / "n_a.tif", _patch(2)),
        "p_a": _save(tmp_path / pos / "sub" / "p_a.png", _patch(3)),
    }
    (tmp_path / pos / "readme.txt").write_text("ignored")
    ds = open_patch_dataset(tmp_path)
    assert ds.ids == ["n_a", "n_b", "p_a"]
    assert ds.labels.tolist() == [0, 0, 1]
    for i, id_ in enumerate(ds.ids):
        _assert_item(ds, i, px[id_], int(ds.labels[i]))
    assert "3 patches: 1 tumour" in ds.description


def test_image_folder_split_subfolders(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "0" / "a.png", _patch(1))
    _save(tmp_path / "train" / "1" / "b.png", _patch(2))
    v = _save(tmp_path / "valid" / "1" / "c.png", _patch(3))
    assert open_patch_dataset(tmp_path).ids == ["a", "b"]
    valid = open_patch_dataset(tmp_path, split="valid")
    assert valid.ids == ["c"] and valid.labels.tolist() == [1]
    _assert_item(valid, 0, v, 1)
    with pytest.raises(SlidescanError, match=r"no 'test' split \(found: train, valid\)"):
        open_patch_dataset(tmp_path, split="test")


def test_image_folder_wrong_size_item(tmp_path: Path) -> None:
    _save(tmp_path / "1" / "big.png", _patch(1, size=(128, 128)))
    ds = open_patch_dataset(tmp_path)  # opening lists files only; reading the item checks size
    with pytest.raises(SlidescanError, match="128x128"):
        ds[0]
    img, label = open_patch_dataset(tmp_path, resize=True)[0]
    assert img.shape == (3, 96, 96) and label == 1


# ---------------------------------------------------------------- images


def test_read_patch_image_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    src = _save(path, _patch(1, size=(120, 100)))
    with pytest.raises(SlidescanError) as err:
        read_patch_image(path)
    assert str(path) in str(err.value) and "120x100" in str(err.value)
    assert "resize converts" in str(err.value) and err.value.param == "resize"

    got = read_patch_image(path, resize=True)
    want = Image.fromarray(src).crop((10, 0, 110, 100)).resize((96, 96), Image.Resampling.BILINEAR)
    assert got.shape == (96, 96, 3) and got.dtype == np.uint8
    assert np.array_equal(got, np.asarray(want))


def test_read_patch_image_rgba_and_grayscale(tmp_path: Path) -> None:
    rgba = _save(tmp_path / "rgba.png", _patch(1, ch=4))
    gray = _save(tmp_path / "gray.png", _patch(2, ch=1))
    for name in ("rgba.png", "gray.png"):
        with pytest.raises(SlidescanError, match="resize converts"):
            read_patch_image(tmp_path / name)
    assert np.array_equal(read_patch_image(tmp_path / "rgba.png", resize=True), rgba[..., :3])
    assert np.array_equal(
        read_patch_image(tmp_path / "gray.png", resize=True), np.dstack([gray] * 3)
    )


def test_read_patch_image_exact_rgb(tmp_path: Path) -> None:
    arr = _save(tmp_path / "ok.tif", _patch(3))
    got = read_patch_image(tmp_path / "ok.tif")
    assert got.dtype == np.uint8 and np.array_equal(got, arr)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_file_error_names_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.png"
    if kind == "garbage":
        path.write_bytes(b"this is not an image at all")
    else:
        _save(path, _patch(1))
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SlidescanError) as err:
        read_patch_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- detection, concat, predict


def test_unknown_layout_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    with pytest.raises(SlidescanError, match="stuff: not a patch dataset: expected a Kaggle"):
        open_patch_dataset(tmp_path / "stuff")
    with pytest.raises(SlidescanError, match="not a patch dataset"):
        open_patch_dataset(tmp_path / "stuff" / "notes.txt")
    with pytest.raises(SlidescanError, match="nope: no such file or folder"):
        open_patch_dataset(tmp_path / "nope")
    _kaggle(tmp_path / "k", {"a": 0})
    with pytest.raises(SlidescanError, match="folder holding train_labels.csv"):
        open_patch_dataset(tmp_path / "k" / "train")
    shutil.rmtree(tmp_path / "k" / "train")
    with pytest.raises(SlidescanError, match=r"image folder .*train not found"):
        open_patch_dataset(tmp_path / "k")


def test_open_patch_datasets_concatenates(tmp_path: Path) -> None:
    kpx = _kaggle(tmp_path / "k", {"a": 1, "b": 0})
    x, y = _h5_pair(tmp_path / "h", "valid", 3, seed=8)
    ds = open_patch_datasets([tmp_path / "k", tmp_path / "h"], split="valid")
    assert len(ds) == 5
    assert ds.ids[:2] == ["a", "b"] and ds.ids[2].endswith("_x.h5:0")
    assert ds.labels.tolist() == [1, 0] + y.tolist()
    assert "kaggle" in ds.description and " + " in ds.description and "HDF5" in ds.description
    _assert_item(ds, 1, kpx["b"], 0)
    _assert_item(ds, 2, x[0], int(y[0]))
    _assert_item(ds, -1, x[2], int(y[2]))
    with pytest.raises(IndexError):
        ds[5]
    single = open_patch_datasets([str(tmp_path / "k")])
    assert type(single) is type(open_patch_dataset(tmp_path / "k")) and single.ids == ["a", "b"]
    with pytest.raises(SlidescanError):
        open_patch_datasets([])


def test_open_unlabelled_patches(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    px = {
        "b": _save(folder / "b.png", _patch(1)),
        "a": _save(folder / "deep" / "a.tif", _patch(2)),
        "z": _save(tmp_path / "z.jpeg", _patch(3)),
    }
    (folder / "skip.txt").write_text("ignored")
    ds = open_unlabelled_patches([tmp_path / "z.jpeg", folder, folder / "b.png"])
    assert ds.ids == ["z", "b", "a"]  # input order, folder sorted by path, duplicate dropped
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [-1, -1, -1]
    _assert_item(ds, 1, px["b"], -1)
    _assert_item(ds, 2, px["a"], -1)
    assert ds[0][0].shape == (3, 96, 96)  # jpeg is lossy: shape only
    assert "unlabelled" in ds.description

    (tmp_path / "empty").mkdir()
    with pytest.raises(SlidescanError, match="no patch images"):
        open_unlabelled_patches([tmp_path / "empty"])
    with pytest.raises(SlidescanError, match="no such file"):
        open_unlabelled_patches([tmp_path / "missing.png"])
    with pytest.raises(SlidescanError, match="not a patch image"):
        open_unlabelled_patches([folder / "skip.txt"])


# ---------------------------------------------------------------- real data


@pytest.mark.data
def test_real_pcam_jpeg(data_dir: Path) -> None:
    train = open_patch_dataset(data_dir / "pcam-jpeg")
    valid = open_patch_dataset(data_dir / "pcam-jpeg", split="valid")
    assert len(train) == 20000 and int(train.labels.sum()) == 10000
    assert len(valid) == 3000 and int(valid.labels.sum()) == 1500
    img, label = valid[len(valid) - 1]
    assert img.shape == (3, 96, 96) and img.dtype == torch.uint8 and label == 1


@pytest.mark.data
def test_real_kaggle(data_dir: Path) -> None:
    ds = open_patch_dataset(data_dir / "kaggle")
    assert len(ds) == 1500
    with (data_dir / "kaggle" / "train_labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for n in (0, 1, 2, 777, 1499):
        assert ds.ids[n] == rows[n]["id"] and ds.labels[n] == int(rows[n]["label"])
    img, label = ds[1]
    raw = np.array(Image.open(data_dir / "kaggle" / "train" / f"{rows[1]['id']}.tif"))
    assert label == int(rows[1]["label"]) and torch.equal(img, _chw(raw))
