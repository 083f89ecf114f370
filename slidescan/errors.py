"""The one exception type the CLI turns into a one-line message instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class SlidescanError(Exception):
    """A user-facing error: bad input, unreadable file, missing option. Message is one line.

    ``param``: the library parameter whose value is at fault, named as in the Python API
    (``device``, ``batch_size``); the command line adds the option that sets it.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def option_for(param: str) -> str:
    """The command-line option that sets library parameter ``param`` (``batch_size`` →
    ``--batch-size``): typer's naming, which every command follows."""
    return "--" + param.replace("_", "-")


def one_line(exc: BaseException, *, path: Path | None = None) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with a trace.

    With ``path``, the file's full path is cut to its name wherever the library's message quotes
    it: folder names often carry patient or study identifiers, and lines go into shared logs.
    """
    text = str(exc) if path is None else redact_path(str(exc), path)
    if "Original Traceback" in text:
        # PyTorch wraps worker errors as "Caught X in DataLoader worker...\nOriginal Traceback..."
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    first = " ".join(text.splitlines()[0].split()) if text.strip() else ""
    if len(first) < 4:  # e.g. tifffile's bare "0" for a truncated file: say what kind of error
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first


def redact_path(text: str, path: Path) -> str:
    """``text`` with every spelling of ``path`` (absolute, as given, POSIX, and as Python's
    ``repr`` escapes it, as PIL and OSError quote it) cut to the file name."""
    spellings: set[str] = set()
    for form in (path.resolve(), path.absolute(), path):
        for plain in (str(form), form.as_posix()):
            spellings.update((plain, repr(plain)[1:-1]))
    spellings.discard(path.name)
    # Longest first: the absolute path must go before a relative path that is part of it.
    for spelling in sorted(spellings, key=len, reverse=True):
        text = text.replace(spelling, path.name)
    return text
