"""What `pip install .` installs: the built wheel holds every module and data file of the tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]


def _tree(folder: Path, installed_as: str) -> set[str]:
    return {
        f"{installed_as}/{path.relative_to(folder).as_posix()}"
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(CHECKOUT)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    (wheel,) = out.glob("slidescan-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_wheel_holds_every_module_and_data_file(wheel_files: set[str]) -> None:
    expected = _tree(CHECKOUT / "slidescan", "slidescan")
    expected |= _tree(CHECKOUT / "weights", "slidescan/shipped_weights")
    assert any(name.endswith("io/patches/kaggle.py") for name in expected)  # the tree was read
    assert sorted(expected - wheel_files) == []


def test_wheel_holds_nothing_from_outside_the_package(wheel_files: set[str]) -> None:
    outside = [n for n in wheel_files if not n.startswith(("slidescan/", "slidescan-"))]
    assert outside == []
