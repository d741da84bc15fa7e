"""What every command shares: consoles and the translation of QdtoolError into an exit code."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console

from qdtool.errors import QdtoolError

LOG_WIDTH = 1000  # columns when the output is a file or a pipe: a log keeps whole paths and numbers


class _Console(Console):
    """A console that wraps only for a human: off a terminal (a log, a pipe, CI), lines and tables
    keep their natural width instead of rich's 80 columns, unless COLUMNS says otherwise."""

    @property
    def size(self):  # type: ignore[override]
        size = super().size
        if not self.is_terminal and not os.environ.get("COLUMNS"):
            return size._replace(width=LOG_WIDTH)
        return size


console = _Console(highlight=False)
err_console = _Console(stderr=True, highlight=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a QdtoolError into one message on stderr and its exit code (traceback with QDTOOL_DEBUG=1)."""
    try:
        yield
    except QdtoolError as exc:
        if os.environ.get("QDTOOL_DEBUG") == "1":
            raise
        err_console.print(f"error: {exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


BUG_EXIT_CODE = 3  # not 1: scripts can tell "qdtool is broken" from "your data is bad"


def exit_on_bug(exc: BaseException) -> NoReturn:
    """An exception that is not a QdtoolError is a bug: one line saying where, a hint, exit 3.

    STYLE.md asks for the traceback here; a wall of frames buries the one line a user can report,
    so the traceback is one environment variable away (QDTOOL_DEBUG=1) instead.
    """
    if os.environ.get("QDTOOL_DEBUG") == "1":
        raise exc
    if isinstance(exc, BrokenPipeError):  # `qdtool ... | head`: the reader left; nothing to report
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes stderr at exit
        sys.exit(141)
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}qdtool{os.sep}" in f.filename] or frames
    where = f" (at {os.path.basename(ours[-1].filename)}:{ours[-1].lineno})" if ours else ""
    detail = str(exc).splitlines()[0][:300] if str(exc) else ""
    err_console.print(f"internal error: {type(exc).__name__}{': ' + detail if detail else ''}{where}",
                      style="red", markup=False, soft_wrap=True)
    err_console.print("This is a bug in qdtool, not in your input. Rerun with QDTOOL_DEBUG=1 to see the full "
                      "traceback, and include it when you report the problem.", markup=False, soft_wrap=True)
    sys.exit(BUG_EXIT_CODE)


@contextmanager
def status(message: str) -> Iterator[Callable[[str], None]]:
    """A spinner whose text core code can update through the yielded callback."""
    if not err_console.is_terminal:
        def say(text: str) -> None:
            err_console.print(text, style="dim", markup=False)
        yield say
        return
    with err_console.status(message) as spinner:
        def update(text: str) -> None:
            spinner.update(text)
        yield update


def quiet_libraries() -> None:
    """Silence library chatter that tells a qdtool user nothing actionable (call before heavy imports)."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "Failed to load CPU gemm_4bit_forward ..." on CPUs
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # "Loading weights" bars of transformers / huggingface_hub: our own status line says what loads.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
