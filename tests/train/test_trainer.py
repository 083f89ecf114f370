"""Trainer: learns a toy problem, writes a complete card, is reproducible, resumes exactly."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from patch_fixtures import write_toy_set
from sklearn.metrics import roc_auc_score
from torch.utils.data import Subset
from train_helpers import Interrupted, stop_after_checkpoint

import slidescan.train.trainer as trainer_mod
from slidescan.engine.inference import make_predictor, predict_dataset, predict_probs
from slidescan.engine.weights import load_weights
from slidescan.errors import SlidescanError
from slidescan.io.patches import PatchDataset, open_patch_dataset
from slidescan.models import DEFAULT_MODEL
from slidescan.train import checkpoint
from slidescan.train.checkpoint import resume_path
from slidescan.train.data_split import channel_stats, pixel_digests, split_holdout
from slidescan.train.train_config import TrainConfig
from slidescan.train.trainer import train

SMALL = {"width": 16}  # pcamnet-s with fewer channels: keeps the reproducibility runs quick


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> PatchDataset:
    return open_patch_dataset(write_toy_set(tmp_path_factory.mktemp("toy"), 30))


@pytest.fixture(scope="module")
def small_toy(tmp_path_factory: pytest.TempPathFactory) -> PatchDataset:
    return open_patch_dataset(write_toy_set(tmp_path_factory.mktemp("small"), 20, seed=1))


def _cfg(**changes: object) -> TrainConfig:
    base: dict = {
        "epochs": 1, "batch_size": 8, "workers": 0, "device": "cpu", "seed": 3, "int8": False,
        "model": "pcamnet-s",
    }  # fmt: skip
    base.update(changes)
    return TrainConfig(**base)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_weights(path).model.state_dict()


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"tensors differ: {differ[:5]}"


# ------------------------------------------------------------------------------------------------
# Learning and the card


@pytest.fixture(scope="module")
def trained(toy: PatchDataset, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run") / "model.pt"
    result = train(
        toy, out, _cfg(epochs=3, batch_size=16, int8=True, model=DEFAULT_MODEL),
        data_description="toy blobs", command="pytest",
    )  # fmt: skip
    return out, result


def test_training_stores_an_int8_engine_that_follows_float32(trained, toy: PatchDataset) -> None:
    out, _ = trained
    loaded = load_weights(out)
    assert loaded.int8_onnx is not None
    int8 = make_predictor(loaded, "cpu")
    fp32 = make_predictor(loaded, "cpu", "onnx")
    assert (int8.engine, fp32.engine) == ("onnx-int8", "onnx")
    x = torch.stack([toy[i][0] for i in range(len(toy))])
    p8 = predict_probs(int8.model, x, int8.normalizer).numpy()
    p32 = predict_probs(fp32.model, x, fp32.normalizer).numpy()
    assert np.abs(p8 - p32).mean() < 0.05
    assert roc_auc_score(np.asarray(toy.labels), p8) > 0.9


def test_learns_the_toy_problem(trained) -> None:
    out, result = trained
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["train_loss"] > history[-1]["train_loss"], history
    assert max(h["val_auc"] for h in history) > 0.9, history
    assert result.metrics["auc"] > 0.9
    assert 1 <= result.best_epoch <= 3
    assert result.weights == out and out.is_file()
    assert not resume_path(out).exists(), "the resume checkpoint is removed after a full run"


def test_card_describes_the_run(trained, toy: PatchDataset) -> None:
    out, result = trained
    card = load_weights(out).card
    assert card.model == DEFAULT_MODEL == "pcamnet-v2"
    assert 0 < card.threshold < 1
    assert card.threshold == pytest.approx(result.metrics["threshold"])
    assert len(card.mean) == 3 and len(card.std) == 3
    assert all(0 < m < 1 for m in card.mean) and all(0 < s < 1 for s in card.std)
    # Pale pink patches: red is the brightest channel, green the darkest.
    assert card.mean[0] > card.mean[2] > card.mean[1]
    assert card.metrics["epoch"] == result.best_epoch
    assert card.metrics["validation"]["auc"] == pytest.approx(result.metrics["auc"])
    training = card.training
    assert training["data"] == "toy blobs"
    assert training["command"] == "pytest"
    assert training["n_train"] + training["n_val"] == len(toy)
    assert training["n_val"] == round(0.2 * len(toy))
    assert training["config"]["epochs"] == 3 and training["config"]["seed"] == 3
    assert training["parameters"] > 0
    assert training["device"] == "cpu"
    # The held-out ids are recorded, so calibration can use exactly those patches.
    assert len(training["holdout_ids"]) == training["n_val"]
    assert set(training["holdout_ids"]) <= set(toy.ids)


def test_training_ends_calibrated_on_the_held_out_patches(trained) -> None:
    out, _ = trained
    loaded = load_weights(out)
    card = loaded.card
    assert card.seed_threshold is not None and card.extent_threshold is not None
    assert card.threshold <= card.extent_threshold <= card.seed_threshold <= 1
    # A trained model gets a high-sensitivity point too (issue 22): a seed no stricter.
    high = card.operating_points["high"]["seed_threshold"]
    assert card.extent_threshold <= high <= card.seed_threshold
    assert card.lesion_thresholds(sensitivity="high") == (high, card.extent_threshold)
    high_fp = card.operating_points["high"]["figures"]["normal_slides_positive"]
    assert card.calibration["false_positive_rate_by_tissue_cells"]["40000"] <= high_fp <= 1
    cal = card.calibration
    assert cal["holdout_patches"] == card.training["n_val"] and cal["seed_cells"] == 3
    rates = cal["false_positive_rate_by_tissue_cells"]
    assert list(rates) == ["2500", "5000", "10000", "20000", "40000"]
    assert all(0 <= r <= 1 for r in rates.values())
    # The feature reference of the out-of-distribution check, fitted on the training part.
    assert loaded.feature_reference is not None
    assert cal["feature_patch_threshold"] == pytest.approx(
        float(loaded.feature_reference["patch_threshold"])
    )
    assert loaded.feature_reference["whiten"].shape == (720, 720)


def test_calibrate_command_reads_the_held_out_patches_from_the_card(
    trained, toy: PatchDataset, small_toy: PatchDataset, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from slidescan.cli import app

    out, _ = trained
    copy = tmp_path / "model.pt"
    shutil.copy(out, copy)
    before = load_weights(copy).card
    root = str(Path(toy.paths[0]).parents[1])
    args = ["calibrate", root, "--weights", str(copy), "--no-int8", "--rate", "0.3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    after = load_weights(copy).card
    assert after.calibration["holdout_patches"] == before.training["n_val"]
    assert after.seed_threshold <= before.seed_threshold  # a looser rate: no stricter seed
    assert after.calibration["tile_threshold"] == "maximises held-out accuracy"
    held = Subset(toy, [toy.ids.index(i) for i in before.training["holdout_ids"]])
    predictor = make_predictor(load_weights(copy), "cpu", "torch")
    p = predict_dataset(predictor.model, held, predictor.normalizer, workers=0)
    normal = p[np.asarray(toy.labels)[held.indices] == 0]
    args += ["--tile-specificity", "0.6"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0
    assert "(calls 60% of held-out normal patches normal)" in result.output
    card = load_weights(copy).card
    assert card.threshold == pytest.approx(float(np.quantile(normal, 0.6)), abs=1e-4)
    assert card.calibration["tile_threshold"] == "calls 60% of held-out normal patches normal"
    assert CliRunner().invoke(app, [*args, "--high-rate", "0.455"]).exit_code == 0
    high = load_weights(copy).card.operating_points["high"]
    assert high["chosen_on"].startswith("calls 45.5% of the same simulated all-normal slides")
    assert (
        CliRunner()
        .invoke(app, [*args, "--high-rate", "0.2", "--simulated-slides", "200"])
        .exit_code
        == 0
    )
    card = load_weights(copy).card
    assert "high" not in card.operating_points  # not looser than --rate
    assert card.calibration["seed_threshold"].startswith("calls 30% of 200 simulated all-normal")
    other = str(Path(small_toy.paths[0]).parents[1])  # lacks the held-out patches
    result = CliRunner().invoke(app, ["calibrate", other, "--weights", str(copy), "--no-int8"])
    assert result.exit_code == 1 and "lacks" in result.output


def test_mean_std_are_training_channel_stats(trained, toy: PatchDataset) -> None:
    out, _ = trained
    card = load_weights(out).card
    train_idx, _ = split_holdout(len(toy), 0.2, seed=3, groups=pixel_digests(toy))
    mean, std = channel_stats(torch.utils.data.Subset(toy, train_idx.tolist()), seed=3)
    assert card.mean == pytest.approx(tuple(mean))
    assert card.std == pytest.approx(tuple(std))


# ------------------------------------------------------------------------------------------------
# Reproducibility and --resume


def test_same_seed_same_weights(small_toy: PatchDataset, tmp_path: Path) -> None:
    cfg = _cfg(model_config=SMALL)
    a = train(small_toy, tmp_path / "a.pt", cfg)
    b = train(small_toy, tmp_path / "b.pt", cfg)
    _assert_same_state(_state(tmp_path / "a.pt"), _state(tmp_path / "b.pt"))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_continues_and_matches_uninterrupted(
    small_toy: PatchDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ema: float
) -> None:
    cfg = _cfg(epochs=2, model_config=SMALL, lr=3e-3, ema=ema)  # with dropout: global RNG too
    real_save = trainer_mod.save_checkpoint
    finals: dict[str, dict[str, torch.Tensor]] = {}
    epochs_run: list[int] = []

    def recording_save(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        bound = inspect.signature(real_save).bind(*args, **kwargs).arguments
        epoch, path, model = bound["epoch"], bound["path"], bound["model"]
        epochs_run.append(epoch + 1)
        finals[str(path)] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        real_save(*args, **kwargs)
        if interrupt_after is not None and epoch + 1 == interrupt_after:
            raise Interrupted

    monkeypatch.setattr(trainer_mod, "save_checkpoint", recording_save)

    interrupt_after: int | None = None
    full = train(small_toy, tmp_path / "full.pt", cfg)
    final_full = finals[str(resume_path(tmp_path / "full.pt"))]

    out = tmp_path / "resumed.pt"
    interrupt_after = 1
    epochs_run.clear()
    with pytest.raises(Interrupted):
        train(small_toy, out, cfg)
    assert epochs_run == [1]
    assert resume_path(out).is_file(), "the interrupted run must leave its checkpoint"

    interrupt_after = None
    epochs_run.clear()
    resumed = train(small_toy, out, cfg, resume=True)
    assert epochs_run == [2], "resume must continue with epoch 2, not start again"
    assert not resume_path(out).exists()
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history == full.history
    assert resumed.best_epoch == full.best_epoch
    _assert_same_state(finals[str(resume_path(out))], final_full)
    _assert_same_state(_state(out), _state(tmp_path / "full.pt"))


def test_ema_saves_the_average_not_the_last_step(small_toy: PatchDataset, tmp_path: Path) -> None:
    out = tmp_path / "ema.pt"
    cfg = _cfg(epochs=1, model_config=SMALL, lr=3e-3, ema=0.5)
    real_save = trainer_mod.save_checkpoint
    saved: dict = {}

    def keep(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        bound = inspect.signature(real_save).bind(*args, **kwargs).arguments
        saved["raw"] = {k: v.detach().clone() for k, v in bound["model"].state_dict().items()}
        saved["ema"] = {k: v.detach().clone() for k, v in bound["ema"].module.state_dict().items()}
        real_save(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "save_checkpoint", keep)
        train(small_toy, out, cfg)
    weights = _state(out)
    _assert_same_state(weights, saved["ema"])
    conv = next(k for k in weights if k.endswith("weight") and weights[k].ndim == 4)
    assert not torch.equal(weights[conv], saved["raw"][conv]), "EMA weights equal the last step"
    with pytest.raises(SlidescanError, match="ema must be in"):
        train(small_toy, tmp_path / "bad.pt", _cfg(model_config=SMALL, ema=1.0))


def test_resume_without_checkpoint(small_toy: PatchDataset, tmp_path: Path) -> None:
    with pytest.raises(SlidescanError, match="no checkpoint"):
        train(small_toy, tmp_path / "x.pt", _cfg(model_config=SMALL), resume=True)


def test_resume_with_other_settings(
    small_toy: PatchDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "x.pt"
    stop_after_checkpoint(monkeypatch)
    with pytest.raises(Interrupted):
        train(small_toy, out, _cfg(epochs=2, model_config=SMALL))
    monkeypatch.undo()
    with pytest.raises(SlidescanError, match=r"other settings \(lr\)"):
        train(small_toy, out, _cfg(epochs=2, model_config=SMALL, lr=0.5), resume=True)


def test_checkpoint_from_before_an_option_resumes_with_its_default() -> None:
    saved = checkpoint.json_config(TrainConfig())
    del saved["ema"]  # as written before --ema existed
    assert checkpoint.changed_settings(saved, checkpoint.json_config(TrainConfig())) == []
    assert checkpoint.changed_settings(saved, checkpoint.json_config(TrainConfig(ema=0.99))) == [
        "ema"
    ]


# ------------------------------------------------------------------------------------------------
# Splits and bad data


@pytest.mark.parametrize("n, fraction", [(10, 0.2), (101, 0.2), (7, 0.5), (3, 0.01)])
def test_split_holdout(n: int, fraction: float) -> None:
    train_idx, val_idx = split_holdout(n, fraction, seed=0)
    assert len(val_idx) == max(1, round(n * fraction))
    assert len(train_idx) + len(val_idx) == n
    assert not set(train_idx) & set(val_idx)
    assert sorted({*train_idx, *val_idx}) == list(range(n))
    assert list(train_idx) == sorted(train_idx) and list(val_idx) == sorted(val_idx)
    again = split_holdout(n, fraction, seed=0)
    assert np.array_equal(again[0], train_idx) and np.array_equal(again[1], val_idx)


def test_split_holdout_keeps_groups_together() -> None:
    groups = np.array([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9, 9])
    for seed in range(10):
        train_idx, val_idx = split_holdout(len(groups), 0.3, seed=seed, groups=groups)
        assert not set(groups[train_idx]) & set(groups[val_idx])
        assert len(train_idx) + len(val_idx) == len(groups)
        assert len(set(groups[val_idx])) == 3  # 30 % of the 10 groups


def test_pixel_digests_find_repeated_patches(tmp_path: Path) -> None:
    root = write_toy_set(tmp_path / "dup", 4)
    first = next((root / "0").iterdir())
    (root / "0" / "copy.png").write_bytes(first.read_bytes())
    data = open_patch_dataset(root)
    digests = pixel_digests(data)
    assert len(digests) == len(data) == 9 and len(set(digests)) == 8
    names = [Path(str(p)).name for p in data.paths]  # type: ignore[attr-defined]
    assert digests[names.index("copy.png")] == digests[names.index(first.name)]


def test_split_holdout_depends_on_seed() -> None:
    assert not np.array_equal(split_holdout(100, 0.2, 0)[1], split_holdout(100, 0.2, 1)[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_holdout_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(SlidescanError, match="between 0 and 1"):
        split_holdout(10, fraction, seed=0)


def test_one_class_is_an_error(tmp_path: Path) -> None:
    data = open_patch_dataset(write_toy_set(tmp_path / "only0", 6, classes=(0,)))
    with pytest.raises(SlidescanError, match="both classes"):
        train(data, tmp_path / "x.pt", _cfg(model_config=SMALL))
    assert not (tmp_path / "x.pt").exists()


def test_one_class_validation_set_is_an_error(small_toy: PatchDataset, tmp_path: Path) -> None:
    val = open_patch_dataset(write_toy_set(tmp_path / "val1", 4, classes=(1,)))
    with pytest.raises(SlidescanError, match="validation data needs"):
        train(small_toy, tmp_path / "x.pt", _cfg(model_config=SMALL), val_data=val)


def test_separate_validation_set(small_toy: PatchDataset, tmp_path: Path) -> None:
    val = open_patch_dataset(write_toy_set(tmp_path / "val", 4, seed=9))
    result = train(small_toy, tmp_path / "x.pt", _cfg(model_config=SMALL), val_data=val)
    card = load_weights(tmp_path / "x.pt").card
    assert card.training["n_train"] == len(small_toy)
    assert card.training["n_val"] == len(val)
    assert result.metrics["n"] == len(val)
