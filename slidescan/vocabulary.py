"""The closed vocabularies, shared by the library, the files it writes and the CLI.

Each is a ``StrEnum``: a member *is* its string, so reports and CSV files hold plain words, and
code may compare with either. The CLI's choices are these enums, so a new member reaches
``--help`` and the validation of every option by itself.
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    """A lesion's or a slide's pN category (Camelyon17 / AJCC), in order of severity."""

    negative = "negative"
    itc = "itc"
    micrometastasis = "micrometastasis"
    macrometastasis = "macrometastasis"

    @property
    def rank(self) -> int:
        """0 (negative) to 3 (macrometastasis): to sort and threshold by (tables, QuPath)."""
        return list(Category).index(self)

    @property
    def words(self) -> str:
        """The category for people."""
        return "isolated tumour cells" if self is Category.itc else self.value


CATEGORY_RANK = {c.value: c.rank for c in Category}
CATEGORY_NAMES = {c.value: c.words for c in Category}


class SlideStatus(StrEnum):
    """What a run did with one slide (summary.csv's ``status``)."""

    done = "done"
    redone = "redone"  # an earlier result made with other settings, or damaged, was replaced
    skipped = "skipped"  # complete with the same settings
    recalled = "recalled"  # only the call's thresholds changed: the call redone from the heatmap
    busy = "busy"  # another run is writing it
    failed = "failed"
    pending = "pending"  # the batch has not reached it (review page only)


class Backend(StrEnum):
    """Inference engines."""

    auto = "auto"  # onnx-int8 on CPU when the weights carry it, else torch
    torch = "torch"  # PyTorch on any device
    onnx = "onnx"  # ONNX Runtime float32 on CPU: torch's numbers
    onnx_int8 = "onnx-int8"  # ONNX Runtime int8 on CPU: 2-3x faster


class Reader(StrEnum):
    """Slide decoders: ``auto`` decodes tiled TIFF slides (Aperio .svs among them) directly and
    the rest with OpenSlide; ``openslide`` keeps every pixel on OpenSlide's decoder."""

    auto = "auto"
    openslide = "openslide"


class Augment(StrEnum):
    """Training augmentation levels (``engine.augment``)."""

    strong = "strong"  # dihedral + strong HED, hue/saturation, brightness/contrast, blur
    basic = "basic"  # dihedral + light HED
    none = "none"


class Schedule(StrEnum):
    """Learning-rate schedules of the trainer: cosine with warm-up, or constant."""

    cosine = "cosine"
    constant = "constant"


class StainNorm(StrEnum):
    """Stain normalisation methods (``engine.stain_norm``), fitted per slide on its tissue."""

    none = "none"
    macenko = "macenko"  # stain vectors from optical density
    reinhard = "reinhard"  # colour statistics in CIELAB


class Sensitivity(StrEnum):
    """Named operating points of the lesion call (``ModelCard.operating_points``)."""

    standard = "standard"  # the card's calibrated seed threshold: few false-positive slides
    high = "high"  # a lower seed threshold: more small metastases, more false-positive slides
