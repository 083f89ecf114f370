"""The runner: the model in the main process or in the workers, the same (probabilities, cells)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scan_helpers import SLIDE_MPP, write_untrained_weights
from slide_fixtures import tissue_image, write_pyramid

from slidescan.engine.cell_scoring import CellScorer
from slidescan.engine.inference import make_predictor
from slidescan.engine.weights import load_weights
from slidescan.errors import SlidescanError
from slidescan.io.slide import open_slide
from slidescan.scan.runner import TileRunner, choose_runner
from slidescan.scan.slide_geometry import plan_grid
from slidescan.scan.slide_tiles import SlideTileDataset

CPU = torch.device("cpu")


def test_choose_runner() -> None:
    assert choose_runner("auto", 2, CPU) == "workers"
    assert choose_runner("auto", 0, CPU) == "main"
    assert choose_runner("auto", 4, torch.device("cuda")) == "main"
    assert choose_runner("main", 2, CPU) == "main"
    with pytest.raises(SlidescanError, match="needs 1 or more workers"):
        choose_runner("workers", 0, CPU)
    with pytest.raises(SlidescanError, match="runner must be one of"):
        choose_runner("gpu", 1, CPU)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("runner")
    slide = write_pyramid(root / "s.tif", tissue_image(1536, 2048)[0], mpp=SLIDE_MPP)
    loaded = load_weights(write_untrained_weights(root / "w.pt"))
    with open_slide(slide) as opened:
        grid, tissue = plan_grid(opened, loaded.card, None, 0.25)
    return slide, loaded, grid, np.argwhere(tissue)


def _scores(setup, where: str, workers: int) -> dict[tuple[int, int], float]:
    slide, loaded, grid, cells = setup
    predictor = make_predictor(loaded, "cpu", "torch")
    runner = TileRunner(
        CellScorer(loaded, predictor), where=where, workers=workers, batch_size=5, dense=False,
        device=CPU,
    )  # fmt: skip
    dataset = SlideTileDataset(slide, grid, cells, block=2)
    out: dict[tuple[int, int], float] = {}
    try:
        for probs, scored in runner.run(dataset, slide.name):
            assert probs.shape == (len(scored),) and scored.shape[1] == 2
            out.update(
                {(int(r), int(c)): float(p) for (r, c), p in zip(scored, probs, strict=True)}
            )
    finally:
        dataset.close()
    return out


def test_every_runner_yields_the_same_scores(setup) -> None:
    cells = {(int(r), int(c)) for r, c in setup[3]}
    assert len(cells) > 10
    reference = _scores(setup, "main", 0)
    assert set(reference) == cells
    for where, workers in [("main", 2), ("workers", 2)]:
        got = _scores(setup, where, workers)
        assert set(got) == cells, where
        worst = max(abs(got[k] - reference[k]) for k in cells)
        assert worst < 1e-5, (where, worst)
