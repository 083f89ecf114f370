"""Where the real example data lives: ``$SLIDESCAN_DATA``, else ``../shared/data``.

For tests, benchmarks and examples; not part of the package."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SLIDESCAN_DATA"


def shared_data_dir() -> Path:
    """Return the real-data folder (it may not exist; callers decide what that means)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    # Run from elsewhere: the checkout sits beside the shared folder.
    beside_cwd = Path.cwd().resolve().parent / "shared" / "data"
    if beside_cwd.is_dir():
        return beside_cwd
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def note_if_in_sample(training: dict, data: Path, name: str = "this model") -> None:
    """Print a warning when a model's card says it trained on the patch folder ``data`` (a
    benchmark's test data): since 2026-12-06 the shipped model trains on PCam ``valid``."""
    tail = "/".join(Path(data).parts[-2:])
    if tail and tail in str(training.get("data", "")).replace("\\", "/"):
        print(
            f"NOTE: {name} was trained on {tail}, so its figures here are in-sample, not "
            "figures on unseen slides"
        )
