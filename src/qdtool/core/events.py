"""What core training tells its caller while it runs: a small set of typed events.

`train(on_event=...)` is called with one of these at a time, from the first process only; the CLI
renders them (cli/train.py) and a test checks that it renders every type listed in `Event`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Info:
    """Progress worth a line: the model loading, a resume, FSDP sharding."""

    message: str


@dataclass(frozen=True)
class Warn:
    """Something the user should know; it is also kept in TrainResult.warnings."""

    message: str


@dataclass(frozen=True)
class Start:
    """The model is loaded and the first step is next."""

    total_steps: int
    start_step: int  # 0, or the step a resumed run continues after
    train_samples: int
    eval_samples: int
    trainable_params: int
    output_dir: str
    device: str  # the device's name, e.g. "NVIDIA H100" or "CPU"
    precision: str


@dataclass(frozen=True)
class Step:
    """One optimizer step, with the fields of its metrics.jsonl row."""

    step: int  # from 1: the number of steps done
    loss: float  # token mean over the step's answer tokens
    lr: float
    grad_norm: float  # before clipping
    supervised_tokens: int
    tokens: int
    samples: int
    seconds: float
    supervised_tokens_per_s: float
    epoch: float
    peak_memory_gb: float  # GiB: GPU memory reserved, or the process's peak RSS on a CPU


@dataclass(frozen=True)
class Eval:
    step: int
    eval_loss: float  # token mean over the eval set's answer tokens
    eval_sari: float | None = None  # corpus SARI of the decoded eval subset; None when nothing is decoded


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: str


Event = Info | Warn | Start | Step | Eval | Checkpoint
OnEvent = Callable[[Event], None]
