"""Run the model over a slide's tile dataset: every runner yields ``(probabilities, cells)``.

Where the model runs is decided here, once, not inside the scan loop:

* ``main``: DataLoader workers read tiles and join them into batches in shared memory; the main
  process owns the model (the GPU way, and ``--workers 0``).
* ``workers``: each DataLoader worker reads its blocks *and* scores them with its own
  single-threaded copy of the model, so only probabilities cross between processes (the fast CPU
  way: see ``engine/cell_scoring.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from slidescan.engine.cell_scoring import CellScorer, ScoringError
from slidescan.engine.device import pin_memory
from slidescan.errors import SlidescanError, one_line
from slidescan.scan.slide_tiles import BlockBatches, SlideTileDataset, collate_blocks

RUNNERS = ("auto", "main", "workers")


def choose_runner(runner: str, workers: int, device: torch.device) -> str:
    """``auto``: the workers score on a CPU when there are any; otherwise the main process."""
    if runner not in RUNNERS:
        raise SlidescanError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    if runner == "auto":
        return "workers" if workers > 0 and device.type == "cpu" else "main"
    if runner == "workers" and workers == 0:
        raise SlidescanError("the 'workers' runner needs 1 or more workers", param="workers")
    return runner


@dataclass(frozen=True)
class TileRunner:
    """Scores a :class:`SlideTileDataset` in batches of about ``batch_size`` patches (or one
    region at a time in dense mode)."""

    scorer: CellScorer
    where: str  # "main" or "workers" (see choose_runner)
    workers: int
    batch_size: int
    dense: bool
    device: torch.device

    def run(self, dataset: SlideTileDataset, slide_name: str) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(probabilities K, cells K×2)`` until the dataset is scored; failures become
        one-line SlidescanErrors that name the slide."""
        in_workers = self.where == "workers"
        what = "reading or scoring tiles" if in_workers else "reading tiles"
        for batch in _reading(self._loader(dataset), slide_name, what):
            if in_workers:
                yield batch
                continue
            try:
                yield self.scorer(*batch)
            except Exception as exc:  # e.g. out of GPU memory: still one line, naming the slide
                raise SlidescanError(f"{slide_name}: inference failed: {one_line(exc)}") from exc

    def _loader(self, dataset: SlideTileDataset) -> DataLoader:
        in_workers = self.where == "workers"
        batching: dict[str, Any] = (
            # Dense: an item is one region for a fully convolutional pass.
            {"batch_size": None}
            if self.dense
            else {"batch_sampler": BlockBatches(dataset, self.batch_size)}
        )
        if in_workers:
            batching["collate_fn"] = self.scorer.collate
        elif not self.dense:
            # Workers join blocks into model batches in shared memory: the main process only
            # runs the model (concatenating there cost ~15% of a CPU scan).
            batching["collate_fn"] = collate_blocks
        return DataLoader(
            dataset,
            num_workers=self.workers,
            pin_memory=pin_memory(self.device),
            # Scoring workers hand back only probabilities, so they may run further ahead; pixel
            # batches in flight live in shared memory (64 MB by default in Docker).
            prefetch_factor=(4 if in_workers else 2) if self.workers else None,
            **batching,
        )


def _reading(loader: DataLoader, slide_name: str, what: str) -> Iterator[Any]:
    """Iterate ``loader``, turning read/decode failures (often raised inside a worker, e.g. a
    truncated tile), model failures in workers and dead workers (``what`` they were doing) into
    one-line SlidescanErrors that name the slide."""
    it = iter(loader)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except SlidescanError:
            raise
        except ScoringError as exc:
            raise SlidescanError(f"{slide_name}: inference failed: {one_line(exc)}") from exc
        except Exception as exc:
            raise SlidescanError(f"{slide_name}: failed {what}: {one_line(exc)}") from exc
        yield item
