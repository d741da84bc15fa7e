"""`train`: LoRA / QLoRA fine-tuning with answer-only loss, packing, checkpoints and resume.

The loop is our own (not HF Trainer) so that the objective, the batch stream and the checkpoint
contents are exactly what the tests pin down: a resumed run rebuilds the same micro-batch stream
(epoch e = samples shuffled with seed + e), skips what was done, and restores optimizer, scheduler
and RNG states, so it continues the same loss curve.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from qdtool.config import TrainConfig, dump_config
from qdtool.core.cards import DataFile, adapter_card, record_base_model
from qdtool.core.distributed import Dist, init_from_env
from qdtool.core.files import WriteError, atomic_dir, ensure_writable_dir, write_text_atomic
from qdtool.core.loss import answer_loss_sum
from qdtool.core.training.optim import build_optimizer, build_scheduler
from qdtool.errors import ConfigError, TrainingError, TrainingInterrupted

Event = Callable[[str, dict[str, Any]], None]

# Settings that do not change what is learned: a run may be resumed with other values.
# (max_steps and epochs are not among them: they set the LR schedule's horizon.) trust_remote_code
# comes from the command line only, so a resume without the flag is the same run, not another.
_RUN_CONTROL = {"eval_steps", "save_steps", "save_total_limit", "report_to", "run_name", "output_dir", "trust_remote_code"}


@dataclass
class TrainResult:
    output_dir: str
    adapter_dir: str
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
    peak_memory_gb: float = 0.0
    resumed_from: str | None = None
    device: str = ""
    precision: str = ""
    trainable_params: int = 0
    already_complete: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_output_dir(config: TrainConfig) -> Path:
    model = Path(config.model).name if config.model != "embedded" else "gemma-3-270m"
    data = Path(config.data).stem if config.data else "examples"
    return Path("runs") / f"{model}-{data}".replace("/", "-")


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in _RUN_CONTROL}


def prepare_output_dir(config: TrainConfig, overwrite: bool) -> Path:
    """Refuse to mix two different runs in one directory; `overwrite` clears a qdtool run dir only.

    A run that left nothing to resume or keep (no checkpoint, no adapter, no summary: its model
    failed to load, or it stopped before its first checkpoint) does not hold the directory: the
    next `train` there starts afresh with its own settings, without --overwrite.
    """
    import yaml

    out = Path(config.output_dir)
    ensure_writable_dir(out)  # a read-only or unwritable run dir fails here, before anything loads
    if out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        saved_path = out / "run_config.yaml"
        if not saved_path.is_file():
            raise ConfigError(f"{out} is not empty and holds no qdtool run; choose another --output-dir (qdtool never deletes it)")
        if overwrite:
            _lock_run_dir(out).close()  # refuses while another train holds the directory
            for path in out.iterdir():
                if path.name != ".lock":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif has_trained(out):  # else nothing there can be resumed or kept: this run's run_config.yaml replaces it
            saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
            now = config.model_dump(mode="json")
            differ = sorted(k for k in set(_comparable(saved)) | set(_comparable(now)) if saved.get(k) != now.get(k))
            if differ:
                raise ConfigError(
                    f"{out} holds a run with a different configuration (differs in: {', '.join(differ)}); "
                    "pass --overwrite to replace it, or choose another --output-dir"
                )
    out.mkdir(parents=True, exist_ok=True)
    return out


def has_trained(out: Path) -> bool:
    """Whether `out` holds something a run trained: a checkpoint to resume, an adapter, a summary."""
    from qdtool.core.checkpoint import latest_checkpoint

    return ((out / "run_summary.json").is_file() or (out / "adapter").exists()
            or latest_checkpoint(out / "checkpoints") is not None)


def _lock_run_dir(out: Path) -> Any:
    """An exclusive lock on the run directory; a second `train` on it stops with a message."""
    import fcntl

    handle = (out / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(f"another qdtool train is running in {out}; wait for it, or stop it first (Ctrl-C saves a checkpoint)") from None
    return handle


class _NoMetrics:
    """What processes other than the first write: nothing."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def rows(self) -> list[dict[str, Any]]:
        return []


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the step and stops."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
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


def _peak_memory_gb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_reserved() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def train(config: TrainConfig, *, resume: str = "auto", overwrite: bool = False, on_event: Event | None = None) -> TrainResult:
    """Train a LoRA adapter as `config` says; returns what happened (see TrainResult).

    Raises:
        ConfigError, DataError, ModelError: before any step runs, with what to change.
        TrainingError: NaN/inf loss or out of memory, with the step and likely causes.
        TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was saved first.
    """
    held: list[Any] = []
    try:
        return _train(config, resume, overwrite, on_event, held)
    finally:
        for lock in held:
            lock.close()


