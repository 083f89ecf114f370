"""Distillation: soft targets mix label and teachers; leaky teachers are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from patch_fixtures import write_toy_set
from train_helpers import Interrupted, stop_after_checkpoint

from slidescan.engine.inference import make_predictor, predict_dataset
from slidescan.engine.weights import file_sha256, load_weights
from slidescan.errors import SlidescanError
from slidescan.io.patches import ConcatPatchDataset, PatchDataset, open_patch_dataset
from slidescan.train import checkpoint
from slidescan.train.distill import SoftTargets, teacher_probabilities
from slidescan.train.train_config import TrainConfig
from slidescan.train.trainer import train

SMALL = {"width": 16}


def _cfg(**changes: object) -> TrainConfig:
    base: dict = {
        "epochs": 1, "batch_size": 8, "workers": 0, "device": "cpu", "seed": 3, "int8": False,
        "model": "pcamnet-s", "model_config": SMALL, "lr": 3e-3,
    }  # fmt: skip
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> PatchDataset:
    return open_patch_dataset(write_toy_set(tmp_path_factory.mktemp("toy"), 20, seed=1))


@pytest.fixture(scope="module")
def teachers(toy: PatchDataset, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("teachers")
    paths = [folder / "a.pt", folder / "b.pt"]
    train(toy, paths[0], _cfg())
    train(toy, paths[1], _cfg(lr=1e-2, augment="basic"))
    return paths


def test_soft_targets_mix_label_and_teacher(toy: PatchDataset) -> None:
    probs = np.linspace(0.0, 1.0, len(toy))
    soft = SoftTargets(toy, probs, 0.25)
    assert len(soft) == len(toy)
    for i in (0, 7, len(toy) - 1):
        image, target = soft[i]
        expected_image, label = toy[i]
        assert torch.equal(image, expected_image)
        assert float(target) == pytest.approx(0.75 * float(label) + 0.25 * probs[i], abs=1e-6)
    with pytest.raises(ValueError):
        SoftTargets(toy, probs[:-1], 0.5)


def test_teacher_probability_is_the_mean_logit(toy: PatchDataset, teachers: list[Path]) -> None:
    singles = []
    for path in teachers:
        predictor = make_predictor(load_weights(path), "cpu", "torch")
        singles.append(predict_dataset(predictor.model, toy, predictor.normalizer, workers=0))
    p = np.clip(np.stack(singles).astype(np.float64), 1e-6, 1 - 1e-6)
    expected = 1 / (1 + np.exp(-np.log(p / (1 - p)).mean(axis=0)))
    held = load_weights(teachers[0]).card.training["holdout_ids"]
    got = teacher_probabilities(teachers, toy, holdout_ids=held, device="cpu", workers=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(singles[0], singles[1], atol=1e-3), "teachers should differ"


def test_student_trains_on_the_soft_targets(
    toy: PatchDataset, teachers: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.Tensor] = []
    real_loss = torch.nn.BCEWithLogitsLoss.forward

    def spy(self, logits, target):  # noqa: ANN001, ANN202
        seen.append(target.detach().clone())
        return real_loss(self, logits, target)

    monkeypatch.setattr(torch.nn.BCEWithLogitsLoss, "forward", spy)
    out = tmp_path / "student.pt"
    train(toy, out, _cfg(teachers=[str(t) for t in teachers], distill_weight=0.5))
    targets = torch.cat(seen)
    assert ((targets > 0.01) & (targets < 0.99)).float().mean() > 0.9, "targets are not soft"
    config = load_weights(out).card.training["config"]
    assert config["teachers"] == [str(t) for t in teachers]
    assert config["teacher_sha256"] == [file_sha256(t) for t in teachers]
    assert config["distill_weight"] == 0.5


def test_teacher_that_trained_on_held_out_patches_is_refused(
    toy: PatchDataset, teachers: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(SlidescanError, match=r"teacher a\.pt did not hold out \d+ of the patches"):
        train(toy, tmp_path / "s.pt", _cfg(seed=4, teachers=[str(teachers[0])]))


def test_teacher_without_held_out_record_is_refused(
    toy: PatchDataset, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = open_patch_dataset(write_toy_set(tmp_path_factory.mktemp("other"), 10, seed=2))
    teacher = tmp_path / "t.pt"
    train(toy, teacher, _cfg(), val_data=other)  # held out nothing of toy: trained on all of it
    with pytest.raises(SlidescanError, match="records no held-out patches"):
        train(toy, tmp_path / "s.pt", _cfg(teachers=[str(teacher)]))


def test_teachers_need_a_held_out_split_not_a_separate_validation_set(
    toy: PatchDataset, teachers: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(SlidescanError, match="not with separate validation data"):
        train(toy, tmp_path / "s.pt", _cfg(teachers=[str(teachers[0])]), val_data=toy)
    with pytest.raises(SlidescanError, match="no ids"):
        teacher_probabilities(teachers, toy, holdout_ids=[], device="cpu", workers=0)


@pytest.mark.parametrize("weight", [0.0, 0.6, 1.0])
def test_distill_weight_is_at_most_the_labels_share(
    toy: PatchDataset, teachers: list[Path], tmp_path: Path, weight: float
) -> None:
    with pytest.raises(SlidescanError, match="distill_weight must be in"):
        train(toy, tmp_path / "s.pt", _cfg(teachers=[str(teachers[0])], distill_weight=weight))
    assert not (tmp_path / "s.pt").exists()


def test_train_accuracy_counts_against_the_labels(toy: PatchDataset, teachers: list[Path]) -> None:
    # The most a teacher can pull a target is 0.5 of the way, from a clipped probability.
    probs = np.where(np.asarray(toy.labels) == 1, 1e-6, 1 - 1e-6)  # teachers wrong everywhere
    soft = SoftTargets(toy, probs, 0.5)
    for i in range(len(toy)):
        assert (float(soft[i][1]) >= 0.5) == bool(toy.labels[i])


def test_resume_notices_a_teacher_retrained_in_place(
    toy: PatchDataset, teachers: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = tmp_path / "t.pt"
    shutil.copy(teachers[0], teacher)
    out = tmp_path / "s.pt"
    cfg = _cfg(epochs=2, teachers=[str(teacher)])
    stop_after_checkpoint(monkeypatch)
    with pytest.raises(Interrupted):
        train(toy, out, cfg)
    monkeypatch.undo()
    shutil.copy(teachers[1], teacher)  # "retrained" under the same name
    with pytest.raises(SlidescanError, match=r"other settings \(teacher_sha256\)"):
        train(toy, out, cfg, resume=True)
    shutil.copy(teachers[0], teacher)
    result = train(toy, out, cfg, resume=True)  # the same teacher: resumes and finishes
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_checkpoint_from_before_distillation_resumes() -> None:
    saved = checkpoint.json_config(TrainConfig())
    assert "teachers" in saved and "distill_weight" not in saved  # recorded only when distilling
    saved.pop("teachers")  # as written before --teacher existed
    assert checkpoint.changed_settings(saved, checkpoint.json_config(TrainConfig())) == []


def test_cli_refuses_a_distill_weight_without_teachers(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slidescan.cli import app

    result = CliRunner().invoke(app, ["train", str(tmp_path), "--distill-weight", "0.3"])
    assert result.exit_code == 1 and "--distill-weight needs --teacher" in result.output


@pytest.fixture(scope="module")
def added(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New patches, named unlike ``toy``'s."""
    root = write_toy_set(tmp_path_factory.mktemp("added"), 6, seed=5)
    for png in root.glob("*/*.png"):
        png.rename(png.with_name("new_" + png.name))
    return root


