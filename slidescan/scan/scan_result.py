"""How to scan (:class:`ScanOptions`), what a scan gave (:class:`ScanResult`), and its line for
the terminal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slidescan.report.slide_report import SlideReport
from slidescan.scan.distribution_check import DistributionCheck
from slidescan.scan.slide_call import SlideCall
from slidescan.vocabulary import CATEGORY_NAMES, SlideStatus


@dataclass(frozen=True)
class ScanOptions:
    """How to scan; defaults are what a first-time user should get."""

    mpp: float | None = None
    stride: int | None = None
    min_tissue: float = 0.25
    batch_size: int | None = None  # None: default_scan_batch(device)
    workers: int | None = None  # None: default_scan_workers(device)
    device: str = "auto"
    backend: str = "auto"
    tta: bool = False
    overwrite: bool = False
    threshold: float | None = None  # the lesion seed threshold; None: the sensitivity's
    sensitivity: str = "standard"  # vocabulary.Sensitivity: a named seed threshold of the card
    block: int | None = None
    dense: bool = False
    reader: str = "auto"
    runner: str = "auto"  # where the model runs: main process or DataLoader workers (scan.runner)
    full_paths: bool = False  # record the slide's absolute path (file names only by default)
    default_mpp: float | None = (
        None  # scale for slides whose metadata has none (--mpp overrides all)
    )
    progress: bool = True
    any_scale: bool = False  # scan even when a patch covers < MIN_PATCH_SLIDE_PX slide pixels
    # engine.stain_norm.STAIN_METHODS, fitted per slide on its tissue; None: the model's own
    stain_norm: str | None = None


@dataclass
class ScanResult:
    """What a scan produced and how it went."""

    slide: Path
    heatmap: Path
    report: Path
    call: SlideCall
    tiles: int
    seconds: float
    overlay: Path | None = None
    distribution: DistributionCheck = DistributionCheck(False)
    slide_report: SlideReport | None = None  # what X.json holds
    status: SlideStatus = SlideStatus.done  # recalled: only the call was redone
    label: str = ""  # how a batch names the slide (its relative path); default: the file name


def verdict_text(call: SlideCall, distribution: DistributionCheck) -> str:
    """'POSITIVE (macrometastasis, 2.31 mm)', 'negative', …, marked when unreliable."""
    verdict = "POSITIVE" if call.positive else "negative"
    if call.category != "negative":
        verdict += f" ({CATEGORY_NAMES[call.category]}, {call.largest_diameter_mm:.2f} mm)"
    if distribution.flagged:
        verdict += " — UNRELIABLE: slide unlike the training data"
    return verdict


def describe(result: ScanResult) -> str:
    """One line per slide for the terminal."""
    c, name = result.call, result.label or result.slide.name
    if result.tiles == 0:
        return f"{name}: no tissue found, nothing scanned  [research use only]"
    recalled = "  (recalled: new thresholds on the stored heatmap)" * (
        result.status == SlideStatus.recalled
    )
    named = result.slide_report.operating_point if result.slide_report else "standard"
    point = {
        "high": "  [high sensitivity]", "custom": f"  [seed threshold {c.seed_threshold:.4g}]"
    }.get(named, "")  # fmt: skip
    line = (
        f"{name}: {verdict_text(c, result.distribution)}"
        f"{recalled}{point}  "
        f"lesions {len(c.lesions)}  "
        f"tiles ≥ extent {c.extent_threshold:.3g}: {c.positive_tiles}/{result.tiles}  "
        f"{result.seconds:.1f} s  [research use only]"
    )
    if result.distribution.flagged:
        line += "\n  " + "; ".join(result.distribution.reasons)
    return line
