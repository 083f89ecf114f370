"""Kaggle's layout: ``train_labels.csv`` (``id,label``) beside ``train/<id>.tif``, or any
``labels.csv`` beside its images."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np

from slidescan.errors import SlidescanError
from slidescan.io.patches.dataset import (
    ImageFilePatchDataset,
    PatchDataset,
    describe,
    is_image,
    name_some,
)


def open_kaggle(csv_path: Path, image_dir: Path, *, resize: bool) -> PatchDataset:
    if not image_dir.is_dir():
        raise SlidescanError(f"{csv_path}: image folder {image_dir} not found")
    ids, labels = _read_labels_csv(csv_path)

    # One listing instead of a stat per id: Kaggle's train/ holds 220,025 files.
    files: dict[str, str] = {}
    for entry in sorted(os.scandir(image_dir), key=lambda e: e.name):
        if is_image(entry.name) and entry.is_file():
            stem = os.path.splitext(entry.name)[0]
            # Prefer .tif (Kaggle's format) when the same id exists in several formats.
            if stem not in files or entry.name.lower().endswith(".tif"):
                files[stem] = entry.name

    missing = [i for i in ids if i not in files]
    if missing:
        raise SlidescanError(
            f"{csv_path}: {len(missing)} labelled id(s) have no image in {image_dir}: "
            f"{name_some(missing)}"
        )
    labelled = set(ids)
    extra = [name for stem, name in sorted(files.items()) if stem not in labelled]
    if extra:
        raise SlidescanError(
            f"{image_dir}: {len(extra)} image file(s) have no label in {csv_path}: "
            f"{name_some(extra)}"
        )
    paths = [image_dir / files[i] for i in ids]
    label_arr = np.asarray(labels, dtype=np.int64)
    return ImageFilePatchDataset(
        paths, ids, label_arr, describe("kaggle layout", csv_path.parent, label_arr), resize=resize
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
            f"{name_some(bad)}"
        )
    if not ids:
        raise SlidescanError(f"{csv_path}: no labelled rows")
    dups = [i for i, n in Counter(ids).items() if n > 1]
    if dups:
        raise SlidescanError(f"{csv_path}: {len(dups)} duplicate id(s): {name_some(dups)}")
    return ids, labels
