"""The end of a run: the adapter (with tokenizer and card) or a full run's model, the loss curve and the summary."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from qdtool.core.cards import EXAMPLE_QUESTION, adapter_card, record_base_model
from qdtool.core.files import WriteError, atomic_dir, write_json_atomic
from qdtool.core.training import best
from qdtool.core.training.state import Run, TrainResult, peak_memory_gb
from qdtool.errors import TrainingError


def finish(run: Run) -> TrainResult:
    """Write what the run made (first process) and return its result; checkpoints go once the adapter is safe."""
    from qdtool.core.tracking import plot_losses

    whole = _adapter_weights(run)
    result = _result(run)
    if run.dist.main:  # the first process writes the adapter and the summary
        (_save_model if run.config.method == "full" else _save_adapter)(run, result, whole)
        plot_losses(run.metrics.rows(), run.out.loss_plot)
        write_json_atomic(run.out.summary, result.to_dict())
        shutil.rmtree(run.out.checkpoints, ignore_errors=True)  # the adapter is final; checkpoints only served resume
        shutil.rmtree(run.out.best, ignore_errors=True)  # and the best weights are in it
    run.dist.barrier()
    return result


def _adapter_weights(run: Run) -> dict:
    """save_pretrained's state_dict: the best evaluation's weights (first process), else the model's own."""
    step = run.state.get("best_step")
    if step is not None:
        what = "model" if run.config.method == "full" else "adapter"
        if step == 0:
            run.report.warn(f"no evaluation after step 0 beat the untrained model's (by {run.config.select_by}): the {what} "
                            "holds the weights of step 0, the base model's; try another learning rate or more steps")
        run.report.info(f"{what}: the weights of step {step}, the best {run.config.select_by} ({run.state['best_score']:.4f})")
        return {"state_dict": best.load(run.out, step)} if run.dist.main else {}
    if run.sharded:  # a collective under FSDP: every process takes part
        from qdtool.core import sharding

        return {"state_dict": sharding.full_lora_weights(run.model)}
    return {}


def _result(run: Run) -> TrainResult:
    state, train_set, eval_set = run.state, run.train_set, run.eval_set
    made = run.out.model if run.config.method == "full" else run.out.adapter
    return TrainResult(
        str(run.out), str(made), run.total_steps, run.total_steps, len(train_set.samples), len(eval_set.samples),
        train_set.dropped, train_set.truncated,
        supervised_tokens=state["supervised_tokens"],
        train_seconds=state["train_seconds"],
        supervised_tokens_per_s=state["supervised_tokens"] / max(state["train_seconds"], 1e-9),
        first_eval_loss=state["first_eval_loss"],
        best_eval_loss=state["best_eval_loss"],
        final_eval_loss=state.get("final_eval_loss"),
        final_train_loss=state.get("final_train_loss"),
        selected_by=run.config.select_by,
        selected_step=state.get("best_step"),
        selected_score=state.get("best_score"),
        best_eval_sari=state.get("best_eval_sari"),
        final_eval_sari=state.get("final_eval_sari"),
        peak_memory_gb=peak_memory_gb(run.hardware.device),
        resumed_from=str(run.start_from) if run.start_from else None,
        device=run.hardware.device,
        precision=run.hardware.precision,
        trainable_params=run.trainable,
        longest_decomposition=_longest_decomposition(run),
        method=run.config.method,
        warnings=run.report.warnings,  # the same list: a warning that comes later still lands in the result
    )


def _longest_decomposition(run: Run) -> int | None:
    """The most sub-questions of a record in the training files (held-out rows included): `decompose`'s default step cap.
    Set up from the records as read (with the run's field mapping); a file read again here without it would fail."""
    return run.longest_trained


def _save_adapter(run: Run, result: TrainResult, whole: dict) -> None:
    def fill(tmp: Path) -> None:
        run.model.save_pretrained(str(tmp), **whole)
        run.tokenizer.save_pretrained(str(tmp))
        record_base_model(tmp, run.config)  # not this machine's cache path
        (tmp / "README.md").write_text(adapter_card(run.out.path, run.config, result, run.data_files), encoding="utf-8")  # not PEFT's

    _write_whole(run, run.out.adapter, "adapter", fill)


def _save_model(run: Run, result: TrainResult, whole: dict) -> None:
    """Method full: the model itself, with the best evaluation's weights, as a standalone model dir (safetensors)."""
    model = run.model
    if "state_dict" in whole:  # the best step's trainable weights, over the last step's: the run is over
        model.load_state_dict(whole["state_dict"], strict=False)
    model.config.use_cache = True  # switched off for training; generation wants it

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp))  # safetensors: the only format transformers 5 writes
        run.tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(_model_card(run, result), encoding="utf-8")

    _write_whole(run, run.out.model, "model", fill)


def _write_whole(run: Run, path: Path, what: str, fill: Callable[[Path], None]) -> None:
    """`fill` a temp dir that replaces `path` whole (a kill or a full disk leaves no half one); a failed write says how to get it."""
    from qdtool.core import checkpoint

    try:
        with atomic_dir(path) as tmp:
            fill(tmp)
    except WriteError as exc:
        kept = checkpoint.latest_checkpoint(run.out.checkpoints)
        again = f"resumes from {kept}" if kept else "trains it again (no checkpoint was due before the end)"
        raise TrainingError(f"{exc}. The {what} was not written; once there is room, the same command {again}") from None


def _model_card(run: Run, result: TrainResult) -> str:
    """model/README.md of a full fine-tuning run: what it was trained from, how well, and how to use it."""
    from qdtool import __version__

    config, path = run.config, run.out.path
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"  # noqa: E731
    frozen = "every weight trained" if config.train_embeddings else "every weight but the input embedding trained"
    return "\n".join([
        "---", "tags: [qdtool, question-decomposition, full-fine-tuning]", "---", "",
        f"# Question decomposer: `{path.name}`", "",
        "Splits a complex question into simple sub-questions (numbered, one per line; `#k` refers to the answer of step k).",
        f"`{config.model}` fully fine-tuned with qdtool {__version__} ({frozen}, fp32 master weights, {result.precision} compute, "
        f"{config.optimizer} at peak lr {config.lr:g}{f', NEFTune alpha {config.neftune_alpha:g}' if config.neftune_alpha else ''}).", "",
        f"{result.steps:,} steps; eval loss {fmt(result.first_eval_loss)} at start, {fmt(result.final_eval_loss)} at end, best "
        f"{fmt(result.best_eval_loss)}" + (f"; the weights of step {result.selected_step:,}, the best by {result.selected_by}."
                                            if result.selected_step is not None else "."), "",
        "## Use", "",
        "```bash", f"qdtool decompose --model {path} \"{EXAMPLE_QUESTION}\"", f"qdtool eval --data test.jsonl --model {path}", "```", "",
        "It is a whole model (no adapter, nothing to merge); every setting of the run is in `../run_config.yaml`.", "",
    ])
