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
