"""int8 engine: stored in the weights file, chosen on the CPU, close to float32, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from patch_fixtures import write_toy_set
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from slidescan.cli import app
from slidescan.engine.inference import make_predictor, predict_dense_probs, predict_probs
from slidescan.engine.quantize import quantize_weights
from slidescan.engine.weights import ModelCard, load_weights, save_weights
from slidescan.errors import SlidescanError
from slidescan.io.patches import open_patch_dataset
from slidescan.models import create_model


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_set(tmp_path_factory.mktemp("toy"), 40, seed=5)


@pytest.fixture(scope="module")
def fp32_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("pcamnet-s", width=16)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            model(torch.rand(16, 3, 96, 96) * 3 - 1)
        model.head.weight.mul_(30)  # a random head's logits barely vary; spread them
    path = tmp_path_factory.mktemp("w") / "w.pt"
    save_weights(path, model, ModelCard(model="pcamnet-s", config={"width": 16}))
    return path


def test_quantized_weights_roundtrip_and_follow_float32(
    fp32_weights: Path, toy_dir: Path, tmp_path: Path
) -> None:
    loaded = load_weights(fp32_weights)
    assert loaded.int8_onnx is None
    dataset = open_patch_dataset(toy_dir)
    int8, agreement = quantize_weights(loaded, dataset, patches=32)
    assert agreement.patches == 32 and agreement.max_abs_diff < 0.2
    out = tmp_path / "q.pt"
    save_weights(out, loaded.model, loaded.card, int8_onnx=int8)
    again = load_weights(out)
    assert again.int8_onnx == int8
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name

    int8_pred = make_predictor(again, "cpu")
    fp32_pred = make_predictor(again, "cpu", "onnx")
    assert int8_pred.engine == "onnx-int8" and fp32_pred.engine == "onnx"
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    p8 = predict_probs(int8_pred.model, x, int8_pred.normalizer)
    p32 = predict_probs(fp32_pred.model, x, fp32_pred.normalizer)
    assert p8.std() > 1e-3  # the outputs vary, so closeness means something
    assert (p8 - p32).abs().mean() < 0.05
    # Dense maps through the int8 graph: same shape, close to float32.
    gen = torch.Generator().manual_seed(0)
    region = torch.randint(100, 256, (1, 3, 96 + 32 * 3, 96 + 32 * 2), generator=gen).to(
        torch.uint8
    )
    d8 = predict_dense_probs(int8_pred.model, region, int8_pred.normalizer)
    d32 = predict_dense_probs(fp32_pred.model, region, fp32_pred.normalizer)
    assert d8.shape == d32.shape == (4, 3)
    assert (d8 - d32).abs().max() < 0.2


def test_backend_choice_and_errors(fp32_weights: Path) -> None:
    loaded = load_weights(fp32_weights)
    assert make_predictor(loaded, "cpu").engine == "onnx"  # no int8 graph: float32 ONNX
    assert make_predictor(loaded, "cpu", "torch").engine == "torch"
    with pytest.raises(SlidescanError, match="carry no int8 model.*slidescan quantize"):
        make_predictor(loaded, "cpu", "onnx-int8")
    with pytest.raises(SlidescanError, match="unknown backend"):
        make_predictor(loaded, "cpu", "tensorrt")


def test_quantize_command_writes_a_new_file(
    fp32_weights: Path, toy_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "q.pt"
    result = CliRunner().invoke(
        app, ["quantize", str(toy_dir), "--weights", str(fp32_weights), "--out", str(out),
              "--patches", "16"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "int8 vs float32 on 16 other patches" in result.output
    assert load_weights(out).int8_onnx is not None
    assert load_weights(fp32_weights).int8_onnx is None  # the input is left alone with --out


def test_quantize_refuses_too_few_patches(fp32_weights: Path, tmp_path: Path) -> None:
    tiny = write_toy_set(tmp_path / "tiny", 5)
    result = CliRunner().invoke(app, ["quantize", str(tiny), "--weights", str(fp32_weights)])
    assert result.exit_code == 1
    assert "too few patches to calibrate" in result.output
    assert load_weights(fp32_weights).int8_onnx is None


def test_shipped_int8_engine_matches_float32_on_real_patches(data_dir: Path) -> None:
    loaded = load_weights()
    assert loaded.int8_onnx is not None, "the shipped weights should carry their int8 engine"
    valid = open_patch_dataset(data_dir / "pcam-jpeg", split="valid")
    idx = np.random.default_rng(0).choice(len(valid), 400, replace=False)
    x = torch.stack([valid[int(i)][0] for i in idx])
    labels = np.asarray(valid.labels)[idx]
    int8, fp32 = make_predictor(loaded, "cpu"), make_predictor(loaded, "cpu", "onnx")
    assert int8.engine == "onnx-int8"
    p8 = predict_probs(int8.model, x, int8.normalizer).numpy()
    p32 = predict_probs(fp32.model, x, fp32.normalizer).numpy()
    assert np.abs(p8 - p32).mean() < 0.01
    assert abs(roc_auc_score(labels, p8) - roc_auc_score(labels, p32)) < 0.005
    # The logit layer stays float: probabilities are not coarsened to a few int8 levels (the
    # first int8 engine gave 72 tiles of a slide 50 distinct values).
    assert len(np.unique(p8)) >= 0.98 * len(p8)
