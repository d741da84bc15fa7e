"""`train`: set up, loop, finish; the run directory's lock is held throughout."""

from __future__ import annotations

from contextlib import ExitStack

from qdtool.config import TrainConfig
from qdtool.core.events import OnEvent
from qdtool.core.training.finish import finish
from qdtool.core.training.loop import run_loop
from qdtool.core.training.setup import setup
from qdtool.core.training.state import TrainResult


def train(config: TrainConfig, *, resume: str = "auto", overwrite: bool = False, on_event: OnEvent | None = None) -> TrainResult:
    """Train a LoRA adapter as `config` says; returns what happened (see TrainResult).

    Args:
        resume: "auto" (continue from the last checkpoint), "never", or a checkpoint directory.
        overwrite: replace the run that `config.output_dir` holds.
        on_event: called with each core.events event, in the first process only.

    Raises:
        ConfigError, DataError, ModelError: before any step runs, with what to change.
        TrainingError: NaN/inf loss or out of memory, with the step and likely causes.
        TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was saved first.
    """
    with ExitStack() as held:  # the run directory's lock, released however the run ends
        run = setup(config, resume, overwrite, on_event, held)
        if isinstance(run, TrainResult):  # already complete: nothing to do
            return run
        run_loop(run)
        return finish(run)
