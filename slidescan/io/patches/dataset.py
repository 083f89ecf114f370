"""Labelled 96x96 patch datasets (Kaggle, PatchCamelyon HDF5, class folders) as lazy torch Datasets.

Every reader keeps only ids, labels and file locations in memory; pixels are read per item, so
a DataLoader with workers streams a split of any size. Items are ``(uint8 3x96x96 RGB, label)``.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image

from slidescan.errors import SlidescanError, one_line

PATCH_SIZE = 96
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
CACHE_ENV_VAR = "SLIDESCAN_CACHE"
UNLABELLED = -1

# Folder names -> label; "tumour" too because British spelling is common in pathology datasets.
CLASS_FOLDERS = {"0": 0, "1": 1, "normal": 0, "tumor": 1, "tumour": 1}
# PatchCamelyon's distributed names, e.g. camelyonpatch_level_2_split_train_x.h5(.gz); any
# "<stem>_x.h5" / "<stem>_y.h5" pair is accepted when given as a file path.
_PCAM_RE = re.compile(r"^camelyonpatch_level_2_split_(?P<split>[a-z]+)_(?P<xy>[xy])\.h5(?:\.gz)?$")
_XY_FILE_RE = re.compile(r"^(?P<stem>.+)_(?P<xy>[xy])\.h5(?P<gz>\.gz)?$")
_MAX_NAMED = 5

_LAYOUT_HELP = (
    "expected a Kaggle folder (train_labels.csv + train/), PatchCamelyon .h5 files, "
    "or class folders 0/1 or normal/tumor"
)


class PatchDataset(torch.utils.data.Dataset):
    """Base class of all patch readers: ``ids``, ``labels`` (-1 = unlabelled) and a description."""

    ids: list[str]
    labels: np.ndarray
    description: str

    def __init__(self, ids: list[str], labels: np.ndarray, description: str) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
        self.ids = ids
        self.labels = np.asarray(labels, dtype=np.int64)
        self.description = description

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.description}>"

    def _index(self, i: int) -> int:
        # Samplers may hand numpy ints; IndexError is what ends old-style iteration.
        n = len(self)
        j = int(i)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"patch index {i} out of range for {n} patches")
        return j


class ImageFilePatchDataset(PatchDataset):
    """Patches stored one per image file (Kaggle tifs, class folders, predict inputs)."""

    def __init__(
        self,
        paths: list[Path],
        ids: list[str],
        labels: np.ndarray,
        description: str,
        *,
        resize: bool = False,
    ) -> None:
        super().__init__(ids, labels, description)
        if len(paths) != len(ids):
            raise ValueError(f"{len(paths)} paths but {len(ids)} ids")
        self.paths = paths
        self.resize = resize

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self._index(i)
        return _to_chw(read_patch_image(self.paths[j], resize=self.resize)), int(self.labels[j])


class H5PatchDataset(PatchDataset):
    """PatchCamelyon x/y HDF5 pair; labels loaded on open, pixels read from ``x`` per item."""

    def __init__(self, x_path: Path, ids: list[str], labels: np.ndarray, description: str) -> None:
        super().__init__(ids, labels, description)
        self.x_path = x_path
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def _x(self) -> h5py.Dataset:
        # h5py handles do not survive fork: a worker must open its own, so key the handle by pid.
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            try:
                self._file = h5py.File(self.x_path, "r")
            except OSError as exc:
                raise SlidescanError(f"{self.x_path}: cannot open HDF5 file ({exc})") from exc
            self._pid = pid
        return self._file["x"]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self._index(i)
        patch = np.asarray(self._x()[j], dtype=np.uint8)
        return _to_chw(patch), int(self.labels[j])

    def __getstate__(self) -> dict[str, Any]:
        # spawn/forkserver workers receive a pickled copy; an open h5py.File cannot be pickled.
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state


class ConcatPatchDataset(PatchDataset):
    """Several patch datasets read as one, in order."""

    def __init__(self, parts: Sequence[PatchDataset]) -> None:
        ids = [i for p in parts for i in p.ids]
        labels = np.concatenate([p.labels for p in parts]).astype(np.int64)
        super().__init__(ids, labels, " + ".join(p.description for p in parts))
        self.parts = list(parts)
        self._ends = np.cumsum([len(p) for p in parts]).tolist()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self._index(i)
        k = bisect.bisect_right(self._ends, j)
        start = self._ends[k - 1] if k else 0
        return self.parts[k][j - start]


# --------------------------------------------------------------------------------------------
# Images


def read_patch_image(path: Path, *, resize: bool = False) -> np.ndarray:
    """Read one patch as HxWx3 uint8 RGB, 96x96.

    Anything other than 96x96 RGB is an error unless ``resize``; then it is converted to RGB,
    centre-cropped to a square and resized to 96x96 (bilinear).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "RGB" and img.size == (PATCH_SIZE, PATCH_SIZE):
                return np.array(img, dtype=np.uint8)
            if not resize:
                w, h = img.size
                raise SlidescanError(
                    f"{path}: image is {w}x{h} {img.mode}, expected {PATCH_SIZE}x{PATCH_SIZE} "
                    "RGB; use --resize to convert, centre-crop and resize it"
                )
            return np.array(_fit_patch(img), dtype=np.uint8)
    except SlidescanError:
        raise
    except FileNotFoundError as exc:
        raise SlidescanError(f"{path}: image file not found") from exc
    # PIL reports corrupt files with many exception types (OSError, SyntaxError, struct.error, ...).
    except Exception as exc:
        reason = one_line(exc)
        raise SlidescanError(f"{path}: cannot read image ({reason})") from exc


