"""Cell scoring: the same probabilities in the main process, in a worker and after pickling."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from scan_helpers import write_untrained_weights
from torch.utils.data import DataLoader

from slidescan.engine import device, onnx_backend
from slidescan.engine.cell_scoring import CellScorer, ScoringError
from slidescan.engine.inference import make_predictor, predict_probs
from slidescan.engine.weights import LoadedModel, load_weights


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_weights(write_untrained_weights(tmp_path_factory.mktemp("w") / "w.pt"))


def _blocks(sizes: tuple[int, ...] = (3, 1, 4)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, 256, (n, 3, 96, 96), dtype=torch.uint8, generator=gen),
            torch.arange(2 * n).view(n, 2) + 1000 * i,
        )
        for i, n in enumerate(sizes)
    ]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_collate_scores_the_joined_blocks(loaded: LoadedModel, backend: str) -> None:
    predictor = make_predictor(loaded, "cpu", backend)
    scorer = CellScorer(loaded, predictor)
    blocks = _blocks()
    probs, cells = scorer.collate(blocks)
    pixels = torch.cat([b[0] for b in blocks])
    expected = predict_probs(predictor.model, pixels, predictor.normalizer)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(cells, torch.cat([b[1] for b in blocks]))
    assert probs.shape == (8,) and ((probs > 0) & (probs < 1)).all()


def test_pickled_scorer_builds_its_own_single_threaded_model(loaded: LoadedModel) -> None:
    # What a spawn-started worker receives: no model (sessions and GPU tensors do not pickle
    # usefully), rebuilt on first use with the same engine and one ONNX Runtime thread.
    scorer = CellScorer(loaded, make_predictor(loaded, "cpu", "onnx"))
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone._predictor is None
    pixels, cells = _blocks()[0]
    torch.testing.assert_close(clone(pixels, cells)[0], scorer(pixels, cells)[0], atol=1e-5, rtol=0)
    rebuilt = clone._predictor
    assert rebuilt is not None and rebuilt.engine == "onnx"
    assert rebuilt.model.session.get_session_options().intra_op_num_threads == 1  # type: ignore[attr-defined]


def test_dense_item_scores_only_the_wanted_cells(loaded: LoadedModel) -> None:
    predictor = make_predictor(loaded, "cpu", "torch")
    scorer = CellScorer(loaded, predictor, dense=True)
    region = torch.randint(0, 256, (1, 3, 96 + 32 * 3, 96 + 32 * 2), dtype=torch.uint8)
    # (row, col) in the slide grid, then (row, col) in the region's 4×3 output map.
    cells = torch.tensor([[10, 20, 0, 0], [13, 22, 3, 2], [11, 21, 1, 1]])
    probs, scored = scorer.collate((region, cells))
    torch.testing.assert_close(scored, cells[:, :2])
    patches = torch.cat(
        [region[:, :, 32 * i : 32 * i + 96, 32 * j : 32 * j + 96] for _, _, i, j in cells.tolist()]
    )
    expected = predict_probs(predictor.model, patches, predictor.normalizer)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


def test_a_failing_model_in_collate_raises_one_line(loaded: LoadedModel) -> None:
    scorer = CellScorer(loaded, make_predictor(loaded, "cpu", "torch"))
    bad = [(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.int64))]
    with pytest.raises(ScoringError) as info:
        scorer.collate(bad)
    assert "96×96" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("quota", "expected"), [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1)]
)
def test_usable_cores_respect_a_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quota: str, expected: int | None
) -> None:
    monkeypatch.setattr(device, "CPU_QUOTA_FILE", tmp_path / "missing")
    affinity = device.usable_cores()
    (tmp_path / "cpu.max").write_text(quota + "\n")
    monkeypatch.setattr(device, "CPU_QUOTA_FILE", tmp_path / "cpu.max")
    assert device.usable_cores() == (affinity if expected is None else min(affinity, expected))
    monkeypatch.setattr(device, "usable_cores", lambda: 64)
    assert device.default_scan_workers(torch.device("cpu")) == device.MAX_CPU_SCAN_WORKERS
    assert device.default_scan_workers(torch.device("cuda")) == 8


def test_workers_reuse_the_exported_float32_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = load_weights(write_untrained_weights(tmp_path / "w.pt"))
    calls = []
    real_export = onnx_backend.export_onnx

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(onnx_backend, "export_onnx", counting)
    scorer = CellScorer(fresh, make_predictor(fresh, "cpu", "onnx"))
    clone = pickle.loads(pickle.dumps(scorer))  # a worker's copy: builds its own session
    clone(*_blocks()[0])
    assert clone._predictor is not None and len(calls) == 1


def test_main_process_predictor_is_used_in_process(loaded: LoadedModel) -> None:
    predictor = make_predictor(loaded, "cpu", "torch")
    scorer = CellScorer(loaded, predictor)
    scorer(*_blocks()[0])
    assert scorer._predictor is predictor  # not rebuilt: same process


def test_forked_workers_leave_the_parents_session_alone(loaded: LoadedModel) -> None:
    # Here the scorer holds the only reference to the parent's ONNX Runtime session. A worker
    # that replaced and so destroyed it would hang for ever joining thread-pool threads that
    # fork did not copy (the DataLoader timeout turns that hang into a failure; full batches,
    # as tiny ones did not show it).
    scorer = CellScorer(loaded, make_predictor(loaded, "cpu", "onnx", threads=2))
    blocks = _blocks((256, 256, 256))
    loader = DataLoader(
        blocks, batch_size=None, collate_fn=scorer.collate, num_workers=2, timeout=60,
        multiprocessing_context="fork",
    )  # fmt: skip
    for (probs, cells), (pixels, expected_cells) in zip(loader, blocks, strict=True):
        torch.testing.assert_close(cells, expected_cells)
        torch.testing.assert_close(probs, scorer(pixels, cells)[0], atol=1e-5, rtol=0)
