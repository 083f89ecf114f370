"""Train a patch classifier: labelled patches in, a slidescan weights file (with its card) out."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from slidescan.engine.augment import augment_batch
from slidescan.engine.device import autocast, pin_memory
from slidescan.engine.inference import Normalizer, predict_dataset, prepare_model
from slidescan.engine.stain_norm import FIT_PATCHES, fit_stain_reference, sample_patches
from slidescan.engine.weights import LoadedModel, ModelCard, load_weights, save_weights
from slidescan.errors import SlidescanError, one_line
from slidescan.io.patches.dataset import PatchDataset
from slidescan.models import count_parameters, create_model
from slidescan.progress import progress
from slidescan.train.checkpoint import (
    init_record,
    json_config,
    load_checkpoint,
    resume_path,
    save_checkpoint,
)
from slidescan.train.data_split import (
    HeldOut,
    channel_stats,
    dataset_size,
    hold_out,
    recorded_holdout_ids,
)
from slidescan.train.distill import SoftTargets, check_distill_settings, teacher_probabilities
from slidescan.train.distributed import (
    DistContext,
    barrier,
    broadcast_buffers,
    gather_shards,
    init_distributed,
    shard_indices,
    shutdown,
    sum_across,
)
from slidescan.train.metrics import best_threshold, binary_metrics
from slidescan.train.slide_patches import normalised
from slidescan.train.train_config import TrainConfig


@dataclass
class TrainResult:
    """Where the weights went and how the best epoch did on validation."""

    weights: Path
    best_epoch: int
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def _lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "constant":
        return 1.0
    warmup = min(100, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(
    train_data: PatchDataset,
    out: Path,
    cfg: TrainConfig,
    *,
    val_data: PatchDataset | None = None,
    resume: bool = False,
    data_description: str = "",
    command: str = "",
) -> TrainResult:
    """Train ``cfg.model`` on ``train_data``; keep the best-AUC epoch's weights at ``out``."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    ctx = init_distributed(cfg.device)
    try:
        return _train(
            ctx, train_data, out, cfg, val_data=val_data, resume=resume,
            data_description=data_description, command=command, start=start,
        )  # fmt: skip
    finally:
        shutdown(ctx)


def _train(
    ctx: DistContext,
    train_data: PatchDataset,
    out: Path,
    cfg: TrainConfig,
    *,
    val_data: PatchDataset | None,
    resume: bool,
    data_description: str,
    command: str,
    start: float,
) -> TrainResult:
    _check_settings(cfg, ctx, separate_validation=val_data is not None)
    start_from = load_weights(Path(cfg.init)) if cfg.init else None
    reference = _stain_reference(start_from, train_data, cfg.seed)
    train_data = normalised(train_data, cfg.stain_norm, reference, cfg.seed)
    if val_data is not None:
        val_data = normalised(val_data, cfg.stain_norm, reference, cfg.seed)
    split = hold_out(
        train_data, val_data, cfg.val_fraction, cfg.seed, same_as=_held_out_by(cfg.holdout_from)
    )
    model, card = _start_model(start_from, split.train, cfg, ctx.device)
    card.stain_reference, card.stain_norm = reference, cfg.stain_norm
    run = _Run(ctx, cfg, model, card, dataset_size(split.train))
    ckpt_path = resume_path(out)
    if resume:
        progress = load_checkpoint(ckpt_path, cfg, ctx.device, run.state_parts())
        run.first_epoch = progress["epoch"] + 1
        run.best_auc, run.best_epoch = progress["best_auc"], progress["best_epoch"]
        run.history, run.best_metrics = progress["history"], progress["best_metrics"]
    fit_data = _fit_targets(split, cfg, ctx)
    val_shard = shard_indices(dataset_size(split.val), ctx)
    training_record = {
        "data": data_description, "command": command, "config": json_config(cfg),
        "n_train": dataset_size(split.train), "n_val": dataset_size(split.val),
        "holdout_ids": split.holdout_ids,  # the held-out part of DATA (calibration uses it)
        "holdout_slides": sorted({i.split("@")[0] for i in split.holdout_ids if "@" in i}),
        "init": init_record(cfg.init), "parameters": count_parameters(model),
        "device": str(ctx.device), "processes": ctx.world_size,
    }  # fmt: skip
    for epoch in range(run.first_epoch, cfg.epochs):
        loss, accuracy = run.train_epoch(fit_data, epoch)
        scored = run.scored_model()
        local = predict_dataset(
            scored, Subset(split.val, val_shard.tolist()), run.normalizer,
            workers=cfg.workers, desc="validate", progress=ctx.is_main,
        )  # fmt: skip
        probs = gather_shards(local, dataset_size(split.val), ctx)
        if run.record_epoch(epoch, loss, accuracy, split.val_labels, probs):
            card.training = training_record
            if ctx.is_main:
                save_weights(out, scored, card)
        if ctx.is_main:
            save_checkpoint(
                ckpt_path, run.model, run.ema, run.optimizer, run.scheduler, run.scaler, cfg,
                epoch, run.best_auc, run.best_epoch, run.history, run.best_metrics,
            )  # fmt: skip
        barrier(ctx)
    if ctx.is_main and run.best_epoch > 0:
        _calibrate(out, split.train, split.val, int8=cfg.int8, seed=cfg.seed)
    if ctx.is_main and ckpt_path.exists():
        ckpt_path.unlink()
    return TrainResult(
        out, run.best_epoch, run.best_metrics, run.history, time.perf_counter() - start
    )


