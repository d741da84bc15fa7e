"""What a run is made of once it is set up (`Run`), what it reports (`Reporter`) and returns (`TrainResult`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qdtool.config import TrainConfig
from qdtool.core.distributed import Dist
from qdtool.core.events import Event, Info, OnEvent, Warn
from qdtool.core.rundir import RunDir


@dataclass
class TrainResult:
    output_dir: str
    adapter_dir: str  # adapter/, or model/ for method full (the whole fine-tuned model)
    steps: int
    total_steps: int
    train_records: int
    eval_records: int
    dropped: int
    truncated: int
    supervised_tokens: int = 0
    train_seconds: float = 0.0
    supervised_tokens_per_s: float = 0.0
    first_eval_loss: float | None = None
    best_eval_loss: float | None = None
    final_eval_loss: float | None = None
    final_train_loss: float | None = None
    selected_by: str = "eval_loss"  # the measure that picked the adapter's step (select_by)
    selected_step: int | None = None  # the step whose weights the adapter holds
    selected_score: float | None = None  # its eval_loss or eval SARI
    best_eval_sari: float | None = None  # of the decoded eval subset; None when nothing was decoded
    final_eval_sari: float | None = None
    peak_memory_gb: float = 0.0
    resumed_from: str | None = None
    device: str = ""
    precision: str = ""
    trainable_params: int = 0
    longest_decomposition: int | None = None  # steps of the longest training record: `decompose` caps its outputs there
    method: str = "lora"  # lora, or full: adapter_dir is then a standalone model and there is nothing to merge
    already_complete: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reporter:
    """Events for the caller, from the first process only; every process keeps its warnings for the result."""

    def __init__(self, on_event: OnEvent | None, main: bool) -> None:
        self._on_event = on_event if main else None
        self.warnings: list[str] = []

    def __call__(self, event: Event) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def info(self, message: str) -> None:
        self(Info(message))

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self(Warn(message))


@dataclass
class Run:
    """Everything the loop and the finish need, built once by `setup.setup`."""

    config: TrainConfig  # with absolute paths, as run_config.yaml saves it
    hardware: Any  # hardware.Device: the device, precision and dtype this process trains in
    dist: Dist
    out: RunDir
    report: Reporter
    tokenizer: Any
    train_set: Any  # batching.EncodedSet
    eval_set: Any
    plan: Any  # batching.BatchPlan: the micro-batches of every step
    eval_batches: list[Any]
    total_steps: int
    model: Any
    loss_module: Any  # the FSDP-wrapped loss under sharding, else None
    loss_of: Callable[[dict[str, Any]], tuple[Any, int]]  # batch -> (summed answer-token loss, answer tokens)
    sharded: bool
    trainable: int  # trainable parameters (counted before sharding)
    optimizer: Any
    scheduler: Any
    scaler: Any  # a GradScaler for fp16, else None
    autocast: Any  # a torch.autocast for bf16/fp16, else None
    start_from: Path | None  # the checkpoint this run resumes, if any
    data_files: list[Any]  # cards.DataFile of each train/eval file, for the adapter's card
    state: dict[str, Any]  # what a checkpoint saves besides the weights: losses so far, tokens, seconds, data
    start_step: int = 0
    metrics: Any = None  # tracking.MetricsFile, or a sink that writes nothing outside the first process
    tracker: Any = None  # tracking.Tracker
    decode_rows: list[dict[str, Any]] = field(default_factory=list)  # the eval records decoded at each evaluation
    longest_trained: int | None = None  # steps of the longest training decomposition: the decoding's step cap


def peak_memory_gb(device: str) -> float:
    """GiB: the GPU memory reserved at its peak, or this process's peak RSS on a CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_reserved() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
