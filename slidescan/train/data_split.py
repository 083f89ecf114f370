"""Which patches train and which choose the epoch: held-out splits that keep repeated patches and
whole slides on one side, class balance, and the input statistics of the training side."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from slidescan.errors import SlidescanError
from slidescan.progress import progress


def dataset_size(dataset: Dataset) -> int:
    """``len(dataset)``: every dataset here is sized; torch's ``Dataset`` type does not say so."""
    return len(cast(Sized, dataset))


@dataclass
class HeldOut:
    """The training side, the validation side, their labels and the held-out patch ids."""

    train: Dataset
    val: Dataset
    train_labels: np.ndarray
    val_labels: np.ndarray
    holdout_ids: list[str]


def hold_out(
    data: Dataset,
    val_data: Dataset | None,
    fraction: float,
    seed: int,
    *,
    same_as: Sequence[str] = (),
) -> HeldOut:
    """Split ``data`` (unless ``val_data`` is given): slides are held out whole and the training
    side balanced; patch collections keep repeated patches on one side.

    ``same_as``: hold out exactly these patch ids (an earlier run's), so a run that adds data
    can be compared with that run and distilled from it; patches of the added data that repeat a
    held-out one (same pixels, same slide) are dropped rather than trained on.
    """
    holdout_ids: list[str] = []
    if val_data is not None:
        split = HeldOut(data, val_data, labels_of(data), labels_of(val_data), holdout_ids)
    else:
        slide_groups = getattr(data, "groups", None)
        groups = pixel_digests(data) if slide_groups is None else slide_groups
        labels = labels_of(data)
        if same_as:
            train_idx, val_idx = _held_out_indices(data, groups, same_as)
        else:
            train_idx, val_idx = split_holdout(
                dataset_size(data), fraction, seed, groups=groups,
                labels=None if slide_groups is None else labels,
            )  # fmt: skip
        if slide_groups is not None:
            train_idx = balance_classes(train_idx, labels, seed)
        ids = getattr(data, "ids", None)
        if ids is not None:
            holdout_ids = [str(ids[i]) for i in val_idx]
        split = HeldOut(
            Subset(data, train_idx.tolist()), Subset(data, val_idx.tolist()),
            labels[train_idx], labels[val_idx], holdout_ids,
        )  # fmt: skip
    for name, side in (("training", split.train_labels), ("validation", split.val_labels)):
        if len(np.unique(side)) < 2 or side.min() < 0:
            raise SlidescanError(f"the {name} data needs labelled examples of both classes")
    return split


def split_by_ids(data: Dataset, held_ids: Sequence[str]) -> tuple[Dataset, Dataset]:
    """(training part, held-out part) of a patch dataset, by the held-out ids."""
    is_held = _held_mask(data, held_ids)
    rest, held = np.flatnonzero(~is_held), np.flatnonzero(is_held)
    return Subset(data, rest.tolist()), Subset(data, held.tolist())


