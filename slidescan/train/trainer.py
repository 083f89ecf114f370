"""Train a patch classifier: labelled patches in, a slidescan weights file (with its card) out."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
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
from slidescan.engine.weights import ModelCard, file_sha256, load_weights, save_weights
from slidescan.errors import SlidescanError, one_line
from slidescan.io.atomic import atomic_write
from slidescan.models import DEFAULT_MODEL, count_parameters, create_model
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


@dataclass
class TrainConfig:
    """Training settings; defaults follow the tutorial where it spoke (Adam, BCE, 10×100, 20%).

    The optimiser is AdamW: with ``weight_decay=0`` it is exactly the tutorial's Adam.

    A new setting's default must reproduce what training did before it existed: ``--resume``
    treats a checkpoint that predates a setting as written with its default.
    """

    model: str = DEFAULT_MODEL
    model_config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    val_fraction: float = 0.2
    augment: str = "strong"  # none, basic or strong (see slidescan.engine.augment)
    ema: float = 0.0  # per-step decay of an exponential moving average of the weights; 0 = off
    teachers: list[str] = field(default_factory=list)  # weights files to distil from; [] = off
    init: str = ""  # weights file to fine-tune from (its model, config and normalisation); "" = off
    stain_norm: str = "none"  # engine.stain_norm: map each slide / patch collection's colours
    distill_weight: float = 0.5  # the teachers' share of each target, at most the label's
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    int8: bool = True  # also store an int8 CPU engine (see slidescan.engine.quantize)


@dataclass
class TrainResult:
    """Where the weights went and how the best epoch did on validation."""

    weights: Path
    best_epoch: int
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float


def split_holdout(
    n: int,
    fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (train, val) index split holding out about ``fraction`` of ``n`` items.

    Items sharing a ``groups`` key (the same pixels: PatchCamelyon repeats patches; the same
    slide) land on the same side, so no held-out patch was also trained on. With ``labels``,
    the first of a seeded series of splits whose two sides both hold both classes is taken
    (few slides, few of them with tumour).
    """
    if not 0 < fraction < 1:
        raise SlidescanError(f"validation fraction must be between 0 and 1, got {fraction}")
    keys = np.arange(n) if groups is None else np.unique(groups, return_inverse=True)[1]
    n_groups = int(keys.max()) + 1 if n else 0
    for attempt in range(100):
        order = np.random.default_rng(seed + 7919 * attempt).permutation(n_groups)
        held = np.zeros(n_groups, dtype=bool)
        held[order[: max(1, round(n_groups * fraction))]] = True
        is_val = held[keys]
        if labels is None or all(len(np.unique(labels[side])) >= 2 for side in (is_val, ~is_val)):
            break
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def balance_classes(index: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """``index`` with items of its rarer class repeated (seeded) until both classes are equal:
    patches sampled from slides are mostly normal; augmentation makes the repeats differ."""
    sides = [index[labels[index] == k] for k in (0, 1)]
    rare = min(sides, key=len)
    gap = abs(len(sides[0]) - len(sides[1]))
    if not len(rare) or not gap:
        return index
    extra = np.random.default_rng(seed).choice(rare, size=gap)
    return np.sort(np.concatenate([index, extra]))


def pixel_digests(dataset: Dataset) -> np.ndarray:
    """One digest per item of its decoded pixels: equal patches get equal keys."""
    import hashlib

    size = len(dataset)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=256, num_workers=2)
    out: list[str] = []
    for images, _ in tqdm(loader, desc="find repeated patches", unit="batch", leave=False):
        out += [hashlib.blake2b(im.numpy().tobytes(), digest_size=12).hexdigest() for im in images]
    assert len(out) == size
    return np.asarray(out)