def _fit_patch(img: Image.Image) -> Image.Image:
    rgb = img.convert("RGB")
    w, h = rgb.size
    if (w, h) == (PATCH_SIZE, PATCH_SIZE):
        return rgb
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    return square.resize((PATCH_SIZE, PATCH_SIZE), Image.Resampling.BILINEAR)


def _to_chw(patch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).contiguous()


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _describe(kind: str, where: str | Path, labels: np.ndarray) -> str:
    n = len(labels)
    if n and (labels < 0).all():
        return f"{kind} at {where} ({n} patches, unlabelled)"
    return f"{kind} at {where} ({n} patches: {int((labels == 1).sum())} tumour)"


def _name_some(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMED])
    return shown + (", ..." if len(items) > _MAX_NAMED else "")


# --------------------------------------------------------------------------------------------
# Opening


def open_patch_dataset(
    path: str | Path, *, split: str = "train", resize: bool = False
) -> PatchDataset:
    """Auto-detect the layout of `path` and return its dataset; SlidescanError if it is none.

    ``split`` picks a part only where the path holds several (a PatchCamelyon folder, a folder
    with ``train/``, ``valid/`` ... subfolders); a path naming one set of patches (a Kaggle folder,
    class folders, one .h5 file) is used as is. ``resize`` lets image files of other sizes or modes
    be converted instead of rejected.
    """
    path = Path(path)
    if not path.exists():
        raise SlidescanError(f"{path}: no such file or folder")
    if path.is_file():
        return _open_file(path, resize=resize)
    found = _open_folder(path, split=split, resize=resize)
    if found is not None:
        return found
    sub = path / split
    if sub.is_dir():
        found = _open_folder(sub, split=split, resize=resize)
        if found is not None:
            return found
    splits = [d.name for d in sorted(path.iterdir()) if d.is_dir() and _looks_like_dataset(d)]
    if splits:
        raise SlidescanError(f"{path}: no '{split}' split (found: {', '.join(splits)})")
    hint = ""
    if (path.parent / "train_labels.csv").is_file():
        hint = f" (for Kaggle images give the folder holding train_labels.csv: {path.parent})"
    raise SlidescanError(f"{path}: not a patch dataset: {_LAYOUT_HELP}{hint}")


