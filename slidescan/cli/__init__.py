"""The ``slidescan`` command line: each command parses its options and calls one library function.

One module per group of commands (``scanning``, ``validation``, ``patches``, ``training``), in
the order ``--help`` lists them; the app, its error handling and exit codes in ``app``; options
shared by several commands in ``options``. Heavy modules (torch, openslide, zarr) are imported
inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

# The import order is the order of the commands in --help.
# isort: off
from slidescan.cli import scanning, validation, patches, training  # noqa: F401
from slidescan.cli.app import app, entry

# isort: on

__all__ = ["app", "entry"]
