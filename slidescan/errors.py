"""The one exception type the CLI turns into a one-line message instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class SlidescanError(Exception):
    """A user-facing error: bad input, unreadable file, missing option. Message is one line."""


def one_line(exc: BaseException, *, path: Path | None = None) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with a trace.

    With ``path``, the file's full path is cut to its name wherever the library's message quotes
    it: folder names often carry patient or study identifiers, and lines go into shared logs.
    """
    text = str(exc)
    if path is not None:
        for full in {str(path.resolve()), str(path.absolute()), str(path)}:
            if full != path.name:
                text = text.replace(full, path.name)
    if "Original Traceback" in text:
        # PyTorch wraps worker errors as "Caught X in DataLoader worker...\nOriginal Traceback..."
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    first = " ".join(text.splitlines()[0].split()) if text.strip() else ""
    if len(first) < 4:  # e.g. tifffile's bare "0" for a truncated file: say what kind of error
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first
