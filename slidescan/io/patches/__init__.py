"""Labelled 96x96 patch sets as lazy torch Datasets, one format per module.

``open.py`` detects the layout of a path; ``kaggle.py`` (train_labels.csv + train/),
``pcam_h5.py`` (PatchCamelyon HDF5, gzip cache) and ``image_folders.py`` (class folders, images to
predict) read one format each; ``dataset.py`` holds the dataset classes they all return.
"""

from slidescan.io.patches.dataset import (
    IMAGE_SUFFIXES,
    PATCH_SIZE,
    UNLABELLED,
    ConcatPatchDataset,
    ImageFilePatchDataset,
    PatchDataset,
    read_patch_image,
)
from slidescan.io.patches.image_folders import open_unlabelled_patches
from slidescan.io.patches.open import open_patch_dataset, open_patch_datasets
from slidescan.io.patches.pcam_h5 import CACHE_ENV_VAR, H5PatchDataset

__all__ = [
    "CACHE_ENV_VAR",
    "IMAGE_SUFFIXES",
    "PATCH_SIZE",
    "UNLABELLED",
    "ConcatPatchDataset",
    "H5PatchDataset",
    "ImageFilePatchDataset",
    "PatchDataset",
    "open_patch_dataset",
    "open_patch_datasets",
    "open_unlabelled_patches",
    "read_patch_image",
]