def test_holdout_from_keeps_an_earlier_runs_held_out_patches_as_data_is_added(
    toy: PatchDataset, teachers: list[Path], added: Path, tmp_path: Path
) -> None:
    held = load_weights(teachers[0]).card.training["holdout_ids"]
    more = ConcatPatchDataset([toy, open_patch_dataset(added)])
    out = tmp_path / "s.pt"
    cfg = _cfg(teachers=[str(teachers[0])], holdout_from=str(teachers[0]))
    train(more, out, cfg)  # distilling from a teacher that held out these patches is allowed
    training = load_weights(out).card.training
    assert sorted(training["holdout_ids"]) == sorted(held)
    assert training["n_train"] == len(more) - len(held)
    assert training["config"]["holdout_from"] == file_sha256(teachers[0])
    with pytest.raises(SlidescanError, match="did not hold out"):  # a fresh split would leak
        train(more, tmp_path / "leaky.pt", _cfg(teachers=[str(teachers[0])]))


def test_holdout_from_drops_added_repeats_of_held_out_patches(
    toy: PatchDataset, teachers: list[Path], added: Path, tmp_path: Path
) -> None:
    held = load_weights(teachers[0]).card.training["holdout_ids"]
    source = next(p for p in toy.paths if Path(p).stem == held[0])
    copy = tmp_path / "extra" / "1"
    copy.mkdir(parents=True)
    shutil.copy(source, copy / "repeat.png")
    shutil.copy(next(added.glob("0/*.png")), tmp_path / "extra" / "1" / "other.png")
    more = ConcatPatchDataset([toy, open_patch_dataset(tmp_path / "extra")])
    out = tmp_path / "s.pt"
    train(more, out, _cfg(holdout_from=str(teachers[0])))
    training = load_weights(out).card.training
    assert training["n_train"] == len(more) - len(held) - 1  # the repeat trains on neither side
    assert "repeat" not in training["holdout_ids"]