def channel_stats(
    dataset: Dataset, n: int = 2000, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of RGB in [0, 1] over a seeded sample of ``n`` patches."""
    size = len(dataset)  # type: ignore[arg-type]
    idx = np.random.default_rng(seed).choice(size, size=min(n, size), replace=False)
    pixels = torch.stack([dataset[int(i)][0] for i in idx]).float().div_(255.0)
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def _labels_of(dataset: Any, indices: np.ndarray | None) -> np.ndarray:
    labels = np.asarray(dataset.labels)
    return labels if indices is None else labels[indices]


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


def resume_path(out: Path) -> Path:
    """The checkpoint written beside ``out`` after every epoch, for ``--resume``."""
    return out.with_name(out.name + ".resume")


def train(
    train_data: Dataset,
    out: Path,
    cfg: TrainConfig,
    *,
    val_data: Dataset | None = None,
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
    train_data: Dataset,
    out: Path,
    cfg: TrainConfig,
    *,
    val_data: Dataset | None,
    resume: bool,
    data_description: str,
    command: str,
    start: float,
) -> TrainResult:
    device = ctx.device
    if cfg.batch_size % ctx.world_size:
        raise SlidescanError(
            f"--batch-size {cfg.batch_size} must divide evenly over {ctx.world_size} processes"
        )
    if cfg.teachers:
        check_distill_settings(cfg.distill_weight, separate_validation=val_data is not None)
    start_from = load_weights(Path(cfg.init)) if cfg.init else None
    # The colours to normalise onto: the starting model's, else this training data's.
    reference = (start_from.card.stain_reference if start_from else {}) or fit_stain_reference(
        sample_patches(lambda i: train_data[i][0].permute(1, 2, 0).numpy(),
                       len(train_data), 4 * FIT_PATCHES, cfg.seed)  # type: ignore[arg-type]
    )  # fmt: skip
    train_data = normalised(train_data, cfg.stain_norm, reference, cfg.seed)  # type: ignore[arg-type]
    if val_data is not None:
        val_data = normalised(val_data, cfg.stain_norm, reference, cfg.seed)  # type: ignore[arg-type]
    holdout_ids: list[str] = []
    if val_data is None:
        n_items = len(train_data)  # type: ignore[arg-type]
        # Slides: whole slides are held out, never patches of a slide that is also trained on.
        slide_groups = getattr(train_data, "groups", None)
        groups = pixel_digests(train_data) if slide_groups is None else slide_groups
        all_labels = _labels_of(train_data, None)
        train_idx, val_idx = split_holdout(
            n_items, cfg.val_fraction, cfg.seed, groups=groups,
            labels=None if slide_groups is None else all_labels,
        )  # fmt: skip
        if slide_groups is not None:
            train_idx = balance_classes(train_idx, all_labels, cfg.seed)
        ids = getattr(train_data, "ids", None)
        if ids is not None:
            holdout_ids = [str(ids[i]) for i in val_idx]
        train_labels = _labels_of(train_data, train_idx)
        val_labels = _labels_of(train_data, val_idx)
        val_data = Subset(train_data, val_idx.tolist())
        train_data = Subset(train_data, train_idx.tolist())
    else:
        train_labels = _labels_of(train_data, None)
        val_labels = _labels_of(val_data, None)
    for name, labels in (("training", train_labels), ("validation", val_labels)):
        if len(np.unique(labels)) < 2 or labels.min() < 0:
            raise SlidescanError(f"the {name} data needs labelled examples of both classes")

    if start_from is not None:
        # Fine-tuning keeps the model's input normalisation: its weights were learnt under it.
        card = ModelCard(
            model=start_from.card.model, config=dict(start_from.card.config),
            mean=start_from.card.mean, std=start_from.card.std,
        )  # fmt: skip
        model = prepare_model(start_from.model, device)
    else:
        mean, std = channel_stats(train_data, seed=cfg.seed)
        card = ModelCard(model=cfg.model, config=dict(cfg.model_config), mean=mean, std=std)  # type: ignore[arg-type]
        model = prepare_model(create_model(cfg.model, **cfg.model_config), device)
    card.stain_reference, card.stain_norm = reference, cfg.stain_norm
    normalizer = Normalizer(card, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    steps_per_epoch = max(1, len(train_data) // cfg.batch_size)  # type: ignore[arg-type]
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(cfg.schedule, s, total_steps)
    )

    if not 0.0 <= cfg.ema < 1.0:
        raise SlidescanError(f"--ema must be in [0, 1), got {cfg.ema}")
    # The average (BatchNorm statistics included) is what gets validated and saved: it smooths
    # the last epochs' noise, which held-out AUC rewards on slides unlike the training ones.
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if cfg.ema
        else None
    )
    first_epoch, best_auc, best_epoch, history = 0, -1.0, -1, []
    best_metrics: dict[str, Any] = {}
    ckpt_path = resume_path(out)
    if resume:
        if not ckpt_path.is_file():
            raise SlidescanError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        changed = _changed_settings(ckpt["config"], _json_config(cfg))
        if changed:
            raise SlidescanError(
                f"--resume: {ckpt_path} was written with other settings ({', '.join(changed)})"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        first_epoch, best_auc, best_epoch = ckpt["epoch"] + 1, ckpt["best_auc"], ckpt["best_epoch"]
        history, best_metrics = ckpt["history"], ckpt["best_metrics"]

    fit_data: Dataset = train_data
    if cfg.teachers:
        # Each process scores its share of the patches; all of them train on all the targets.
        shard = shard_indices(len(train_data), ctx)  # type: ignore[arg-type]
        local = teacher_probabilities(
            [Path(t) for t in cfg.teachers], Subset(train_data, shard.tolist()),
            holdout_ids=holdout_ids, device=str(device), workers=cfg.workers,
            progress=ctx.is_main,
        )  # fmt: skip
        teacher_probs = gather_shards(local, len(train_data), ctx)  # type: ignore[arg-type]
        fit_data = SoftTargets(train_data, teacher_probs, cfg.distill_weight)

    n_params = count_parameters(model)
    loss_fn = nn.BCEWithLogitsLoss()
    train_model: nn.Module = model
    if ctx.distributed:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    val_shard = shard_indices(len(val_data), ctx)  # type: ignore[arg-type]
    for epoch in range(first_epoch, cfg.epochs):
        # Per-epoch generators make shuffling and augmentation reproducible, even after --resume.
        # Each rank augments and drops out differently, but reproducibly.
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
        per_rank_batch = cfg.batch_size // ctx.world_size
        loader = DataLoader(
            fit_data,
            batch_size=per_rank_batch,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=len(train_data) > cfg.batch_size,  # type: ignore[arg-type]
            num_workers=cfg.workers,
            pin_memory=pin_memory(device),
            generator=shuffle_gen if sampler is None else None,
            worker_init_fn=_seed_worker,
        )
        train_model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
            disable=not ctx.is_main,
        )  # fmt: skip
        augment = (
            partial(augment_batch, level=cfg.augment, generator=aug_gen)
            if cfg.augment != "none"
            else None
        )
        for images, labels in bar:
            x = normalizer(images, augment=augment)
            y = labels.to(device, non_blocking=True).float()
            with autocast(device):
                logits = train_model(x)
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            n = len(labels)
            seen += n
            loss_sum += float(loss.detach()) * n
            # Distilled targets stay on their label's side of 0.5 (weight ≤ 0.5): same count.
            correct += int(((logits.detach() > 0) == (y >= 0.5)).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")

        seen_f, loss_sum, correct_f = sum_across([seen, loss_sum, correct], ctx)
        seen, correct = int(seen_f), int(correct_f)
        if ctx.distributed:
            # Without SyncBatchNorm (CPU) each rank's running statistics drifted apart: validate
            # and save exactly rank 0's model on every rank.
            broadcast_buffers(model, ctx)
        scored = model if ema is None else ema.module
        scored.eval()
        local = predict_dataset(
            scored, Subset(val_data, val_shard.tolist()), normalizer, workers=cfg.workers,
            desc="validate", progress=ctx.is_main,
        )  # fmt: skip
        probs = gather_shards(local, len(val_data), ctx)  # type: ignore[arg-type]
        threshold = best_threshold(val_labels, probs)
        m = binary_metrics(val_labels, probs, threshold=threshold, n_bootstrap=200)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_auc": m.auc,
            "val_accuracy": m.accuracy,
            "val_nll": m.nll,
            "threshold": threshold,
        }
        history.append(row)
        if ctx.is_main:
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} "
                f"train acc {row['train_accuracy']:.3f} | val AUC {m.auc:.4f} "
                f"acc {m.accuracy:.3f} (threshold {threshold:.2f})"
            )
        if m.auc > best_auc:
            best_auc, best_epoch = m.auc, epoch + 1
            best_metrics = m.to_dict()
            card.threshold = float(threshold)
            card.metrics = {"validation": best_metrics, "epoch": best_epoch}
            card.training = {
                "data": data_description,
                "command": command,
                "config": _json_config(cfg),
                "n_train": len(train_data),  # type: ignore[arg-type]
                "n_val": len(val_data),  # type: ignore[arg-type]
                "holdout_ids": holdout_ids,  # the held-out part of DATA (calibration uses it)
                "holdout_slides": sorted({i.split("@")[0] for i in holdout_ids if "@" in i}),
                "init": _init_record(cfg.init),
                "parameters": n_params,
                "device": str(device),
                "processes": ctx.world_size,
            }
            if ctx.is_main:
                save_weights(out, scored, card)
        if ctx.is_main:
            _save_checkpoint(
                ckpt_path, model, ema, optimizer, scheduler, scaler, cfg, epoch, best_auc,
                best_epoch, history, best_metrics,
            )  # fmt: skip
        barrier(ctx)

    if ctx.is_main and best_epoch > 0:
        _calibrate(out, train_data, val_data, int8=cfg.int8, seed=cfg.seed)
    if ctx.is_main and ckpt_path.exists():
        ckpt_path.unlink()
    return TrainResult(out, best_epoch, best_metrics, history, time.perf_counter() - start)


def _calibrate(out: Path, train_data: Dataset, val_data: Dataset, *, int8: bool, seed: int) -> None:
    """Thresholds, distribution reference and int8 engine from the held-out patches."""
    from slidescan.train.calibration import calibrate_weights

    try:
        result = calibrate_weights(out, train_data, val_data, int8=int8, seed=seed)
    except Exception as exc:  # the weights are written and good; calibrate them again later
        tqdm.write(f"calibration failed ({one_line(exc)}); run `slidescan calibrate`")
        return
    tqdm.write(result.describe())


def _init_record(init: str) -> dict[str, Any]:
    """What a fine-tuned model started from (empty when trained from scratch)."""
    if not init:
        return {}
    card = load_weights(Path(init)).card
    return {"file": Path(init).name, "sha256": file_sha256(Path(init)), "model": card.model,
            "data": card.training.get("data", "")}  # fmt: skip


def _json_config(cfg: TrainConfig) -> dict[str, Any]:
    raw = asdict(cfg)
    raw.pop("workers")  # how many loader processes ran changes nothing about the result
    raw.pop("device")
    raw.pop("int8")  # added after training, never changes the float32 weights
    if cfg.init:  # so does a start retrained in place
        raw["init"] = file_sha256(Path(cfg.init))
    else:
        raw.pop("init")
    if cfg.teachers:  # a teacher retrained in place changes the targets: --resume must notice
        raw["teacher_sha256"] = [file_sha256(Path(t)) for t in cfg.teachers]
    else:
        raw.pop("distill_weight")
    return raw


def _changed_settings(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Names of settings that differ between a checkpoint and this run.

    A setting the checkpoint predates counts as its default, so checkpoints written before a
    new option was added still resume when the option is left alone.
    """
    defaults = _json_config(TrainConfig())
    names = sorted(set(saved) | set(wanted))
    return [n for n in names if saved.get(n, defaults.get(n)) != wanted.get(n, defaults.get(n))]


def _save_checkpoint(
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
        "config": _json_config(cfg),
        "epoch": epoch,
        "best_auc": best_auc,
        "best_epoch": best_epoch,
        "history": history,
        "best_metrics": best_metrics,
    }
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
