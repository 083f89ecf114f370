"""Which patch-set format a path holds, and opening it (several are concatenated)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from slidescan.errors import SlidescanError
from slidescan.io.patches.dataset import ConcatPatchDataset, PatchDataset
from slidescan.io.patches.image_folders import class_folders, open_image_folder
from slidescan.io.patches.kaggle import open_kaggle
from slidescan.io.patches.pcam_h5 import open_h5_file, open_h5_folder, pcam_files

_LAYOUT_HELP = (
    "expected a Kaggle folder (train_labels.csv + train/), PatchCamelyon .h5 files, "
    "or class folders 0/1 or normal/tumor"
)


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
    return has_csv or bool(pcam_files(folder)) or bool(class_folders(folder))


def open_patch_datasets(
    paths: Sequence[str | Path], *, split: str = "train", resize: bool = False
) -> PatchDataset:
    """Open each path with `open_patch_dataset` and concatenate them (one path: that dataset)."""
    if not paths:
        raise SlidescanError("no patch dataset paths given")
    parts = [open_patch_dataset(p, split=split, resize=resize) for p in paths]
    return parts[0] if len(parts) == 1 else ConcatPatchDataset(parts)


def _open_file(path: Path, *, resize: bool) -> PatchDataset:
    name = path.name.lower()
    if name.endswith(".csv"):
        # Kaggle's train_labels.csv names images in train/; any other labels csv sits beside them.
        images = path.parent / "train" if name == "train_labels.csv" else path.parent
        return open_kaggle(path, images, resize=resize)
    if name.endswith((".h5", ".h5.gz", ".hdf5")):
        return open_h5_file(path)
    raise SlidescanError(f"{path}: not a patch dataset: {_LAYOUT_HELP}")


def _open_folder(path: Path, *, split: str, resize: bool) -> PatchDataset | None:
    if (path / "train_labels.csv").is_file():
        return open_kaggle(path / "train_labels.csv", path / "train", resize=resize)
    if (path / "labels.csv").is_file():
        return open_kaggle(path / "labels.csv", path, resize=resize)
    pcam = pcam_files(path)
    if pcam:
        return open_h5_folder(path, pcam, split)
    classes = class_folders(path)
    if classes:
        return open_image_folder(path, classes, resize=resize)
    return None
