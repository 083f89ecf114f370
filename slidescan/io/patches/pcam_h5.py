"""PatchCamelyon's HDF5 files (``camelyonpatch_level_2_split_<split>_{x,y}.h5[.gz]``).

Gzipped files are decompressed once into a private cache (``$SLIDESCAN_CACHE``, default
``~/.cache/slidescan``) and read from there.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from slidescan.errors import SlidescanError
from slidescan.io.patches.dataset import (
    MAX_NAMED,
    PATCH_SIZE,
    PatchDataset,
    describe,
    name_some,
    to_chw,
)

CACHE_ENV_VAR = "SLIDESCAN_CACHE"
# PatchCamelyon's distributed names, e.g. camelyonpatch_level_2_split_train_x.h5(.gz); any
# "<stem>_x.h5" / "<stem>_y.h5" pair is accepted when given as a file path.
_PCAM_RE = re.compile(r"^camelyonpatch_level_2_split_(?P<split>[a-z]+)_(?P<xy>[xy])\.h5(?:\.gz)?$")
_XY_FILE_RE = re.compile(r"^(?P<stem>.+)_(?P<xy>[xy])\.h5(?P<gz>\.gz)?$")


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
        return to_chw(patch), int(self.labels[j])

    def __getstate__(self) -> dict[str, Any]:
        # spawn/forkserver workers receive a pickled copy; an open h5py.File cannot be pickled.
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state


def pcam_files(folder: Path) -> dict[tuple[str, str], Path]:
    """(split, "x"/"y") -> file; an uncompressed .h5 wins over its .h5.gz."""
    found: dict[tuple[str, str], Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        m = _PCAM_RE.match(entry.name)
        if m and entry.is_file():
            key = (m["split"], m["xy"])
            if key not in found or not entry.name.endswith(".gz"):
                found[key] = Path(entry.path)
    return found


def open_h5_folder(folder: Path, files: dict[tuple[str, str], Path], split: str) -> PatchDataset:
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


def open_h5_file(path: Path) -> PatchDataset:
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
            f"{name_some([str(b) for b in bad[: MAX_NAMED + 1]])}"
        )
    # Ids name the file the user gave, not the cache copy, and are the same with or without .gz.
    name = x_given.name.removesuffix(".gz")
    ids = [f"{name}:{i}" for i in range(shape[0])]
    return H5PatchDataset(x_path, ids, labels, describe("PatchCamelyon HDF5", x_given, labels))


def cache_dir() -> Path:
    """``$SLIDESCAN_CACHE``, else ``$XDG_CACHE_HOME/slidescan`` or ``~/.cache/slidescan``: a folder
    of this user's, never a shared, predictable path in the system temp folder."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slidescan"


def _private(cache: Path) -> Path:
    """Create ``cache`` (mode 700) or check that it is ours and not writable by others."""
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = cache.stat()
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise SlidescanError(
            f"cache folder {cache} belongs to someone else or others may write to it; "
            f"set {CACHE_ENV_VAR} to a private folder"
        )
    return cache


def _gzip_size(path: Path) -> int:
    """The uncompressed size (mod 2**32) that a gzip file's trailer records."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def _decompressed(path: Path) -> Path:
    """Return `path`, or for ``.gz`` its decompressed copy in the private cache folder.

    The copy is named by the source's size and mtime, so a replaced .gz is decompressed again, and
    used only while its size matches the gzip trailer's record (a truncated or swapped copy is
    made again). It is written under a temporary name and renamed, so parallel runs never see a
    half-written file. Never beside the .gz: data folders are often read-only.
    """
    if not path.name.endswith(".gz"):
        return path
    stat = path.stat()
    cache = cache_dir()
    base = path.name[: -len(".h5.gz")] if path.name.endswith(".h5.gz") else path.name[:-3]
    target = cache / f"{base}-{stat.st_size}-{stat.st_mtime_ns}.h5"
    try:
        _private(cache)
        expected = _gzip_size(path)
        if target.is_file() and target.stat().st_size % (1 << 32) == expected:
            return target
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
