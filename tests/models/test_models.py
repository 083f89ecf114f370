"""Model registry: every registered model gets the same contract tests; pcamnet's dense mode."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from slidescan.errors import SlidescanError
from slidescan.models import (
    DEFAULT_MODEL,
    count_parameters,
    create_model,
    get_spec,
    list_models,
)

MODEL_NAMES = [spec.name for spec in list_models()]


@functools.cache
def _model(name: str) -> nn.Module:
    """One seeded instance per model name (seed-cnn's 51M parameters are slow to initialise)."""
    torch.manual_seed(0)
    return create_model(name)


def _batch(name: str, n: int = 4, seed: int = 0) -> torch.Tensor:
    size = get_spec(name).input_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _calibrate_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Real running statistics (from random patches), so eval mode uses non-trivial ones and
    the untrained network's outputs vary enough for comparisons to mean something."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 96, 96, generator=torch.Generator().manual_seed(seed)))
    model.eval()


def test_registry_lists_both_models() -> None:
    assert {"pcamnet-s", "seed-cnn"} <= set(MODEL_NAMES)
    assert sorted(MODEL_NAMES) == MODEL_NAMES
    assert DEFAULT_MODEL in MODEL_NAMES


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_and_finite(name: str) -> None:
    model = _model(name).eval()
    for n in (1, 3):
        with torch.no_grad():
            out = model(_batch(name, n))
        assert out.shape == (n,), f"{name}: output {tuple(out.shape)} for a batch of {n}"
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_flow(name: str) -> None:
    model = _model(name).train()
    x = _batch(name, 4).requires_grad_(True)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), torch.tensor([0.0, 1, 0, 1]))
    loss.backward()
    missing = [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0, f"{name}: gradient does not reach input"
    model.zero_grad(set_to_none=True)
    model.eval()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_is_deterministic(name: str) -> None:
    model = _model(name).eval()
    x = _batch(name, 3, seed=1)
    with torch.no_grad():
        a, b = model(x), model(x)
        alone = model(x[1:2])
    assert torch.equal(a, b)
    # In eval mode a sample's logit does not depend on the rest of the batch.
    torch.testing.assert_close(alone, a[1:2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unknown_config_keyword_fails(name: str) -> None:
    # Cards store model config; an unknown keyword must fail loudly, not be ignored.
    with pytest.raises(TypeError):
        create_model(name, no_such_option=1)


def test_parameter_counts() -> None:
    counts = {name: count_parameters(_model(name)) for name in MODEL_NAMES}
    msg = f"parameter counts: {counts}"
    print(msg)
    assert 50_000_000 <= counts["seed-cnn"] <= 52_000_000, msg
    assert counts["pcamnet-s"] < 3_000_000, msg
    assert counts["pcamnet-s"] * 20 < counts["seed-cnn"], msg


def test_count_parameters_skips_frozen() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    assert count_parameters(model) == 4 * 3 + 3 + 3 + 1
    model[0].requires_grad_(False)
    assert count_parameters(model) == 3 + 1


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(SlidescanError) as info:
        create_model("resnet-9000")
    message = str(info.value)
    assert "resnet-9000" in message
    for name in MODEL_NAMES:
        assert name in message
    with pytest.raises(SlidescanError):
        get_spec("")


def test_pcamnet_dense_map_equals_patchwise() -> None:
    torch.manual_seed(0)
    model = create_model("pcamnet-s")
    _calibrate_batchnorm(model)
    rows, cols = 4, 3
    x = torch.randn(1, 3, 96 + 32 * (rows - 1), 96 + 32 * (cols - 1))
    with torch.no_grad():
        dense = model.forward_dense(x)
        assert dense.shape == (1, rows, cols)
        patches = torch.cat(
            [
                x[..., 32 * i : 32 * i + 96, 32 * j : 32 * j + 96]
                for i in range(rows)
                for j in range(cols)
            ]
        )
        patchwise = model(patches).view(1, rows, cols)
    assert dense.std() > 1e-3, "degenerate map: the comparison would prove nothing"
    torch.testing.assert_close(dense, patchwise, rtol=0, atol=1e-4)
    # Cell (i, j) is the patch at (32 i, 32 j): also check one cell on its own.
    with torch.no_grad():
        one = model(x[..., 64:160, 32:128])
    torch.testing.assert_close(dense[0, 2, 1].view(1), one, rtol=0, atol=1e-4)


def test_pcamnet_dense_on_a_single_patch_is_forward() -> None:
    model = _model("pcamnet-s").eval()
    x = _batch("pcamnet-s", 2)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_dense(x).flatten(), model(x))


@pytest.mark.parametrize("side", [64, 100, 128, 192])
def test_pcamnet_forward_rejects_other_sizes(side: int) -> None:
    model = _model("pcamnet-s").eval()
    with pytest.raises(ValueError, match="96") as info, torch.no_grad():
        model(torch.randn(1, 3, side, side))
    assert str(side) in str(info.value)
