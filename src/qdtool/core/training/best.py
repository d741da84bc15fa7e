"""The best evaluation of a run and its weights: the adapter (or a full run's model) written at the end is the best step's.

Each evaluation better than all before it (lower eval_loss, or higher eval SARI, as `select_by`
says; a tie keeps the earlier step) writes the trainable weights to best/step-N/ in the run dir,
atomically. Every checkpoint's state names its best step and score, so a run resumed from any kept
checkpoint finds that step's weights on disk, whatever happened after it. A best dir that neither
the live run nor a kept checkpoint names is removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from qdtool.core.files import WriteError, atomic_dir, remove_stale_temps
from qdtool.core.rundir import RunDir
from qdtool.errors import TrainingError

_PREFIX = "step-"
_WEIGHTS = "weights.safetensors"  # the trainable weights, named as in model.state_dict()


def score_of(select_by: str, eval_loss: float, eval_sari: float | None) -> float | None:
    return eval_loss if select_by == "eval_loss" else eval_sari


def is_better(select_by: str, score: float | None, best: float | None) -> bool:
    """Whether `score` beats `best` (strictly: a tie keeps the earlier step)."""
    if score is None:
        return False
    return best is None or (score < best if select_by == "eval_loss" else score > best)


def consider(run: Any, step: int, eval_loss: float, eval_sari: float | None) -> bool:
    """Keep step `step`'s weights if its evaluation is the best so far; every process calls it (FSDP gathers the weights).

    Raises:
        TrainingError: the weights could not be written (a full disk, say), with how to go on.
    """
    score = score_of(run.config.select_by, eval_loss, eval_sari)
    if not is_better(run.config.select_by, score, run.state.get("best_score")):
        return False
    weights = trainable_weights(run)
    if run.dist.main:
        _save(run.out, step, weights, run.config.select_by, score)
    run.state.update(best_step=step, best_score=score)
    if run.dist.main:
        prune(run.out, step)
    run.dist.barrier()
    return True


def trainable_weights(run: Any) -> dict[str, Any]:
    """The trainable weights, whole, on the CPU, named as in model.state_dict() (a collective under FSDP)."""
    if run.sharded:
        from qdtool.core import sharding

        return sharding.full_lora_weights(run.model)
    # no copy on a CPU: they are serialized at once, and a full fine-tuning run's weights are hundreds of MB
    return {name: p.detach().to("cpu").contiguous() for name, p in run.model.named_parameters() if p.requires_grad}


def path_of(out: RunDir, step: int) -> Path:
    return out.best / f"{_PREFIX}{step:07d}"


def _save(out: RunDir, step: int, weights: dict[str, Any], select_by: str, score: float) -> None:
    from safetensors.torch import save

    data = save(weights, metadata={"step": str(step), "select_by": select_by, "score": repr(score)})
    try:
        with atomic_dir(path_of(out, step), needed_bytes=len(data)) as tmp:
            (tmp / _WEIGHTS).write_bytes(data)
    except WriteError as exc:
        raise TrainingError(f"{exc}. The weights of step {step}, the best evaluation so far, were not saved; once there is room, "
                            f"`{out.resume_command}` resumes from the last checkpoint") from None


def load(out: RunDir, step: int) -> dict[str, Any]:
    """The weights saved for step `step`.

    Raises:
        TrainingError: they are missing or damaged.
    """
    from safetensors.torch import load_file

    path = path_of(out, step) / _WEIGHTS
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, the best weights are lost
        raise TrainingError(f"{path}, the weights of the best evaluation (step {step}), is missing or damaged "
                            f"({type(exc).__name__}); pass --overwrite to train the run again") from None


def check_kept(out: RunDir, step: int | None) -> None:
    """Refuse to resume a run whose best weights are gone (the adapter could not be the best step's).

    Raises:
        TrainingError: no complete weights file for `step`.
    """
    if step is not None and not (path_of(out, step) / _WEIGHTS).is_file():
        raise TrainingError(f"{path_of(out, step)} is missing: it held the weights of the best evaluation (step {step}), "
                            "which this run's adapter must be; pass --overwrite to train the run again")


def prune(out: RunDir, current: int | None) -> None:
    """Remove the best dirs that neither the live run (`current`) nor a kept checkpoint names."""
    from qdtool.core import checkpoint

    try:
        named = {current} | {checkpoint.saved_state(c).get("best_step") for c in checkpoint.checkpoint_dirs(out.checkpoints)}
    except TrainingError:  # a damaged checkpoint: keep everything rather than guess what it needs
        return
    if not out.best.is_dir():
        return
    remove_stale_temps(out.best)  # of a killed write; only the first process writes here, and not now
    for path in out.best.iterdir():
        number = path.name[len(_PREFIX):]
        if path.name.startswith(_PREFIX) and number.isdigit() and int(number) not in named:
            shutil.rmtree(path, ignore_errors=True)