def _held_out_by(path: str) -> list[str]:
    """The patch ids the weights file at ``path`` held out ([] without one)."""
    if not path:
        return []
    return recorded_holdout_ids(load_weights(Path(path)).card.training, Path(path).name)


def _check_settings(cfg: TrainConfig, ctx: DistContext, *, separate_validation: bool) -> None:
    if cfg.batch_size % ctx.world_size:
        raise SlidescanError(
            f"batch_size {cfg.batch_size} must divide evenly over {ctx.world_size} processes",
            param="batch_size",
        )
    if not 0.0 <= cfg.ema < 1.0:
        raise SlidescanError(f"ema must be in [0, 1), got {cfg.ema}", param="ema")
    if cfg.holdout_from and separate_validation:
        raise SlidescanError("give --holdout-from or --val, not both", param="holdout_from")
    if cfg.teachers:
        check_distill_settings(cfg.distill_weight, separate_validation=separate_validation)


def _stain_reference(start_from: LoadedModel | None, data: Dataset, seed: int) -> dict[str, Any]:
    """The colours to normalise onto: the starting model's, else this training data's."""
    if start_from is not None and start_from.card.stain_reference:
        return start_from.card.stain_reference
    return fit_stain_reference(
        sample_patches(lambda i: data[i][0].permute(1, 2, 0).numpy(),
                       dataset_size(data), 4 * FIT_PATCHES, seed)
    )  # fmt: skip


def _start_model(
    start_from: LoadedModel | None, train_data: Dataset, cfg: TrainConfig, device: torch.device
) -> tuple[nn.Module, ModelCard]:
    """The model to train and its card: a fine-tuned start keeps its input normalisation (its
    weights were learnt under it); a new model normalises by its training data's statistics."""
    if start_from is not None:
        card = ModelCard(
            model=start_from.card.model, config=dict(start_from.card.config),
            mean=start_from.card.mean, std=start_from.card.std,
        )  # fmt: skip
        return prepare_model(start_from.model, device), card
    mean, std = channel_stats(train_data, seed=cfg.seed)
    card = ModelCard(model=cfg.model, config=dict(cfg.model_config), mean=mean, std=std)
    return prepare_model(create_model(cfg.model, **cfg.model_config), device), card


def _fit_targets(split: HeldOut, cfg: TrainConfig, ctx: DistContext) -> Dataset:
    """What the model fits: the labels, or with teachers a mix of label and their probability
    (each process scores its share of the patches; all of them train on all the targets)."""
    if not cfg.teachers:
        return split.train
    n = dataset_size(split.train)
    shard = shard_indices(n, ctx)
    local = teacher_probabilities(
        [Path(t) for t in cfg.teachers], Subset(split.train, shard.tolist()),
        holdout_ids=split.holdout_ids, device=str(ctx.device), workers=cfg.workers,
        progress=ctx.is_main,
    )  # fmt: skip
    return SoftTargets(split.train, gather_shards(local, n, ctx), cfg.distill_weight)


