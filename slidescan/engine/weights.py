"""Weights files: the state dict plus the model card that says how to use it.

A weights file is a ``torch.save``d dict with plain types only, so it loads with
``torch.load(weights_only=True)`` — arbitrary pickled objects are never executed.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slidescan.errors import SlidescanError, one_line
from slidescan.io.atomic import atomic_write
from slidescan.models import create_model

FORMAT = "slidescan-weights"
FORMAT_VERSION = 1
PCAM_MPP = 0.972  # PatchCamelyon: level 2 of Camelyon16 slides scanned at ~0.243 µm/px
SHIPPED_NAME = "pcamnet-v2.pt"


def shipped_weights_path() -> Path:
    """The default model's weights, installed with the package (from the repo's ``weights/``)."""
    from importlib.util import find_spec

    if find_spec("slidescan.shipped_weights") is not None:
        from importlib.resources import files

        return Path(str(files("slidescan.shipped_weights") / SHIPPED_NAME))
    # An editable install maps only slidescan/ to the checkout; the weights sit beside it.
    return Path(__file__).resolve().parents[2] / "weights" / SHIPPED_NAME


@dataclass
class ModelCard:
    """Everything needed to use a trained model correctly, stored inside its weights file."""

    model: str
    config: dict[str, Any] = field(default_factory=dict)
    input_size: int = 96
    mpp: float = PCAM_MPP
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    threshold: float = 0.5  # tile threshold: patch predictions
    # Lesions (scan.slide_call, calibrated by train.calibration): tiles at the extent
    # threshold (default: the tile threshold) around seed tiles at the seed threshold.
    extent_threshold: float | None = None
    seed_threshold: float | None = None
    training: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Colours of the training patches by stain-normalisation method (engine.stain_norm).
    stain_reference: dict[str, Any] = field(default_factory=dict)
    stain_norm: str = "none"  # what its training inputs went through; scans default to it
    # Named lesion-call settings besides the standard one (vocabulary.Sensitivity), each a dict
    # with its "seed_threshold" and how it was chosen ("chosen_on", "figures").
    operating_points: dict[str, Any] = field(default_factory=dict)
    slidescan_version: str = ""

    def lesion_thresholds(
        self, seed: float | None = None, sensitivity: str = "standard"
    ) -> tuple[float, float]:
        """(seed, extent) thresholds of the lesion finder at the named ``sensitivity``; ``seed``
        overrides the card's seed, and the extent never exceeds the seed. Uncalibrated cards
        use the tile threshold."""
        if sensitivity != "standard":
            if seed is not None:
                raise SlidescanError(
                    f"a seed threshold and the {sensitivity!r} operating point both set the "
                    "seed: give one of them",
                    param="sensitivity",
                )
            point = self.operating_points.get(sensitivity)
            if point is None:
                named = ", ".join(["standard", *sorted(self.operating_points)])
                raise SlidescanError(
                    f"model {self.model} names no {sensitivity!r} operating point (it has: "
                    f"{named}); give a seed threshold instead",
                    param="sensitivity",
                )
            seed = float(point["seed_threshold"])
        if seed is None:
            seed = self.seed_threshold if self.seed_threshold is not None else self.threshold
        extent = self.extent_threshold if self.extent_threshold is not None else self.threshold
        return float(seed), float(min(extent, seed))


@dataclass
class LoadedModel:
    """A ready-to-run model (eval mode) with its card and the file's SHA-256."""

    model: nn.Module
    card: ModelCard
    sha256: str
    path: Path | None
    int8_onnx: bytes | None = None  # the CPU engine's int8 graph, when the file carries one
    # The training patches' feature cloud (slidescan.scan.distribution_check), when calibrated.
    feature_reference: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    fp32_onnx: bytes | None = field(default=None, repr=False)  # see onnx_backend.fp32_graph


def save_weights(
    path: Path,
    model: nn.Module,
    card: ModelCard,
    *,
    int8_onnx: bytes | None = None,
    feature_reference: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write ``model``'s weights with ``card`` atomically (temp file, then rename).

    ``int8_onnx``: an int8 ONNX graph of the same model (``slidescan quantize``), kept in the
    file as a uint8 tensor so the one file stays the one source of truth.
    ``feature_reference``: tensors of the out-of-distribution check (``distribution_check``).
    """
    from slidescan.about import __version__

    card.slidescan_version = card.slidescan_version or __version__
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "card": _plain(asdict(card)),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if int8_onnx is not None:
        payload["onnx_int8"] = torch.frombuffer(bytearray(int8_onnx), dtype=torch.uint8)
    if feature_reference is not None:
        payload["feature_reference"] = {k: v.detach().cpu() for k, v in feature_reference.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def _plain(value: Any) -> Any:
    """``value`` with enum members as their plain values: ``torch.load(weights_only=True)``
    unpickles builtins only."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (recorded in every heatmap for provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _card_from_dict(raw: dict[str, Any]) -> ModelCard:
    known = ModelCard.__dataclass_fields__
    card = ModelCard(**{k: v for k, v in raw.items() if k in known})
    card.mean = tuple(card.mean)  # type: ignore[assignment]
    card.std = tuple(card.std)  # type: ignore[assignment]
    return card


def load_weights(path: Path | None = None) -> LoadedModel:
    """Load a slidescan weights file (default: the shipped model) into an eval-mode model.

    Raises SlidescanError for a missing file, a file that is not a slidescan model, or weights
    that do not fit the architecture named in the card.
    """
    path = Path(path) if path is not None else shipped_weights_path()
    if not path.is_file():
        raise SlidescanError(f"{path}: weights file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means: not ours
        # torch's own message is a paragraph about weights_only: name the failure, not that.
        raise SlidescanError(
            f"{path}: not a slidescan weights file (torch.load cannot read it: "
            f"{type(exc).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SlidescanError(f"{path}: not a slidescan weights file (no slidescan model card)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise SlidescanError(
            f"{path}: weights format {payload['format_version']} is newer than this slidescan "
            f"understands ({FORMAT_VERSION}); upgrade slidescan"
        )
    try:
        card = _card_from_dict(payload["card"])
        model = create_model(card.model, **card.config)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise SlidescanError(f"{path}: damaged model card ({type(exc).__name__}: {exc})") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        first = one_line(exc)
        raise SlidescanError(f"{path}: weights do not fit model {card.model!r}: {first}") from None
    model.eval()
    int8 = payload.get("onnx_int8")
    reference = payload.get("feature_reference")
    return LoadedModel(
        model=model,
        card=card,
        sha256=file_sha256(path),
        path=path,
        int8_onnx=int8.numpy().tobytes() if isinstance(int8, torch.Tensor) else None,
        feature_reference=reference if isinstance(reference, dict) else None,
    )
