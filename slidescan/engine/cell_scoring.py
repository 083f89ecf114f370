"""Pixels of grid cells → their tumour probabilities, in the main process or in DataLoader workers.

On a GPU (or MPS, or with ``--workers 0``) the main process owns the model and DataLoader
workers only read. On a CPU with workers the model is cheapest run *inside* them: each reads its
blocks and runs its own single-threaded copy of the model, so only probabilities cross between
processes. Handing uint8 batches to a main-process model cost ~7 ms per batch in shared-memory
set-up alone, and its thread pool fought the readers for the same cores (benchmarks/RESULTS.md
§3).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from slidescan.engine.inference import Predictor, make_predictor, predict_dense_probs, predict_probs
from slidescan.engine.weights import LoadedModel
from slidescan.errors import one_line

Item = tuple[Tensor, Tensor]
_INHERITED: list[Predictor] = []  # the parent's predictors, in a forked worker


class ScoringError(RuntimeError):
    """The model failed on a batch inside a DataLoader worker (not the reading before it)."""


class CellScorer:
    """Scores tile-dataset items (``slidescan.scan.slide_tiles``): ``(probs K, cells K×2)``.

    ``predictor``: the main process's model. Any other process (a DataLoader worker) builds its
    own from ``loaded`` on the CPU with ``engine`` and one thread, as the workers themselves
    provide the parallelism.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        predictor: Predictor,
        *,
        dense: bool = False,
        tta: bool = False,
    ) -> None:
        self.loaded = loaded
        self.engine = predictor.engine
        self.dense = dense
        self.tta = tta
        self._predictor: Predictor | None = predictor
        self._pid: int | None = os.getpid()

    def __call__(self, pixels: Tensor, cells: Tensor) -> Item:
        """Probabilities of the cells of one batch of patches, or of one dense region."""
        predictor = self._own_predictor()
        if self.dense:
            prob_map = predict_dense_probs(
                predictor.model, pixels, predictor.normalizer, tta=self.tta
            )
            rel = cells[:, 2:]
            return prob_map[rel[:, 0], rel[:, 1]], cells[:, :2]
        return predict_probs(predictor.model, pixels, predictor.normalizer, tta=self.tta), cells

    def collate(self, items: list[Item] | Item) -> Item:
        """DataLoader ``collate_fn`` that scores in the worker: a list of blocks (patch mode,
        joined into one batch) or one region (dense mode, where batching is off)."""
        if isinstance(items, tuple):
            pixels, cells = items
        else:
            # Not collate_blocks: these pixels never leave the worker, so no shared memory.
            pixels = torch.cat([item[0] for item in items])
            cells = torch.cat([item[1] for item in items])
        try:
            return self(pixels, cells)
        except Exception as exc:
            # One line here: the main process sees it inside the worker's traceback text.
            raise ScoringError(one_line(exc)) from exc

    def _own_predictor(self) -> Predictor:
        # A predictor inherited through fork is the parent's: an ONNX Runtime session's thread
        # pool does not survive fork, and the parent's would take every core per worker.
        if self._predictor is None or self._pid != os.getpid():
            if self._predictor is not None:
                # Never destroyed here: its session's destructor would wait forever to join
                # thread-pool threads that only exist in the parent.
                _INHERITED.append(self._predictor)
            self._predictor = make_predictor(self.loaded, "cpu", self.engine, threads=1)
            self._pid = os.getpid()
        return self._predictor

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_predictor"] = None
        state["_pid"] = None
        return state