class _Run:
    """One training run's moving parts: model, optimiser, schedule, EMA and the best epoch."""

    def __init__(
        self, ctx: DistContext, cfg: TrainConfig, model: nn.Module, card: ModelCard, n_train: int
    ) -> None:
        self.ctx, self.cfg, self.model, self.card, self.n_train = ctx, cfg, model, card, n_train
        device = ctx.device
        self.normalizer = Normalizer(card, device)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        total = max(1, n_train // cfg.batch_size) * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _lr_factor(cfg.schedule, s, total)
        )
        # The average (BatchNorm statistics included) is what gets validated and saved: it
        # smooths the last epochs' noise, which held-out AUC rewards on unlike slides.
        self.ema = (
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
            if cfg.ema
            else None
        )
        self.train_model: nn.Module = model
        if ctx.distributed:
            if device.type == "cuda":
                self.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.train_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.first_epoch, self.best_auc, self.best_epoch = 0, -1.0, -1
        self.history: list[dict[str, float]] = []
        self.best_metrics: dict[str, Any] = {}

    def state_parts(self) -> dict[str, Any]:
        """What a checkpoint restores, by its key in the checkpoint."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.scaler, "ema": self.ema}  # fmt: skip

    def scored_model(self) -> nn.Module:
        """The model to validate and save (rank 0's on every rank, in eval mode)."""
        if self.ctx.distributed:
            # Without SyncBatchNorm (CPU) each rank's running statistics drifted apart.
            broadcast_buffers(self.model, self.ctx)
        scored = self.model if self.ema is None else self.ema.module
        return scored.eval()

    def train_epoch(self, fit_data: Dataset, epoch: int) -> tuple[float, float]:
        """One pass over ``fit_data``; the mean loss and accuracy over all processes."""
        ctx, cfg, device = self.ctx, self.cfg, self.ctx.device
        # Per-epoch generators make shuffling and augmentation reproducible, even after
        # --resume. Each rank augments and drops out differently, but reproducibly.
        rank_seed = cfg.seed * 1000 + epoch + 7919 * ctx.rank
        shuffle_gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        aug_gen = torch.Generator().manual_seed(rank_seed + 500)
        torch.manual_seed(rank_seed + 250)  # dropout draws from the global RNG
        sampler: DistributedSampler | None = None
        if ctx.distributed:
            sampler = DistributedSampler(
                fit_data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                seed=cfg.seed, drop_last=True,
            )  # fmt: skip
            sampler.set_epoch(epoch)
        loader = DataLoader(
            fit_data, batch_size=cfg.batch_size // ctx.world_size, shuffle=sampler is None,
            sampler=sampler, drop_last=self.n_train > cfg.batch_size, num_workers=cfg.workers,
            pin_memory=pin_memory(device), generator=shuffle_gen if sampler is None else None,
            worker_init_fn=_seed_worker,
        )  # fmt: skip
        augment = (
            partial(augment_batch, level=cfg.augment, generator=aug_gen)
            if cfg.augment != "none"
            else None
        )
        self.train_model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        bar = progress(
            loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
            show=ctx.is_main,
        )  # fmt: skip
        for images, labels in bar:
            x = self.normalizer(images, augment=augment)
            y = labels.to(device, non_blocking=True).float()
            with autocast(device):
                logits = self.train_model(x)
                loss = self.loss_fn(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            seen += len(labels)
            loss_sum += float(loss.detach()) * len(labels)
            # Distilled targets stay on their label's side of 0.5 (weight ≤ 0.5): same count.
            correct += int(((logits.detach() > 0) == (y >= 0.5)).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        seen_f, loss_sum, correct_f = sum_across([seen, loss_sum, correct], ctx)
        return loss_sum / max(seen_f, 1), correct_f / max(seen_f, 1)

    loss_fn = nn.BCEWithLogitsLoss()

    def record_epoch(
        self, epoch: int, loss: float, accuracy: float, labels: np.ndarray, probs: np.ndarray
    ) -> bool:
        """Log the epoch's validation; True when it is the best so far (the card is updated)."""
        threshold = best_threshold(labels, probs)
        m = binary_metrics(labels, probs, threshold=threshold, n_bootstrap=200)
        self.history.append({
            "epoch": epoch + 1, "train_loss": loss, "train_accuracy": accuracy,
            "val_auc": m.auc, "val_accuracy": m.accuracy, "val_nll": m.nll,
            "threshold": threshold,
        })  # fmt: skip
        if self.ctx.is_main:
            tqdm.write(
                f"epoch {epoch + 1}/{self.cfg.epochs}: loss {loss:.4f} train acc {accuracy:.3f}"
                f" | val AUC {m.auc:.4f} acc {m.accuracy:.3f} (threshold {threshold:.2f})"
            )
        if not m.auc > self.best_auc:
            return False
        self.best_auc, self.best_epoch = m.auc, epoch + 1
        self.best_metrics = m.to_dict()
        self.card.threshold = float(threshold)
        self.card.metrics = {"validation": self.best_metrics, "epoch": self.best_epoch}
        return True


def _calibrate(out: Path, train_data: Dataset, val_data: Dataset, *, int8: bool, seed: int) -> None:
    """Thresholds, distribution reference and int8 engine from the held-out patches."""
    from slidescan.train.calibration import calibrate_weights

    try:
        result = calibrate_weights(out, train_data, val_data, int8=int8, seed=seed)
    except Exception as exc:  # the weights are written and good; calibrate them again later
        tqdm.write(f"calibration failed ({one_line(exc)}); run `slidescan calibrate`")
        return
    tqdm.write(result.describe())
