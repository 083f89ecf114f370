"""The patch dataset classes and one patch image read: what every patch-set format returns.

Every reader keeps only ids, labels and file locations in memory; pixels are read per item, so
a DataLoader with workers streams a split of any size. Items are ``(uint8 3x96x96 RGB, label)``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from slidescan.errors import SlidescanError, one_line

PATCH_SIZE = 96
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
UNLABELLED = -1
MAX_NAMED = 5


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
        return to_chw(read_patch_image(self.paths[j], resize=self.resize)), int(self.labels[j])


class ConcatPatchDataset(PatchDataset):
    """Several patch datasets read as one, in order."""

    def __init__(self, parts: Sequence[PatchDataset]) -> None:
        ids = [i for p in parts for i in p.ids]
        labels = np.concatenate([p.labels for p in parts]).astype(np.int64)
        super().__init__(ids, labels, " + ".join(p.description for p in parts))
        self.parts = list(parts)
        if any(hasattr(p, "groups") for p in parts):
            # Slides are held out whole; any other patch is a group of its own.
            self.groups = np.concatenate([
                np.asarray(getattr(p, "groups", [f"{p.description}#{i}" for i in p.ids]))
                for p in parts
            ])  # fmt: skip
        self._ends = np.cumsum([len(p) for p in parts]).tolist()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self._index(i)
        k = bisect.bisect_right(self._ends, j)
        start = self._ends[k - 1] if k else 0
        return self.parts[k][j - start]


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
                    "RGB; resize converts, centre-crops and resizes it",
                    param="resize",
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


def to_chw(patch: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 → a contiguous 3xHxW tensor."""
    return torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).contiguous()


def is_image(name: str) -> bool:
    """A visible file with a patch-image suffix."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def describe(kind: str, where: str | Path, labels: np.ndarray) -> str:
    """'<kind> at <where> (N patches: K tumour)', the dataset's ``description``."""
    n = len(labels)
    if n and (labels < 0).all():
        return f"{kind} at {where} ({n} patches, unlabelled)"
    return f"{kind} at {where} ({n} patches: {int((labels == 1).sum())} tumour)"


def name_some(items: Sequence[str]) -> str:
    """The first few of ``items`` for an error message."""
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (", ..." if len(items) > MAX_NAMED else "")
