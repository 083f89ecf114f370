"""The app: its error handling, exit codes, `--version` and `--debug`.

Heavy modules (torch, openslide, zarr) are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from slidescan.about import RESEARCH_USE_NOTICE, __version__
from slidescan.errors import SlidescanError, one_line, option_for
from slidescan.progress import BARS_ENV


def _show_switches_as_switches() -> None:
    """Recent typer prints ``<bool>`` beside every switch (``--tta <bool>``), as if it took a
    value: show switches bare, as click and every other tool do. Older typer has no such
    column, and nothing to change."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_show_switches_as_switches()

app = typer.Typer(
    help=(
        "Find lymph-node metastases in H&E whole-slide images: tumour-probability heatmaps and "
        f"per-slide calls. {RESEARCH_USE_NOTICE}"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])
_EXTENSIONS = ("torch", "onnxruntime", "zarr", "openslide", "tifffile", "imagecodecs")
DEBUG_ENV = "SLIDESCAN_DEBUG"
_debug = False
_quiet = False


def quiet() -> bool:
    """True under ``slidescan --quiet``: say only what went wrong and the final summary."""
    return _quiet


def _debugging() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def user_errors(func: F) -> F:
    """Turn SlidescanError and OSError into one line on stderr and exit code 1 (the traceback
    too with --debug or SLIDESCAN_DEBUG=1); Ctrl-C into exit code 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if signal.getsignal(signal.SIGINT) is quit_on_ctrl_c:
            # C++ extensions abort the process when a KeyboardInterrupt lands in their import:
            # load them while a Ctrl-C still just quits. Then a Ctrl-C unwinds, so partial
            # outputs are removed.
            for module in _EXTENSIONS:
                with contextlib.suppress(ImportError):
                    importlib.import_module(module)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return func(*args, **kwargs)
        except BrokenPipeError:
            # The reader went away (`| head`): nothing left to tell it, no error to report.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except (SlidescanError, OSError) as exc:
            if _debugging():
                traceback.print_exception(exc, file=sys.stderr)
            typer.echo(f"error: {_error_line(exc)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _error_line(exc: BaseException) -> str:
    """An OSError names its file and reason (read-only, no space, no permission)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    if isinstance(exc, SlidescanError) and exc.param:
        return f"{one_line(exc)} ({option_for(exc.param)})"
    return one_line(exc)


def entry() -> None:
    """The ``slidescan`` program: the app, then an exit that no late Ctrl-C can change.

    Once a command has finished or given up (results committed, or partials removed), a Ctrl-C
    could only interrupt Python's slow teardown and turn the exit status into a signal. So the
    status is taken from the app, Ctrl-C is ignored from then on, and the process exits at once
    with that status: 0 done, 1 failed, 2 usage error, 130 interrupted. Not in ``app`` itself:
    in-process callers such as tests keep their own Ctrl-C and interpreter.
    """
    signal.signal(signal.SIGINT, quit_on_ctrl_c)  # until a command starts: nothing to clean up
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = _exit_status(exc.code)
    except KeyboardInterrupt:
        code = 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # e.g. `slidescan models | head -1` closed the pipe
            stream.flush()
    os._exit(code)


def quit_on_ctrl_c(signum: int, frame: object) -> None:
    """SIGINT before any command has started (start-up, option parsing): leave at once, 130."""
    os._exit(130)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits 1
    return 1


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"slidescan {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=version_callback, is_eager=True, help="Print version."),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show tracebacks with errors and log what the readers decide "
            f"(also {DEBUG_ENV}=1).",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress bars and no line per slide: warnings, errors and the final summary "
            "only. (Where stderr is not a terminal, as in logs and batch jobs, there are no bars "
            "anyway.)",
        ),
    ] = False,
) -> None:
    """slidescan command line."""
    global _debug, _quiet
    _debug, _quiet = debug, quiet
    if quiet:
        os.environ[BARS_ENV] = "0"  # DataLoader and Dask workers inherit it
    logging.basicConfig(
        level=logging.DEBUG if _debugging() else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # tifffile logs its own warning for each corrupt file; our one-line error already says it.
    logging.getLogger("tifffile").setLevel(logging.DEBUG if _debugging() else logging.ERROR)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=None, allow_nan=True))
