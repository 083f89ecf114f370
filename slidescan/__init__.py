"""slidescan: batch whole-slide scanning for lymph-node metastases (research use only).

The Python API, for notebooks and scripts (each name is imported on first use, so that
``import slidescan`` stays light)::

    from slidescan import scan_slide
    result = scan_slide("slide.svs", "slide.zarr", overlay="slide.png")
    result.call.category, result.call.lesions, result.distribution.flagged

Building blocks: ``load_weights``, ``Scanner`` and ``ScanOptions`` (one model, many slides),
``scan_directory`` (a folder of slides, here or on a Dask cluster), ``run_batch`` and
``find_slides``, ``open_slide``, ``read_heatmap``, ``read_report`` and ``read_slide_report``
(outputs; the latter gives the typed ``SlideReport``), ``call_slide`` (the lesion call on any
probability map),
``open_patch_datasets``, ``TrainConfig`` and ``train`` (training), ``evaluate`` (patch metrics).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from slidescan.about import RESEARCH_USE_NOTICE, __version__

_API = {
    "scan_slide": "slidescan.scan.scanner",
    "Scanner": "slidescan.scan.scanner",
    "ScanOptions": "slidescan.scan.scan_result",
    "ScanResult": "slidescan.scan.scan_result",
    "run_batch": "slidescan.batch.slide_jobs",
    "scan_directory": "slidescan.batch.directory",
    "find_slides": "slidescan.batch.directory",
    "call_slide": "slidescan.scan.slide_call",
    "load_weights": "slidescan.engine.weights",
    "open_slide": "slidescan.io.slide",
    "read_heatmap": "slidescan.io.heatmap",
    "read_report": "slidescan.io.outputs",
    "SlideReport": "slidescan.report.slide_report",
    "read_slide_report": "slidescan.report.slide_report",
    "open_patch_datasets": "slidescan.io.patches",
    "TrainConfig": "slidescan.train.train_config",
    "train": "slidescan.train.trainer",
    "evaluate": "slidescan.train.evaluation",
}

__all__ = [
    "RESEARCH_USE_NOTICE",
    "Scanner",
    "ScanOptions",
    "ScanResult",
    "SlideReport",
    "TrainConfig",
    "__version__",
    "call_slide",
    "evaluate",
    "find_slides",
    "load_weights",
    "open_patch_datasets",
    "open_slide",
    "read_heatmap",
    "read_report",
    "read_slide_report",
    "run_batch",
    "scan_directory",
    "scan_slide",
    "train",
]

if TYPE_CHECKING:
    from slidescan.batch.directory import find_slides, scan_directory
    from slidescan.batch.slide_jobs import run_batch
    from slidescan.engine.weights import load_weights
    from slidescan.io.heatmap import read_heatmap
    from slidescan.io.outputs import read_report
    from slidescan.io.patches import open_patch_datasets
    from slidescan.io.slide import open_slide
    from slidescan.report.slide_report import SlideReport, read_slide_report
    from slidescan.scan.scan_result import ScanOptions, ScanResult
    from slidescan.scan.scanner import Scanner, scan_slide
    from slidescan.scan.slide_call import call_slide
    from slidescan.train.evaluation import evaluate
    from slidescan.train.train_config import TrainConfig
    from slidescan.train.trainer import train


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'slidescan' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
