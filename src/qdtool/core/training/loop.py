"""The training loop: steps, evaluations, checkpoints, and a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from qdtool.core.events import Checkpoint, Eval, Start, Step
from qdtool.core.files import WriteError
from qdtool.core.training import best, decode
from qdtool.core.training import step as one_step  # looked up at each step, so tests and benchmarks can wrap it
from qdtool.core.training.signals import StopFlag, interrupted
from qdtool.core.training.state import Run, peak_memory_gb
from qdtool.errors import TrainingError


def run_loop(run: Run) -> None:
    """Train from `run.start_step` to `run.total_steps`, evaluating and checkpointing as configured.

    Raises:
        TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was saved first.
    """
    run.report(Start(run.total_steps, run.start_step, len(run.train_set.samples), len(run.eval_set.samples), run.trainable,
                     str(run.out), run.hardware.name, run.hardware.precision))
    run.model.train()
    with StopFlag() as stop:  # in place before the step-0 evaluation, which can take minutes
        try:
            if run.start_step == 0:
                evaluate(run, 0)
                if _stop_asked(run, stop):
                    raise interrupted(stop.signum, None, run.out)
            for step, epoch, micro in run.plan.steps(run.start_step):
                if step >= run.total_steps:
                    break
                row = one_step.train_step(run.model, run.optimizer, run.scheduler, run.scaler, run.autocast, micro, run.config,
                                          run.hardware, step, run.dist, run.loss_of, run.sharded)
                _record(run, row, epoch)
                _after_step(run, step + 1, stop)
        finally:
            run.tracker.close()


def _record(run: Run, row: dict[str, Any], epoch: float) -> None:
    run.state["supervised_tokens"] += row["supervised_tokens"]
    run.state["train_seconds"] += row["seconds"]
    run.state["final_train_loss"] = row["loss"]
    row.update(epoch=round(epoch, 4), peak_memory_gb=round(peak_memory_gb(run.hardware.device), 3))
    run.metrics.write(row)
    run.tracker.log(row, row["step"])
    run.report(Step(**row))


def _after_step(run: Run, done: int, stop: StopFlag) -> None:
    """Evaluate, checkpoint and stop as due after `done` steps."""
    stopping = _stop_asked(run, stop) and done < run.total_steps  # on the last step, just finish
    if not stopping and (done % run.config.eval_steps == 0 or done == run.total_steps):
        evaluate(run, done)
    if done < run.total_steps and (stopping or done % run.config.save_steps == 0):
        _checkpoint(run, done)
    if stopping:
        raise interrupted(stop.signum, done, run.out)


def _stop_asked(run: Run, stop: StopFlag) -> bool:
    """Whether any process got SIGINT/SIGTERM: a collective, so that every process stops at the same step."""
    return run.dist.sum([1.0 if stop.signum is not None else 0.0])[0] > 0


def evaluate(run: Run, step: int) -> float:
    """The eval loss (token mean over all processes) and eval SARI after `step` steps; recorded, tracked and
    reported, and the weights kept if they are the best so far (core/training/best.py)."""
    total, count = _eval_sums(run, step)
    value = total / max(count, 1)
    sari = decode.eval_sari(run, step)
    _remember(run.state, value, sari)
    row = {"step": step, "eval_loss": value, **({"eval_sari": sari} if sari is not None else {})}
    run.metrics.write(row)
    run.tracker.log(row, step)
    best.consider(run, step, value, sari)
    run.report(Eval(step, value, sari))
    return value


def _remember(state: dict[str, Any], loss: float, sari: float | None) -> None:
    if state["first_eval_loss"] is None:
        state["first_eval_loss"] = loss
    if state["best_eval_loss"] is None or loss < state["best_eval_loss"]:
        state["best_eval_loss"] = loss
    state["final_eval_loss"] = loss
    if sari is not None:
        state["final_eval_sari"] = sari
        if state.get("best_eval_sari") is None or sari > state["best_eval_sari"]:
            state["best_eval_sari"] = sari


def _eval_sums(run: Run, step: int) -> tuple[float, float]:
    import torch

    run.model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for mb, weight in run.dist.share(run.eval_batches, lockstep=run.sharded):
                with run.autocast or nullcontext():
                    loss_sum, n = run.loss_of(mb.to_tensors(run.hardware.device))
                if weight:
                    total, count = total + float(loss_sum), count + n
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(one_step.oom_message(step, run.config, "evaluation")) from exc
    run.model.train()
    total, count = run.dist.sum([total, float(count)])
    return total, count


def _checkpoint(run: Run, done: int) -> None:
    """A resume point after `done` steps: collectives in every process, written by the first."""
    from qdtool.core import checkpoint

    gathered: dict[str, Any] = {"rng_states": run.dist.gather(checkpoint.rng_state())}  # each its own dropout
    if run.sharded:
        from qdtool.core import sharding

        gathered.update(adapter_state=sharding.full_adapter_state(run.model),
                        optimizer_state=sharding.full_optimizer_state(run.loss_module, run.optimizer))
    if run.dist.main:
        path = _save_checkpoint(run, done, gathered)
        best.prune(run.out, run.state.get("best_step"))  # the rotation may have dropped the last checkpoint naming an older best
        run.report(Checkpoint(done, str(path)))
    run.dist.barrier()


def _save_checkpoint(run: Run, step: int, gathered: dict[str, Any]) -> Path:
    from qdtool.core import checkpoint

    root = run.out.checkpoints
    try:
        return checkpoint.save_checkpoint(root, step, run.model, run.optimizer, run.scheduler, run.state, run.config.save_total_limit,
                                          run.scaler, **gathered)
    except WriteError as exc:  # the partial checkpoint is gone; the older ones are untouched
        kept = checkpoint.latest_checkpoint(root)
        resume = (f"{kept} is kept, and once there is room `{run.out.resume_command}` resumes from it"
                  if kept else "no earlier checkpoint exists, so once there is room the same command starts the run over")
        raise TrainingError(f"{exc}. The step-{step} checkpoint was not saved; {resume}") from None
