"""Image folders: class folders ``0``/``1`` (or ``normal``/``tumor``) for labelled patches, and
any files or folders of images to predict."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slidescan.errors import SlidescanError
from slidescan.io.patches.dataset import (
    IMAGE_SUFFIXES,
    UNLABELLED,
    ImageFilePatchDataset,
    PatchDataset,
    describe,
    is_image,
)

# Folder names -> label; "tumour" too because British spelling is common in pathology datasets.
CLASS_FOLDERS = {"0": 0, "1": 1, "normal": 0, "tumor": 1, "tumour": 1}


def class_folders(folder: Path) -> list[tuple[Path, int]]:
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        label = CLASS_FOLDERS.get(entry.name.lower())
        if label is not None and entry.is_dir():
            found.append((Path(entry.path), label))
    return found


def open_image_folder(
    folder: Path, classes: list[tuple[Path, int]], *, resize: bool
) -> PatchDataset:
    paths: list[Path] = []
    labels: list[int] = []
    for class_dir, label in classes:
        files = sorted(f for f in class_dir.rglob("*") if is_image(f.name) and f.is_file())
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        names = ", ".join(c.name for c, _ in classes)
        raise SlidescanError(
            f"{folder}: class folders ({names}) hold no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return _image_files(paths, labels, "image folders", folder, resize=resize)


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
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image(f.name))
        elif p.is_file():
            if not is_image(p.name):
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
    where = str(inputs[0]) if len(inputs) == 1 else f"{len(inputs)} inputs"
    return _image_files(files, [UNLABELLED] * len(files), "patch images", where, resize=resize)


def _image_files(
    files: list[Path], labels: list[int], kind: str, where: str | Path, *, resize: bool
) -> PatchDataset:
    """A dataset of image files, each id its file stem (the Kaggle id for Kaggle tifs)."""
    label_arr = np.asarray(labels, dtype=np.int64)
    return ImageFilePatchDataset(
        files, [f.stem for f in files], label_arr, describe(kind, where, label_arr), resize=resize
    )
