"""Write a file so that its final name only ever holds a complete file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def partial_path(path: Path) -> Path:
    """The hidden temporary name ``path`` is written under: ``dir/.name.partial``."""
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` only if the block succeeds.

    An interrupted or failed write leaves neither a half-written ``path`` nor the temporary.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
