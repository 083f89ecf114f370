"""Weights files: a faithful round trip of weights and card; anything else is a SlidescanError,
and loading never executes pickled code."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from slidescan.engine.weights import (
    FORMAT,
    FORMAT_VERSION,
    PCAM_MPP,
    ModelCard,
    file_sha256,
    load_weights,
    save_weights,
)
from slidescan.errors import SlidescanError
from slidescan.models import create_model

SMALL = {"width": 8}  # a pcamnet-s with few channels: fast, and exercises the card's config


def _model(seed: int = 0, **config: object) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("pcamnet-s", **(config or SMALL))
    # Non-default running statistics, so a lost BatchNorm buffer would change the outputs.
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 96, 96, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def _card(**overrides: object) -> ModelCard:
    fields: dict = {
        "model": "pcamnet-s",
        "config": dict(SMALL),
        "mpp": 0.5,
        "mean": (0.7, 0.55, 0.69),
        "std": (0.16, 0.2, 0.15),
        "threshold": 0.37,
        "training": {"data": "toy set", "epochs": 3, "config": {"lr": 0.001, "seed": 0}},
        "metrics": {"validation": {"auc": 0.9, "auc_ci": [0.85, 0.95]}, "epoch": 2},
    }
    fields.update(overrides)
    return ModelCard(**fields)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, nn.Module, ModelCard]:
    model, card = _model(), _card()
    path = tmp_path / "sub" / "model.pt"  # parent folder must be created
    save_weights(path, model, card)
    return path, model, card


def test_round_trip_outputs_identical(saved: tuple[Path, nn.Module, ModelCard]) -> None:
    path, model, _ = saved
    loaded = load_weights(path)
    assert not loaded.model.training, "loaded model must be in eval mode"
    x = torch.randn(5, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert not list(path.parent.glob("*.tmp")), "temporary file left behind"


def test_round_trip_card(saved: tuple[Path, nn.Module, ModelCard]) -> None:
    path, _, card = saved
    got = load_weights(path).card
    assert got.model == "pcamnet-s"
    assert got.config == SMALL
    assert got.input_size == 96
    assert got.mpp == 0.5
    assert got.threshold == 0.37
    assert isinstance(got.mean, tuple) and isinstance(got.std, tuple)
    assert got.mean == (0.7, 0.55, 0.69)
    assert got.std == (0.16, 0.2, 0.15)
    assert got.training == card.training
    assert got.metrics == card.metrics
    assert got.slidescan_version  # filled in by save_weights
    assert got == card


def test_card_defaults() -> None:
    card = ModelCard(model="pcamnet-s")
    assert card.mpp == PCAM_MPP == pytest.approx(0.972)
    assert card.input_size == 96 and 0 < card.threshold < 1


def test_sha256_matches_hashlib(saved: tuple[Path, nn.Module, ModelCard]) -> None:
    path, _, _ = saved
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == expected
    loaded = load_weights(path)
    assert loaded.sha256 == expected
    assert loaded.path == path


def test_sha256_of_larger_file(tmp_path: Path) -> None:
    # More than one 1 MiB read block.
    data = os.urandom((1 << 20) * 2 + 123)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_overwrite_replaces_file(saved: tuple[Path, nn.Module, ModelCard]) -> None:
    path, _, _ = saved
    other = _model(seed=1)
    save_weights(path, other, _card(threshold=0.6))
    loaded = load_weights(path)
    assert loaded.card.threshold == 0.6
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), other(x))


# ------------------------------------------------------------------------------------------------
# Files that are not slidescan weights


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlidescanError, match="not found"):
        load_weights(tmp_path / "nope.pt")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(SlidescanError):
        load_weights(tmp_path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(SlidescanError, match="not a slidescan weights file"):
        load_weights(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(SlidescanError, match="not a slidescan weights file"):
        load_weights(path)


def test_plain_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(SlidescanError, match="not a slidescan weights file"):
        load_weights(path)


def test_bare_state_dict(tmp_path: Path) -> None:
    # The most likely foreign file: someone's torch.save(model.state_dict()).
    path = tmp_path / "state.pt"
    torch.save(_model().state_dict(), path)
    with pytest.raises(SlidescanError, match="not a slidescan weights file"):
        load_weights(path)


class _Evil:
    """Unpickling this creates ``marker`` — if the loader ever executes pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["pickle", "torch", "torch-in-payload"])
