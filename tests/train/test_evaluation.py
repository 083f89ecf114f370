"""`slidescan evaluate`: metrics.json carries the same metrics and provenance as ``--json``."""

from __future__ import annotations

import json
from pathlib import Path

from patch_fixtures import write_toy_set
from scan_helpers import FAST, invoke

from slidescan.engine.weights import file_sha256

PROVENANCE = ("model", "tta", "engine", "data", "weights_sha256")


def test_metrics_json_matches_json_output(weights: Path, tmp_path: Path) -> None:
    data = write_toy_set(tmp_path / "data", n_per_class=6)
    report = tmp_path / "report"
    result = invoke("evaluate", data, "--weights", weights, "--json", "--report", report, *FAST)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    saved = json.loads((report / "metrics.json").read_text())
    assert saved == printed
    for key in PROVENANCE:
        assert key in saved, key
    assert saved["model"] == "pcamnet-s" and saved["tta"] is True  # the patch default
    assert saved["weights_sha256"] == file_sha256(weights)
    assert str(data) in saved["data"] and saved["engine"]
    assert saved["n"] == 12
