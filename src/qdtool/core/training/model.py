"""The model a run trains: base + LoRA (or the base itself, method full), sharded with FSDP when several processes share it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qdtool.config import TrainConfig, dump_config
from qdtool.core.distributed import Dist
from qdtool.core.files import write_text_atomic
from qdtool.core.rundir import RunDir
from qdtool.core.training.state import Reporter
from qdtool.errors import ConfigError


@dataclass
class Built:
    model: Any
    loss_module: Any  # the FSDP-wrapped loss, or None unsharded
    sharded: bool
    trainable: int  # trainable parameters, counted before sharding


def build_model(config: TrainConfig, hardware: Any, dist: Dist, start_from: Path | None, out: RunDir, report: Reporter) -> Built:
    """Load the base, add LoRA (or make its weights trainable), save run_config.yaml (the run now exists) and shard under FSDP.

    Method full loads the base in fp32 whatever the precision: those are the master weights the
    optimizer updates; autocast computes in the run's precision.

    Raises:
        ConfigError: FSDP without several processes on a GPU; a checkpoint written by another process layout or method.
    """
    import torch

    from qdtool.core import lora, modeling

    sharded = _sharded(config, dist, hardware, report)
    if start_from is not None:  # the batch stream and the optimizer state's layout depend on both
        _check_layout(start_from, dist, sharded, config.method)
    torch.manual_seed(config.seed)  # the same LoRA initialization in every process
    load_on = replace(hardware, precision="fp32") if config.method == "full" else hardware
    model = lora.make_trainable(modeling.load_base_model(config, load_on, report.info, on_cpu=sharded), config)
    torch.manual_seed(config.seed + dist.rank)  # then each process its own dropout masks
    if dist.main:  # only now: a model that fails to load leaves no run behind to block the directory
        write_text_atomic(out.config, f"# written by qdtool train; `{out.resume_command}` repeats this run\n" + dump_config(config))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loss_module = None
    if sharded:
        from qdtool.core import checkpoint, sharding

        if start_from is not None:  # whole LoRA weights go in before they are sharded
            checkpoint.load_adapter(start_from, model)
        loss_module = sharding.shard(model, hardware.device)
        report.info(f"FSDP: base weights sharded over {dist.world} processes")
    return Built(model, loss_module, sharded, trainable)


def _sharded(config: TrainConfig, dist: Dist, hardware: Any, report: Reporter) -> bool:
    if config.sharding == "fsdp" and not dist.enabled:
        if hardware.device == "cuda":  # the whole model on one GPU is what FSDP was chosen to avoid
            raise ConfigError("sharding fsdp needs several processes: launch with torchrun --nproc_per_node N -m qdtool train ... "
                              "(one per GPU), or pass --sharding none to train on one GPU")
        report.warn("sharding fsdp needs several processes (torchrun / accelerate launch); this single process trains unsharded")
    return config.sharding == "fsdp" and dist.enabled


def _check_layout(start_from: Path, dist: Dist, sharded: bool, method: str) -> None:
    from qdtool.core import checkpoint

    saved = checkpoint.saved_state(start_from)
    if saved.get("method", "lora") != method:  # its weights file holds LoRA adapters or whole weights, not both
        raise ConfigError(f"{start_from} was written by a method {saved.get('method', 'lora')} run; this run has method {method}. "
                          "Resume it with the method it was written with, or start over with --overwrite")
    written, now = (saved.get("processes", 1), saved.get("sharded", False)), (dist.world, sharded)
    if written != now:
        how = lambda n, fsdp: f"{n} process{'es' if n > 1 else ''}{' with FSDP' if fsdp else ''}"  # noqa: E731
        raise ConfigError(f"{start_from} was written by {how(*written)}; this run has {how(*now)}. Resume it as it was "
                          "written, or start over with --overwrite")
