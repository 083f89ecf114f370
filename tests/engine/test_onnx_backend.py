"""ONNX Runtime backend: the same numbers as torch, for patches, TTA and dense regions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slidescan.engine.inference import (
    make_predictor,
    predict_dense_probs,
    predict_logits,
    predict_probs,
)
from slidescan.engine.weights import ModelCard, load_weights, save_weights
from slidescan.errors import SlidescanError
from slidescan.models import create_model

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (a slidescan dependency)")


@pytest.fixture(scope="module", params=["pcamnet-s", "seed-cnn"])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = create_model(request.param)
    # Non-trivial BatchNorm statistics, so a train/eval mix-up would show.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 96, 96) * 3 - 1)
        # A random head gives near-constant logits; scale it so outputs differ between inputs.
        last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        last[-1].weight.mul_(100)
    path = tmp_path_factory.mktemp("w") / "w.pt"
    save_weights(path, model, ModelCard(model=request.param, mean=(0.7, 0.5, 0.7)))
    return load_weights(path)


def test_patch_and_tta_probabilities_match_torch(loaded) -> None:
    ref = make_predictor(loaded, "cpu", "torch")
    ort = make_predictor(loaded, "cpu", "onnx")
    # Images from dark to light, so even a random-weight model's outputs spread out.
    level = torch.linspace(0, 200, 37).view(37, 1, 1, 1)
    x = (level + torch.randint(0, 56, (37, 3, 96, 96))).to(torch.uint8)
    for tta in (False, True):
        a = predict_logits(ref.model, ref.normalizer(x), tta=tta)
        b = predict_logits(ort.model, ort.normalizer(x), tta=tta)
        assert a.shape == b.shape == (37,)
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-4), float((a - b).abs().max())
        assert a.std() > 1e-3  # outputs vary, so equality means something
        p_ref = predict_probs(ref.model, x, ref.normalizer, tta=tta)
        assert torch.allclose(p_ref, predict_probs(ort.model, x, ort.normalizer, tta=tta))


def test_dense_maps_match_torch(loaded) -> None:
    if loaded.card.model != "pcamnet-s":
        return  # seed-cnn is not fully convolutional (and CI forbids skips)
    ref = make_predictor(loaded, "cpu", "torch")
    ort = make_predictor(loaded, "cpu", "onnx")
    # Including one-row and one-column regions (a block at a slide's edge).
    for rows, cols in ((5, 3), (1, 4), (3, 1)):
        size = (96 + 32 * (rows - 1), 96 + 32 * (cols - 1))
        region = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8)
        for tta in (False, True):
            a = predict_dense_probs(ref.model, region, ref.normalizer, tta=tta)
            b = predict_dense_probs(ort.model, region, ort.normalizer, tta=tta)
            assert a.shape == b.shape == (rows, cols)
            assert torch.allclose(a, b, atol=1e-5)


def test_export_leaves_the_torch_model_untouched(loaded) -> None:
    model = loaded.model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    make_predictor(loaded, "cpu", "onnx")
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_onnx_rejects_non_patch_input(loaded) -> None:
    ort = make_predictor(loaded, "cpu", "onnx")
    with pytest.raises(ValueError, match="96×96"):
        ort.model(torch.zeros(1, 3, 128, 128))


def test_unknown_backend_is_a_clear_error(loaded, tmp_path: Path) -> None:
    with pytest.raises(SlidescanError, match="unknown backend"):
        make_predictor(loaded, "cpu", "tensorrt")
