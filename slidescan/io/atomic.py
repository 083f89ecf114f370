"""Write a file so that its final name only ever holds a complete file."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path


def writer_token() -> str:
    """``host-pid-random``: unique to one writer, so concurrent runs never share a temporary."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def partial_path(path: Path, token: str, suffix: str = "") -> Path:
    """The hidden temporary name one writer fills for ``path``: ``dir/.name.<token>.partial``."""
    return path.with_name(f".{path.name}.{token}.partial{suffix}")


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` only if the block succeeds.

    An interrupted or failed write leaves neither a half-written ``path`` nor the temporary.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path, writer_token())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
