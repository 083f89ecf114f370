"""The trainer's memory: the ``--resume`` checkpoint beside the weights, the settings it must
match, and what a fine-tuned model started from."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from slidescan.engine.weights import file_sha256, load_weights
from slidescan.errors import SlidescanError
from slidescan.io.atomic import atomic_write
from slidescan.train.train_config import TrainConfig


def resume_path(out: Path) -> Path:
    """The checkpoint written beside ``out`` after every epoch, for ``--resume``."""
    return out.with_name(out.name + ".resume")


def init_record(init: str) -> dict[str, Any]:
    """What a fine-tuned model started from (empty when trained from scratch)."""
    if not init:
        return {}
    card = load_weights(Path(init)).card
    return {"file": Path(init).name, "sha256": file_sha256(Path(init)), "model": card.model,
            "data": card.training.get("data", "")}  # fmt: skip


def json_config(cfg: TrainConfig) -> dict[str, Any]:
    raw = asdict(cfg)
    raw.pop("workers")  # how many loader processes ran changes nothing about the result
    raw.pop("device")
    raw.pop("int8")  # added after training, never changes the float32 weights
    if cfg.init:  # so does a start retrained in place
        raw["init"] = file_sha256(Path(cfg.init))
    else:
        raw.pop("init")
    if cfg.holdout_from:  # the file, not its path; any change to it (even its card) is a change
        raw["holdout_from"] = file_sha256(Path(cfg.holdout_from))
        raw.pop("val_fraction")  # the file's ids decide the split
    else:
        raw.pop("holdout_from")
    if cfg.teachers:  # a teacher retrained in place changes the targets: --resume must notice
        raw["teacher_sha256"] = [file_sha256(Path(t)) for t in cfg.teachers]
    else:
        raw.pop("distill_weight")
    return raw


def changed_settings(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Names of settings that differ between a checkpoint and this run.

    A setting the checkpoint predates counts as its default, so checkpoints written before a
    new option was added still resume when the option is left alone.
    """
    defaults = json_config(TrainConfig())
    names = sorted(set(saved) | set(wanted))
    return [n for n in names if saved.get(n, defaults.get(n)) != wanted.get(n, defaults.get(n))]


def save_checkpoint(
    path: Path,
    model: nn.Module,
    ema: AveragedModel | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    epoch: int,
    best_auc: float,
    best_epoch: int,
    history: list[dict[str, float]],
    best_metrics: dict[str, Any],
) -> None:
    state = {
        "model": model.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "config": json_config(cfg),
        "epoch": epoch,
        "best_auc": best_auc,
        "best_epoch": best_epoch,
        "history": history,
        "best_metrics": best_metrics,
    }
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: Path, cfg: TrainConfig, device: torch.device, parts: dict[str, Any]
) -> dict[str, Any]:
    """Restore ``parts`` (model, ema, optimizer, scheduler, scaler: anything with
    ``load_state_dict``; ``None`` skipped) from the checkpoint at ``path`` and return its
    progress (epoch, best_auc, best_epoch, history, best_metrics)."""
    if not path.is_file():
        raise SlidescanError(f"cannot resume: no checkpoint at {path}", param="resume")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    changed = changed_settings(ckpt["config"], json_config(cfg))
    if changed:
        raise SlidescanError(
            f"cannot resume: {path} was written with other settings ({', '.join(changed)})",
            param="resume",
        )
    for name, part in parts.items():
        if part is not None:
            part.load_state_dict(ckpt[name])
    return {k: ckpt[k] for k in ("epoch", "best_auc", "best_epoch", "history", "best_metrics")}
