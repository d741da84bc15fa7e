"""Ctrl-C and SIGTERM: finish the step, save a checkpoint, stop with how to resume."""

from __future__ import annotations

import signal
import threading
from typing import Any

from qdtool.core.rundir import RunDir
from qdtool.errors import TrainingInterrupted


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the step and stops."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def interrupted(signum: int | None, step: int | None, out: RunDir) -> TrainingInterrupted:
    """The error that ends a run stopped by `signum` after its step-`step` checkpoint; `step` None: stopped
    during the step-0 evaluation, before any training step, with nothing to save."""
    signum = signum or signal.SIGTERM
    name = signal.Signals(signum).name
    if step is None:
        said = (f"{name} received during the step-0 evaluation, before the first training step: there is nothing to "
                f"checkpoint. Start the run again with: {out.resume_command}")
    else:
        said = f"{name} received: checkpoint saved at step {step} in {out.checkpoints}. Resume with: {out.resume_command}"
    return TrainingInterrupted(said, 128 + signum)
