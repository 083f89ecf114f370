"""Shared fixtures. Real-data tests skip with a reason when the data is absent; CI forbids that."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidescan.data_paths import ENV_VAR, shared_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder (../shared/data or $SLIDESCAN_DATA); skips the test when absent."""
    path = shared_data_dir()
    if not (path / "pcam-jpeg").is_dir():
        pytest.skip(f"real data not found at {path} (set {ENV_VAR} to the shared data folder)")
    return path