def _held_out_indices(
    data: Dataset, groups: np.ndarray, held_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices holding out the items whose id is in ``held_ids``; items sharing a
    group with a held-out one train on neither side."""
    is_val = _held_mask(data, held_ids)
    near_held = np.isin(groups, np.unique(groups[is_val])) & ~is_val
    return np.flatnonzero(~is_val & ~near_held), np.flatnonzero(is_val)


def recorded_holdout_ids(training: dict[str, Any], name: str) -> list[str]:
    """The patch ids a model card's training record lists as held out (``name``: the file)."""
    ids = training.get("holdout_ids")
    if not ids:
        raise SlidescanError(f"{name}: the model card lists no held-out patches")
    return [str(i) for i in ids]


def _held_mask(data: Dataset, held_ids: Sequence[str]) -> np.ndarray:
    """Which items of ``data`` have an id in ``held_ids``: each of them exactly once."""
    ids = getattr(data, "ids", None)
    if ids is None:
        raise SlidescanError("these patches have no ids, so no earlier split can be reused")
    wanted = {str(i) for i in held_ids}
    is_held = np.fromiter((str(i) in wanted for i in ids), dtype=bool, count=len(ids))
    found = Counter(str(ids[i]) for i in np.flatnonzero(is_held))
    missing = sorted(wanted - set(found))
    if missing:
        raise SlidescanError(
            f"the data lacks {len(missing)} of the {len(wanted)} patches to hold out (e.g. "
            f"{', '.join(missing[:3])}): give the data the model was trained on, read the same "
            "way (for slides: the same --seed and --patches-per-slide); new data may be added"
        )
    repeated = sorted(i for i, n in found.items() if n > 1)
    if repeated:
        raise SlidescanError(
            f"{len(repeated)} patch ids to hold out occur more than once in the data (e.g. "
            f"{', '.join(repeated[:3])}): is a folder given twice?"
        )
    return is_held


def split_holdout(
    n: int,
    fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (train, val) index split holding out about ``fraction`` of ``n`` items.

    Items sharing a ``groups`` key (the same pixels: PatchCamelyon repeats patches; the same
    slide) land on the same side, so no held-out patch was also trained on. With ``labels``,
    the first of a seeded series of splits whose two sides both hold both classes is taken
    (few slides, few of them with tumour).
    """
    if not 0 < fraction < 1:
        raise SlidescanError(f"validation fraction must be between 0 and 1, got {fraction}")
    keys = np.arange(n) if groups is None else np.unique(groups, return_inverse=True)[1]
    n_groups = int(keys.max()) + 1 if n else 0
    for attempt in range(100):
        order = np.random.default_rng(seed + 7919 * attempt).permutation(n_groups)
        held = np.zeros(n_groups, dtype=bool)
        held[order[: max(1, round(n_groups * fraction))]] = True
        is_val = held[keys]
        if labels is None or all(len(np.unique(labels[side])) >= 2 for side in (is_val, ~is_val)):
            break
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def balance_classes(index: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """``index`` with items of its rarer class repeated (seeded) until both classes are equal:
    patches sampled from slides are mostly normal; augmentation makes the repeats differ."""
    sides = [index[labels[index] == k] for k in (0, 1)]
    rare = min(sides, key=len)
    gap = abs(len(sides[0]) - len(sides[1]))
    if not len(rare) or not gap:
        return index
    extra = np.random.default_rng(seed).choice(rare, size=gap)
    return np.sort(np.concatenate([index, extra]))


def pixel_digests(dataset: Dataset) -> np.ndarray:
    """One digest per item of its decoded pixels: equal patches get equal keys."""
    import hashlib

    size = dataset_size(dataset)
    loader = DataLoader(dataset, batch_size=256, num_workers=2)
    out: list[str] = []
    for images, _ in progress(loader, desc="find repeated patches", unit="batch", leave=False):
        out += [hashlib.blake2b(im.numpy().tobytes(), digest_size=12).hexdigest() for im in images]
    assert len(out) == size
    return np.asarray(out)


RGB = tuple[float, float, float]


def channel_stats(dataset: Dataset, n: int = 2000, seed: int = 0) -> tuple[RGB, RGB]:
    """Per-channel mean and std of RGB in [0, 1] over a seeded sample of ``n`` patches."""
    size = dataset_size(dataset)
    idx = np.random.default_rng(seed).choice(size, size=min(n, size), replace=False)
    pixels = torch.stack([dataset[int(i)][0] for i in idx]).float().div_(255.0)
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
    m0, m1, m2 = (round(float(v), 4) for v in mean)
    s0, s1, s2 = (round(float(v), 4) for v in std)
    return (m0, m1, m2), (s0, s1, s2)


def labels_of(dataset: Any, indices: np.ndarray | None = None) -> np.ndarray:
    """The labels of ``dataset`` (of ``indices`` of it)."""
    labels = np.asarray(dataset.labels)
    return labels if indices is None else labels[indices]