def _train(config: TrainConfig, resume: str, overwrite: bool, on_event: Event | None, held: list[Any]) -> TrainResult:
    import torch

    from qdtool.core import batching, checkpoint, lora, modeling
    from qdtool.core import hardware as hw
    from qdtool.core.data import read_dataset
    from qdtool.core.modeling import load_tokenizer
    from qdtool.core.tracking import MetricsFile, Tracker, plot_losses
    from qdtool.resources import default_train_files

    hardware = hw.select_device(config)
    dist = init_from_env(hardware.device == "cuda")
    if dist.enabled and hardware.device == "cuda":
        hardware = hw.Device("cuda", hardware.precision, hardware.name, dist.local_rank)
    # only the first process reports, writes and holds the run directory
    emit = (on_event or (lambda kind, payload: None)) if dist.main else (lambda kind, payload: None)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        emit("warning", {"message": message})

    # 1. everything that can fail cheaply fails before the model loads
    # Absolute paths, so run_config.yaml works from any directory (resume, merge, decompose).
    config = config.model_copy(update={
        "output_dir": Path(config.output_dir or default_output_dir(config)).resolve(),
        "data": Path(config.data).resolve() if config.data else None,
        "eval_data": Path(config.eval_data).resolve() if config.eval_data else None,
    })
    train_files = [Path(config.data)] if config.data else default_train_files()
    per_file = [read_dataset(path) for path in train_files]
    records = [r for rows in per_file for r in rows]
    eval_given = read_dataset(config.eval_data) if config.eval_data else None
    explicit = resume not in ("auto", "never")
    if explicit and not checkpoint.is_checkpoint(Path(resume)):
        raise ConfigError(f"--resume {resume}: not a complete checkpoint directory (use auto, never, or runs/NAME/checkpoints/step-N)")
    if explicit and overwrite:
        raise ConfigError("--overwrite would delete the checkpoint that --resume names; pass only one of them")
    out = Path(config.output_dir)
    if dist.main:
        out = prepare_output_dir(config, overwrite)
        held.append(_lock_run_dir(out))  # one training per run directory; released by `train`
    dist.barrier()
    finished = (out / "run_summary.json").is_file()
    if finished and resume == "auto":
        summary = json.loads((out / "run_summary.json").read_text(encoding="utf-8"))
        return TrainResult(**{**summary, "already_complete": True})
    if resume == "never" and (finished or checkpoint.latest_checkpoint(out / "checkpoints") is not None):
        raise ConfigError(f"{out} already holds this run and --resume never was given; pass --overwrite to start again")
    start_from = Path(resume) if explicit else (checkpoint.latest_checkpoint(out / "checkpoints") if resume == "auto" else None)
    data = checkpoint.data_fingerprint(train_files, [Path(config.eval_data)] if config.eval_data else [])
    counts = {"train": [len(rows) for rows in per_file], "eval": [len(eval_given)] if eval_given is not None else []}
    data_files = [DataFile(role, Path(entry["path"]), n, entry["sha256"]) for role in ("train", "eval")
                  for entry, n in zip(data[role], counts[role])]  # for the adapter's card
    if start_from is not None:  # an old, damaged or other-data checkpoint stops here, before anything loads
        checkpoint.check_same_data(start_from, checkpoint.resumable_state(start_from), data)

    if eval_given is not None:
        train_records, eval_records = records, eval_given
    else:
        train_records, eval_records = batching.split_eval(records, config.eval_split, config.eval_max_records, config.seed)

    # 2. tokenizer, samples, batch plan
    emit("info", {"message": f"loading {config.model} on {hardware.name} ({hardware.precision})"})
    progress = lambda message: emit("info", {"message": message})  # noqa: E731
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code, progress=progress)
    prompt = config.prompt_options()
    train_set = batching.encode_records(train_records, tokenizer, config.max_seq_len, config.overlong, prompt)
    eval_set = batching.encode_records(eval_records, tokenizer, config.max_seq_len, "truncate", prompt)
    if train_set.dropped or train_set.truncated:
        warn(f"{train_set.dropped} sample(s) over max_seq_len={config.max_seq_len} dropped, {train_set.truncated} truncated "
             f"(e.g. {', '.join(train_set.examples_of_overlong[:3])})")
    # one optimizer step = grad_accum micro-batches per process; process r takes every world-th one
    pad_id = tokenizer.pad_token_id or 0
    plan = batching.BatchPlan(train_set.samples, config.seed, config.packing, config.batch_tokens, config.batch_size,
                              pad_id, config.grad_accum * dist.world)
    total_steps = config.max_steps or plan.total_steps(config.epochs)
    eval_batches = batching.make_batches(eval_set.samples, config.packing, config.batch_tokens, config.batch_size, pad_id)

    # 3. model, LoRA, optimizer
    sharded = config.sharding == "fsdp" and dist.enabled
    if config.sharding == "fsdp" and not dist.enabled:
        if hardware.device == "cuda":  # the whole model on one GPU is what FSDP was chosen to avoid
            raise ConfigError("sharding fsdp needs several processes: launch with torchrun --nproc_per_node N -m qdtool train ... "
                              "(one per GPU), or pass --sharding none to train on one GPU")
        warn("sharding fsdp needs several processes (torchrun / accelerate launch); this single process trains unsharded")
    if start_from is not None:  # the batch stream and the optimizer state's layout depend on both
        saved = checkpoint.saved_state(start_from)
        written, now = (saved.get("processes", 1), saved.get("sharded", False)), (dist.world, sharded)
        if written != now:
            how = lambda n, fsdp: f"{n} process{'es' if n > 1 else ''}{' with FSDP' if fsdp else ''}"  # noqa: E731
            raise ConfigError(f"{start_from} was written by {how(*written)}; this run has {how(*now)}. Resume it as it was "
                              "written, or start over with --overwrite")
    torch.manual_seed(config.seed)  # the same LoRA initialization in every process
    model = lora.add_lora(modeling.load_base_model(config, hardware, progress, on_cpu=sharded), config)
    torch.manual_seed(config.seed + dist.rank)  # then each process its own dropout masks
    if dist.main:  # only now: a model that fails to load leaves no run behind to block the directory
        write_text_atomic(
            out / "run_config.yaml",
            f"# written by qdtool train; `qdtool train --config {out / 'run_config.yaml'}` repeats this run\n" + dump_config(config),
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loss_module = None
    if sharded:
        from qdtool.core import sharding

        if start_from is not None:  # whole LoRA weights go in before they are sharded
            checkpoint.load_adapter(start_from, model)
        loss_module = sharding.shard(model, hardware.device)
        emit("info", {"message": f"FSDP: base weights sharded over {dist.world} processes"})

    def loss_of(batch: dict[str, Any]) -> tuple[Any, int]:
        if loss_module is not None:
            loss_sum, count = loss_module(**batch)
            return loss_sum, int(count)
        return answer_loss_sum(model, batch)

    optimizer = build_optimizer(model, config, hardware)
    scheduler = build_scheduler(optimizer, config, total_steps)
    autocast = torch.autocast(device_type=hardware.device, dtype=hardware.dtype) if hardware.precision != "fp32" else None
    scaler = torch.amp.GradScaler("cuda") if hardware.precision == "fp16" else None
    start_step, state = 0, {"best_eval_loss": None, "first_eval_loss": None, "supervised_tokens": 0, "train_seconds": 0.0,
                            "processes": dist.world, "sharded": sharded, "data": data}
    if start_from is not None:
        load_optimizer = (lambda saved: sharding.load_full_optimizer_state(loss_module, optimizer, saved)) if sharded else None
        state = checkpoint.load_checkpoint(start_from, None if sharded else model, optimizer, scheduler, scaler,
                                           load_optimizer=load_optimizer, rank=dist.rank, world=dist.world)
        start_step = state["step"]
        if dist.main:
            checkpoint.drop_after(out / "checkpoints", start_step)  # an older resume point abandons newer checkpoints
        emit("info", {"message": f"resuming from {start_from} (step {start_step})"})

    result = TrainResult(str(out), str(out / "adapter"), start_step, total_steps, len(train_set.samples), len(eval_set.samples),
                         train_set.dropped, train_set.truncated, resumed_from=str(start_from) if start_from else None,
                         device=hardware.device, precision=hardware.precision, trainable_params=trainable, warnings=warnings)
    metrics = MetricsFile(out / "metrics.jsonl", start_step) if dist.main else _NoMetrics()
    tracker = Tracker(config.report_to if dist.main else "none", out, config.run_name or out.name, config.model_dump(mode="json"), warn)

    def evaluate(step: int) -> float:
        model.eval()
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                for mb, weight in dist.share(eval_batches, lockstep=sharded):
                    with autocast or nullcontext():
                        loss_sum, n = loss_of(mb.to_tensors(hardware.device))
                    if weight:
                        total, count = total + float(loss_sum), count + n
        except torch.cuda.OutOfMemoryError as exc:
            raise TrainingError(_oom_message(step, config, "evaluation")) from exc
        model.train()
        total, count = dist.sum([total, float(count)])
        value = total / max(count, 1)
        if state["first_eval_loss"] is None:
            state["first_eval_loss"] = value
        if state["best_eval_loss"] is None or value < state["best_eval_loss"]:
            state["best_eval_loss"] = value
        row = {"step": step, "eval_loss": value}
        metrics.write(row)
        tracker.log(row, step)
        emit("eval", row)
        state["final_eval_loss"] = value
        return value

    emit("start", {"total_steps": total_steps, "start_step": start_step, "train_samples": len(train_set.samples),
                   "eval_samples": len(eval_set.samples), "trainable_params": trainable, "output_dir": str(out),
                   "device": hardware.name, "precision": hardware.precision})
    model.train()
    if start_step == 0:
        evaluate(0)
    step = start_step
    with _StopFlag() as stop:
        try:
            for step, epoch, micro in plan.steps(start_step):
                if step >= total_steps:
                    break
                row = _train_step(model, optimizer, scheduler, scaler, autocast, micro, config, hardware, step, dist, loss_of, sharded)
                state["supervised_tokens"] += row["supervised_tokens"]
                state["train_seconds"] += row["seconds"]
                state["final_train_loss"] = row["loss"]
                row.update(epoch=round(epoch, 4), peak_memory_gb=round(_peak_memory_gb(hardware.device), 3))
                metrics.write(row)
                tracker.log(row, step + 1)
                emit("step", row)
                done = step + 1
                asked = dist.sum([1.0 if stop.signum is not None else 0.0])[0] > 0  # every process stops at the same step
                stopping = asked and done < total_steps  # on the last step, just finish
                if not stopping and (done % config.eval_steps == 0 or done == total_steps):
                    evaluate(done)
                if done < total_steps and (stopping or done % config.save_steps == 0):
                    # collectives: every process takes part, the first one writes
                    gathered: dict[str, Any] = {"rng_states": dist.gather(checkpoint.rng_state())}  # each its own dropout
                    if sharded:
                        gathered.update(adapter_state=sharding.full_adapter_state(model),
                                        optimizer_state=sharding.full_optimizer_state(loss_module, optimizer))
                    if dist.main:
                        path = _save_checkpoint(out, done, model, optimizer, scheduler, state, config, scaler, gathered)
                        emit("checkpoint", {"path": str(path), "step": done})
                    dist.barrier()
                if stopping:
                    name = signal.Signals(stop.signum or signal.SIGTERM).name
                    raise TrainingInterrupted(
                        f"{name} received: checkpoint saved at step {done} in {out / 'checkpoints'}. "
                        f"Resume with: qdtool train --config {out / 'run_config.yaml'}",
                        128 + (stop.signum or signal.SIGTERM),
                    )
        finally:
            tracker.close()

    # 4. the adapter, tokenizer, curve and summary
    result.steps = total_steps
    whole = {"state_dict": sharding.full_lora_weights(model)} if sharded else {}  # a collective under FSDP
    if not dist.main:  # the first process writes the adapter and the summary
        dist.barrier()
        return result
    result.supervised_tokens = state["supervised_tokens"]
    result.train_seconds = state["train_seconds"]
    result.supervised_tokens_per_s = state["supervised_tokens"] / max(state["train_seconds"], 1e-9)
    result.first_eval_loss, result.best_eval_loss = state["first_eval_loss"], state["best_eval_loss"]
    result.final_train_loss = state.get("final_train_loss")
    result.final_eval_loss = state.get("final_eval_loss")
    result.peak_memory_gb = _peak_memory_gb(hardware.device)
    try:
        with atomic_dir(out / "adapter") as tmp:  # a kill or a full disk leaves no half adapter
            model.save_pretrained(str(tmp), **whole)
            tokenizer.save_pretrained(str(tmp))
            record_base_model(tmp, config)  # not this machine's cache path
            (tmp / "README.md").write_text(adapter_card(out, config, result, data_files), encoding="utf-8")  # not PEFT's empty one
    except WriteError as exc:
        kept = checkpoint.latest_checkpoint(out / "checkpoints")
        again = f"resumes from {kept}" if kept else "trains it again (no checkpoint was due before the end)"
        raise TrainingError(f"{exc}. The adapter was not written; once there is room, the same command {again}") from None
    plot_losses(metrics.rows(), out / "loss.png")
    write_text_atomic(out / "run_summary.json", json.dumps(result.to_dict(), indent=2))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the adapter is final; checkpoints only served resume
    emit("done", result.to_dict())
    dist.barrier()
    return result


def _save_checkpoint(out: Path, step: int, model, optimizer, scheduler, state: dict[str, Any], config: TrainConfig, scaler,
                     gathered: dict[str, Any]) -> Path:
    from qdtool.core import checkpoint

    root = out / "checkpoints"
    try:
        return checkpoint.save_checkpoint(root, step, model, optimizer, scheduler, state, config.save_total_limit, scaler, **gathered)
    except WriteError as exc:  # the partial checkpoint is gone; the older ones are untouched
        kept = checkpoint.latest_checkpoint(root)
        resume = (f"{kept} is kept, and once there is room `qdtool train --config {out / 'run_config.yaml'}` resumes from it"
                  if kept else "no earlier checkpoint exists, so once there is room the same command starts the run over")
        raise TrainingError(f"{exc}. The step-{step} checkpoint was not saved; {resume}") from None


def _train_step(model, optimizer, scheduler, scaler, autocast, micro, config: TrainConfig, hardware, step: int,
                dist: Dist = Dist(), loss_of: Any = None, sharded: bool = False) -> dict[str, Any]:
    import torch

    loss_of = loss_of or (lambda batch: answer_loss_sum(model, batch))
    try:
        return _optimizer_step(model, optimizer, scheduler, scaler, autocast, micro, config, hardware, step, dist, loss_of, sharded)
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(_oom_message(step, config, "training")) from exc


def _optimizer_step(model, optimizer, scheduler, scaler, autocast, micro, config: TrainConfig, hardware, step: int,
                    dist: Dist, loss_of: Any, sharded: bool) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    n_supervised = sum(mb.supervised_tokens for mb in micro)  # of the whole step, over all processes
    loss_value = 0.0
    for mb, weight in dist.share(micro, lockstep=sharded):
        with autocast or nullcontext():
            loss_sum, _ = loss_of(mb.to_tensors(hardware.device))
        loss = loss_sum * weight / max(n_supervised, 1)  # token mean over the whole step, not per micro-batch
        # FSDP averages gradients over processes; the sum is wanted, as the loss is already a share of the step
        scaled = loss * dist.world if sharded else loss
        (scaler.scale(scaled) if scaler else scaled).backward()
        loss_value += float(loss.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    if not sharded:  # FSDP has already summed them (reduce-scatter in backward)
        dist.sum_gradients(params)  # each process holds its share of the step's token-mean gradient
    loss_value = dist.sum([loss_value])[0]
    if not math.isfinite(loss_value):
        raise TrainingError(
            f"the loss became {loss_value} at step {step + 1}. Likely causes: a learning rate too high "
            f"(now {config.lr:g}; try {config.lr / 4:g}), fp16 overflow (use --precision bf16 or fp32), or broken "
            "samples (run `qdtool validate-data`). Checkpoints before this step are kept."
        )
    if scaler:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm if config.max_grad_norm > 0 else float("inf"))
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a replicated DTensor
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if hardware.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "step": step + 1,
        "loss": loss_value,
        "lr": lr,
        "grad_norm": grad_norm,
        "supervised_tokens": n_supervised,
        "tokens": sum(mb.tokens for mb in micro),
        "samples": sum(mb.n_samples for mb in micro),
        "seconds": seconds,
        "supervised_tokens_per_s": n_supervised / seconds,
    }


def _oom_message(step: int, config: TrainConfig, phase: str) -> str:
    import torch

    used = torch.cuda.memory_reserved() / 2**30 if torch.cuda.is_available() else 0.0
    total = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0.0
    return (
        f"out of GPU memory during {phase} at step {step + 1} ({used:.1f} of {total:.1f} GiB reserved). Try, in this order: "
        f"--batch-tokens {max(config.max_seq_len, config.batch_tokens // 2)} (now {config.batch_tokens}), "
        "--gradient-checkpointing, --quantization 4bit, "
        f"--max-seq-len {max(64, config.max_seq_len // 2)} (now {config.max_seq_len}), or a smaller model."
    )