def _looks_like_dataset(folder: Path) -> bool:
    has_csv = (folder / "train_labels.csv").is_file() or (folder / "labels.csv").is_file()
    return has_csv or bool(_pcam_files(folder)) or bool(_class_folders(folder))


def open_patch_datasets(
    paths: Sequence[str | Path], *, split: str = "train", resize: bool = False
) -> PatchDataset:
    """Open each path with `open_patch_dataset` and concatenate them (one path: that dataset)."""
    if not paths:
        raise SlidescanError("no patch dataset paths given")
    parts = [open_patch_dataset(p, split=split, resize=resize) for p in paths]
    return parts[0] if len(parts) == 1 else ConcatPatchDataset(parts)


def open_unlabelled_patches(inputs: Sequence[str | Path], *, resize: bool = False) -> PatchDataset:
    """Patches to predict: image files and/or folders searched recursively; labels are all -1.

    Ids are file stems (the Kaggle id for Kaggle tifs). Files are listed in input order, each
    folder sorted; a file reached twice is read once.
    """
    files: list[Path] = []
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _is_image(f.name))
        elif p.is_file():
            if not _is_image(p.name):
                raise SlidescanError(
                    f"{p}: not a patch image (expected {', '.join(IMAGE_SUFFIXES)})"
                )
            found = [p]
        else:
            raise SlidescanError(f"{p}: no such file or folder")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    if not files:
        where = ", ".join(str(p) for p in inputs) or "(no inputs)"
        raise SlidescanError(f"no patch images ({', '.join(IMAGE_SUFFIXES)}) found in {where}")
    labels = np.full(len(files), UNLABELLED, dtype=np.int64)
    where_desc = str(inputs[0]) if len(inputs) == 1 else f"{len(inputs)} inputs"
    return ImageFilePatchDataset(
        files,
        [f.stem for f in files],
        labels,
        _describe("patch images", where_desc, labels),
        resize=resize,
    )


def _open_file(path: Path, *, resize: bool) -> PatchDataset:
    name = path.name.lower()
    if name.endswith(".csv"):
        # Kaggle's train_labels.csv names images in train/; any other labels csv sits beside them.
        images = path.parent / "train" if name == "train_labels.csv" else path.parent
        return _open_kaggle(path, images, resize=resize)
    if name.endswith((".h5", ".h5.gz", ".hdf5")):
        return _open_h5_file(path)
    raise SlidescanError(f"{path}: not a patch dataset: {_LAYOUT_HELP}")


def _open_folder(path: Path, *, split: str, resize: bool) -> PatchDataset | None:
    if (path / "train_labels.csv").is_file():
        return _open_kaggle(path / "train_labels.csv", path / "train", resize=resize)
    if (path / "labels.csv").is_file():
        return _open_kaggle(path / "labels.csv", path, resize=resize)
    pcam = _pcam_files(path)
    if pcam:
        return _open_h5_folder(path, pcam, split)
    classes = _class_folders(path)
    if classes:
        return _open_image_folder(path, classes, resize=resize)
    return None


# --------------------------------------------------------------------------------------------
# Kaggle


def _open_kaggle(csv_path: Path, image_dir: Path, *, resize: bool) -> PatchDataset:
    if not image_dir.is_dir():
        raise SlidescanError(f"{csv_path}: image folder {image_dir} not found")
    ids, labels = _read_labels_csv(csv_path)

    # One listing instead of a stat per id: Kaggle's train/ holds 220,025 files.
    files: dict[str, str] = {}
    for entry in sorted(os.scandir(image_dir), key=lambda e: e.name):
        if _is_image(entry.name) and entry.is_file():
            stem = os.path.splitext(entry.name)[0]
            # Prefer .tif (Kaggle's format) when the same id exists in several formats.
            if stem not in files or entry.name.lower().endswith(".tif"):
                files[stem] = entry.name

    missing = [i for i in ids if i not in files]
    if missing:
        raise SlidescanError(
            f"{csv_path}: {len(missing)} labelled id(s) have no image in {image_dir}: "
            f"{_name_some(missing)}"
        )
    labelled = set(ids)
    extra = [name for stem, name in sorted(files.items()) if stem not in labelled]
    if extra:
        raise SlidescanError(
            f"{image_dir}: {len(extra)} image file(s) have no label in {csv_path}: "
            f"{_name_some(extra)}"
        )
    paths = [image_dir / files[i] for i in ids]
    label_arr = np.asarray(labels, dtype=np.int64)
    return ImageFilePatchDataset(
        paths, ids, label_arr, _describe("kaggle layout", csv_path.parent, label_arr), resize=resize
    )


