"""Progress bars where someone watches them: on a terminal (or in a notebook), never in a log
file or a batch scheduler's output, where their carriage returns and escape codes pile up, and
not with ``slidescan --quiet``. There, per-slide and per-epoch lines are the progress."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

BARS_ENV = "SLIDESCAN_PROGRESS"  # "0": no bars (inherited by worker processes)
T = TypeVar("T")


def bars_wanted() -> bool:
    """True when progress bars help: stderr is a terminal or a notebook shows them."""
    if os.environ.get(BARS_ENV, "") == "0":
        return False
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def progress(iterable: Iterable[T] | None = None, *, show: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar, hidden unless :func:`bars_wanted` (and ``show``)."""
    return tqdm(iterable, disable=not (show and bars_wanted()), dynamic_ncols=True, **kwargs)
