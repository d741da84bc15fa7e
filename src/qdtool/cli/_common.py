"""What every command shares: consoles and the translation of QdtoolError into an exit code."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

import typer
from rich.console import Console

from qdtool.errors import QdtoolError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


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