def _read_labels_csv(csv_path: Path) -> tuple[list[str], list[int]]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if "id" not in fields or "label" not in fields:
                raise SlidescanError(
                    f"{csv_path}: expected a header 'id,label', found {','.join(fields) or 'none'}"
                )
            reader.fieldnames = fields
            rows = [(reader.line_num, r["id"], r["label"]) for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SlidescanError(f"{csv_path}: cannot read labels ({exc})") from exc

    ids: list[str] = []
    labels: list[int] = []
    bad: list[str] = []
    for line, raw_id, raw_label in rows:
        id_ = (raw_id or "").strip()
        label = (raw_label or "").strip()
        if not id_ and not label:
            continue  # blank line
        if label not in ("0", "1") or not id_:
            bad.append(f"line {line} ({id_ or '?'}: {label or 'empty'})")
            continue
        ids.append(id_)
        labels.append(int(label))
    if bad:
        raise SlidescanError(
            f"{csv_path}: {len(bad)} row(s) without an id or with a label other than 0/1: "
            f"{_name_some(bad)}"
        )
    if not ids:
        raise SlidescanError(f"{csv_path}: no labelled rows")
    dups = [i for i, n in Counter(ids).items() if n > 1]
    if dups:
        raise SlidescanError(f"{csv_path}: {len(dups)} duplicate id(s): {_name_some(dups)}")
    return ids, labels


# --------------------------------------------------------------------------------------------
# PatchCamelyon HDF5


def _pcam_files(folder: Path) -> dict[tuple[str, str], Path]:
    """(split, "x"/"y") -> file; an uncompressed .h5 wins over its .h5.gz."""
    found: dict[tuple[str, str], Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        m = _PCAM_RE.match(entry.name)
        if m and entry.is_file():
            key = (m["split"], m["xy"])
            if key not in found or not entry.name.endswith(".gz"):
                found[key] = Path(entry.path)
    return found


def _open_h5_folder(folder: Path, files: dict[tuple[str, str], Path], split: str) -> PatchDataset:
    x, y = files.get((split, "x")), files.get((split, "y"))
    if x is None and y is None:
        splits = sorted({s for s, _ in files})
        raise SlidescanError(
            f"{folder}: no PatchCamelyon '{split}' split (found: {', '.join(splits)})"
        )
    if x is None or y is None:
        have, want = ("x", "y") if y is None else ("y", "x")
        raise SlidescanError(
            f"{folder}: PatchCamelyon '{split}' split has a {have} file but no {want} file"
        )
    return _open_h5_pair(x, y)


def _open_h5_file(path: Path) -> PatchDataset:
    m = _XY_FILE_RE.match(path.name)
    if not m:
        raise SlidescanError(
            f"{path}: expected a PatchCamelyon file named like "
            "camelyonpatch_level_2_split_train_x.h5 (with its _y partner beside it)"
        )
    other = "y" if m["xy"] == "x" else "x"
    candidates = [
        path.parent / f"{m['stem']}_{other}.h5",
        path.parent / f"{m['stem']}_{other}.h5.gz",
    ]
    partner = next((c for c in candidates if c.is_file()), None)
    if partner is None:
        raise SlidescanError(f"{path}: partner file {candidates[0].name}(.gz) not found beside it")
    return _open_h5_pair(path, partner) if m["xy"] == "x" else _open_h5_pair(partner, path)


def _open_h5_pair(x_given: Path, y_given: Path) -> PatchDataset:
    x_path, y_path = _decompressed(x_given), _decompressed(y_given)
    try:
        with h5py.File(x_path, "r") as fx:
            if "x" not in fx:
                raise SlidescanError(f"{x_path}: no dataset 'x' (found: {', '.join(fx.keys())})")
            shape, dtype = fx["x"].shape, fx["x"].dtype
        with h5py.File(y_path, "r") as fy:
            if "y" not in fy:
                raise SlidescanError(f"{y_path}: no dataset 'y' (found: {', '.join(fy.keys())})")
            # Labels are one byte per patch (256 KiB for PCam train), so load them all.
            labels = np.asarray(fy["y"][()]).reshape(-1).astype(np.int64)
            y_len = fy["y"].shape[0] if fy["y"].shape else 0
    except OSError as exc:
        raise SlidescanError(f"cannot read PatchCamelyon HDF5 ({exc})") from exc

    if len(shape) != 4 or shape[1:] != (PATCH_SIZE, PATCH_SIZE, 3) or dtype != np.uint8:
        raise SlidescanError(
            f"{x_path}: 'x' is {dtype} {shape}, expected uint8 N x {PATCH_SIZE} x {PATCH_SIZE} x 3"
        )
    if y_len != shape[0] or labels.size != shape[0]:
        raise SlidescanError(
            f"{x_path} has {shape[0]} patches but {y_path} has {labels.size} labels"
        )
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise SlidescanError(
            f"{y_path}: {bad.size} label(s) other than 0/1, first at index(es) "
            f"{_name_some([str(b) for b in bad[: _MAX_NAMED + 1]])}"
        )
    # Ids name the file the user gave, not the cache copy, and are the same with or without .gz.
    name = x_given.name.removesuffix(".gz")
    ids = [f"{name}:{i}" for i in range(shape[0])]
    return H5PatchDataset(x_path, ids, labels, _describe("PatchCamelyon HDF5", x_given, labels))


def _decompressed(path: Path) -> Path:
    """Return `path`, or for ``.gz`` its decompressed copy in the cache folder.

    The copy goes to ``$SLIDESCAN_CACHE`` or ``<system temp>/slidescan-cache`` (never beside the
    .gz: data folders are often read-only), named by the source's size and mtime so a replaced
    .gz is decompressed again. It is written under a temporary name and renamed, so parallel
    runs never see a half-written file.
    """
    if not path.name.endswith(".gz"):
        return path
    stat = path.stat()
    cache = Path(os.environ.get(CACHE_ENV_VAR) or Path(tempfile.gettempdir()) / "slidescan-cache")
    base = path.name[: -len(".h5.gz")] if path.name.endswith(".h5.gz") else path.name[:-3]
    target = cache / f"{base}-{stat.st_size}-{stat.st_mtime_ns}.h5"
    if target.is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{base}-", suffix=".part")
        try:
            with gzip.open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 22)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, EOFError) as exc:
        raise SlidescanError(f"{path}: cannot decompress into {cache} ({exc})") from exc
    return target


# --------------------------------------------------------------------------------------------
# Class folders


def _class_folders(folder: Path) -> list[tuple[Path, int]]:
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        label = CLASS_FOLDERS.get(entry.name.lower())
        if label is not None and entry.is_dir():
            found.append((Path(entry.path), label))
    return found


def _open_image_folder(
    folder: Path, classes: list[tuple[Path, int]], *, resize: bool
) -> PatchDataset:
    paths: list[Path] = []
    labels: list[int] = []
    for class_dir, label in classes:
        files = sorted(f for f in class_dir.rglob("*") if _is_image(f.name) and f.is_file())
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        names = ", ".join(c.name for c, _ in classes)
        raise SlidescanError(
            f"{folder}: class folders ({names}) hold no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    label_arr = np.asarray(labels, dtype=np.int64)
    return ImageFilePatchDataset(
        paths,
        [p.stem for p in paths],
        label_arr,
        _describe("image folders", folder, label_arr),
        resize=resize,
    )