def test_malicious_pickle_is_not_executed(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if how == "pickle":
        path.write_bytes(pickle.dumps(_Evil(marker)))
    elif how == "torch":
        torch.save(_Evil(marker), path)
    else:  # a well-formed looking file with a booby-trapped entry
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "card": {"model": "pcamnet-s"},
            "state_dict": _Evil(marker),
        }
        torch.save(payload, path)
    with pytest.raises(SlidescanError, match="not a slidescan weights file"):
        load_weights(path)
    assert not marker.exists(), "load_weights executed code from the file"

    # Control: an unrestricted load of the same file does run it, so the test is meaningful.
    if how == "pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def _write_payload(path: Path, **changes: object) -> None:
    model = _model()
    payload: dict = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "card": {"model": "pcamnet-s", "config": dict(SMALL)},
        "state_dict": model.state_dict(),
    }
    payload.update(changes)
    torch.save(payload, path)


def test_card_config_does_not_fit_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    _write_payload(path, card={"model": "pcamnet-s", "config": {"width": 16}})
    with pytest.raises(SlidescanError, match="do not fit model 'pcamnet-s'"):
        load_weights(path)


def test_card_names_other_architecture(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    _write_payload(path, card={"model": "seed-cnn", "config": {}})
    with pytest.raises(SlidescanError, match="do not fit model 'seed-cnn'"):
        load_weights(path)


def test_card_names_unknown_model(tmp_path: Path) -> None:
    path = tmp_path / "unknown.pt"
    _write_payload(path, card={"model": "resnet-9000"})
    with pytest.raises(SlidescanError, match="unknown model 'resnet-9000'"):
        load_weights(path)


def test_state_dict_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "partial.pt"
    state = _model().state_dict()
    state.pop(next(iter(state)))
    _write_payload(path, state_dict=state)
    with pytest.raises(SlidescanError, match="do not fit"):
        load_weights(path)


def test_newer_format_version(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    _write_payload(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(SlidescanError, match="newer"):
        load_weights(path)


@pytest.mark.parametrize(
    "changes",
    [
        {"card": None},
        {"card": {"config": {}}},  # no model name
        {"card": {"model": "pcamnet-s", "config": {"no_such_option": 1}}},
        {"state_dict": None},
    ],
    ids=["card-none", "card-without-model", "bad-config", "no-state-dict"],
)
def test_malformed_card_or_state(tmp_path: Path, changes: dict) -> None:
    path = tmp_path / "malformed.pt"
    _write_payload(path, **changes)
    with pytest.raises(SlidescanError):
        load_weights(path)


def test_missing_card_and_state_dict_keys(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION}, path)
    with pytest.raises(SlidescanError):
        load_weights(path)


def test_lesion_thresholds_from_the_card() -> None:
    plain = ModelCard(model="pcamnet-v2", threshold=0.4)
    assert plain.lesion_thresholds() == (0.4, 0.4)  # uncalibrated: the tile threshold
    card = ModelCard(model="pcamnet-v2", threshold=0.5, extent_threshold=0.75, seed_threshold=0.98)
    assert card.lesion_thresholds() == (0.98, 0.75)
    assert card.lesion_thresholds(0.9) == (0.9, 0.75)
    assert card.lesion_thresholds(0.6) == (0.6, 0.6)  # the extent never exceeds the seed


def test_named_operating_points_set_the_seed() -> None:
    """Issue 22: a lab picks a named operating point; the card says what it means."""
    card = ModelCard(
        model="pcamnet-v2", threshold=0.5, extent_threshold=0.75, seed_threshold=0.98,
        operating_points={"high": {"seed_threshold": 0.95}},
    )  # fmt: skip
    assert card.lesion_thresholds(sensitivity="standard") == (0.98, 0.75)
    assert card.lesion_thresholds(sensitivity="high") == (0.95, 0.75)
    with pytest.raises(SlidescanError, match="give one of them") as both:
        card.lesion_thresholds(0.9, sensitivity="high")
    assert both.value.param == "sensitivity"
    bare = ModelCard(model="pcamnet-v2", threshold=0.5)
    with pytest.raises(SlidescanError, match="names no 'high' operating point"):
        bare.lesion_thresholds(sensitivity="high")


def test_the_shipped_model_names_a_high_sensitivity_point() -> None:
    card = load_weights().card
    seed, extent = card.lesion_thresholds()
    high, high_extent = card.lesion_thresholds(sensitivity="high")
    assert extent < high < seed and high_extent == extent
    figures = card.operating_points["high"]["figures"]
    assert figures["normal_slides_positive"] <= 0.05  # the false-positive bound
