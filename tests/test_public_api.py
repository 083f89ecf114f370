"""The Python API of the README: every exported name resolves, lazily, to the library's own."""

from __future__ import annotations

import subprocess
import sys

import slidescan
from slidescan.engine.weights import load_weights
from slidescan.scan.scanner import Scanner, scan_slide


def test_every_exported_name_resolves() -> None:
    assert set(slidescan.__all__) == set(slidescan._API) | {"RESEARCH_USE_NOTICE", "__version__"}
    for name in slidescan.__all__:
        assert getattr(slidescan, name) is not None, name
    assert slidescan.load_weights is load_weights
    assert slidescan.Scanner is Scanner and slidescan.scan_slide is scan_slide


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        slidescan.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_light() -> None:
    code = "import sys, slidescan; print('torch' in sys.modules, 'zarr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