def test_holdout_from_needs_every_held_out_patch(
    teachers: list[Path], added: Path, tmp_path: Path
) -> None:
    n = len(load_weights(teachers[0]).card.training["holdout_ids"])
    with pytest.raises(SlidescanError, match=f"lacks {n} of the {n} patches to hold out"):
        train(open_patch_dataset(added), tmp_path / "s.pt", _cfg(holdout_from=str(teachers[0])))
    assert not (tmp_path / "s.pt").exists()


def test_holdout_from_refuses_val_data_repeated_ids_and_a_card_without_a_split(
    toy: PatchDataset,
    teachers: list[Path],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cfg = _cfg(holdout_from=str(teachers[0]))
    with pytest.raises(SlidescanError, match="--holdout-from or --val, not both"):
        train(toy, tmp_path / "s.pt", cfg, val_data=toy)
    with pytest.raises(SlidescanError, match=r"patch ids to hold out occur more than once"):
        train(ConcatPatchDataset([toy, toy]), tmp_path / "s.pt", cfg)  # a folder given twice
    other = open_patch_dataset(write_toy_set(tmp_path_factory.mktemp("o"), 10, seed=2))
    no_split = tmp_path / "no-split.pt"
    train(toy, no_split, _cfg(), val_data=other)  # held out nothing of toy
    with pytest.raises(SlidescanError, match="no-split.pt: the model card lists no held-out"):
        train(toy, tmp_path / "s.pt", _cfg(holdout_from=str(no_split)))
    assert not (tmp_path / "s.pt").exists()


def test_resume_key_of_holdout_from_is_the_file_not_the_fraction(teachers: list[Path]) -> None:
    with_file = checkpoint.json_config(_cfg(holdout_from=str(teachers[0])))
    assert with_file["holdout_from"] == file_sha256(teachers[0])
    assert "val_fraction" not in with_file  # the file's ids decide the split
    assert "holdout_from" not in checkpoint.json_config(_cfg())  # older checkpoints resume
