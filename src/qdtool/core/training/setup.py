"""Setting a run up: everything that can fail cheaply fails first, before the model loads."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdtool.config import TrainConfig
from qdtool.core.cards import DataFile
from qdtool.core.distributed import Dist, init_from_env
from qdtool.core.events import OnEvent
from qdtool.core.rundir import RunDir
from qdtool.core.training import outdir
from qdtool.core.training.model import Built, build_model
from qdtool.core.training.optim import build_optimizer, build_scheduler
from qdtool.core.training.state import Reporter, Run, TrainResult
from qdtool.core.training.step import loss_function


def setup(config: TrainConfig, resume: str, overwrite: bool, on_event: OnEvent | None, held: ExitStack) -> Run | TrainResult:
    """A run ready for its first step, or the saved result of one already complete."""
    hardware, dist = _hardware(config)
    report = Reporter(on_event, dist.main)  # only the first process reports, writes and holds the run directory
    config = _absolute_paths(config)
    inputs = _Inputs.read(config)
    outdir.check_resume_arguments(resume, overwrite)
    out = outdir.claim(config, overwrite, dist, held)
    done = outdir.finished_result(out, resume)
    if done is not None:
        return done
    start_from = outdir.resume_point(out, resume)
    data, data_files = _fingerprint(config, inputs, start_from)  # an old, damaged or other-data checkpoint stops here
    samples = _samples(config, inputs, hardware, dist, report)
    built = build_model(config, hardware, dist, start_from, out, report)
    run = _assemble(config, hardware, dist, out, report, samples, built, start_from, data_files)
    run.state = {"best_eval_loss": None, "first_eval_loss": None, "supervised_tokens": 0, "train_seconds": 0.0,
                 "processes": dist.world, "sharded": built.sharded, "data": data, "best_step": None, "best_score": None,
                 "best_eval_sari": None, "method": config.method}
    _decoding(run, samples.eval_records, inputs)
    if start_from is not None:
        _resume(run, start_from)
    _open_outputs(run)
    return run


def _hardware(config: TrainConfig) -> tuple[Any, Dist]:
    from qdtool.core import hardware as hw

    hardware = hw.select_device(config)
    dist = init_from_env(hardware.device == "cuda")
    if dist.enabled and hardware.device == "cuda":
        hardware = hw.Device("cuda", hardware.precision, hardware.name, dist.local_rank)
    return hardware, dist


def _absolute_paths(config: TrainConfig) -> TrainConfig:
    """Absolute paths, so run_config.yaml works from any directory (resume, merge, decompose); a hub dataset stays as written."""
    from qdtool.core.sources import is_hub

    def absolute(spec: str | None) -> str | None:
        return spec if spec is None or is_hub(str(spec)) else str(Path(spec).resolve())

    return config.model_copy(update={
        "output_dir": Path(config.output_dir or outdir.default_output_dir(config)).resolve(),
        "data": absolute(config.data),
        "eval_data": absolute(config.eval_data),
    })


@dataclass
class _Inputs:
    train_files: list[str | Path]  # files, save_to_disk dirs or hf://datasets/NAME[:SPLIT]
    per_file: list[list[Any]]  # the records of each training file
    eval_given: list[Any] | None  # the records of --eval-data, if given

    @classmethod
    def read(cls, config: TrainConfig) -> _Inputs:
        """The records, read with the config's field mapping (kept in run_config.yaml, so a resume reads them alike);
        the bundled examples use the default names."""
        from qdtool.core.data import Fields, read_dataset
        from qdtool.resources import default_train_files

        fields = Fields.of(config.question_field, config.steps_field)
        if config.data:
            train_files, per_file = [config.data], [read_dataset(config.data, fields=fields)]  # train first: its errors come first
        else:
            train_files = default_train_files()
            per_file = [read_dataset(path) for path in train_files]
        return cls(train_files, per_file, read_dataset(config.eval_data, fields=fields) if config.eval_data else None)


def _fingerprint(config: TrainConfig, inputs: _Inputs, start_from: Path | None) -> tuple[dict[str, Any], list[DataFile]]:
    """The data's fingerprint (a resume must see the same files) and the card's list of data files."""
    from qdtool.core import checkpoint

    given = inputs.eval_given
    data = {"train": [_data_entry(spec, rows) for spec, rows in zip(inputs.train_files, inputs.per_file, strict=True)],
            "eval": [_data_entry(config.eval_data, given)] if config.eval_data else []}
    counts = {"train": [len(rows) for rows in inputs.per_file], "eval": [len(given)] if given is not None else []}
    data_files = [DataFile(role, Path(entry["path"]), n, entry["sha256"]) for role in ("train", "eval")
                  for entry, n in zip(data[role], counts[role], strict=False)]
    if start_from is not None:
        checkpoint.check_same_data(start_from, checkpoint.resumable_state(start_from), data)
    return data, data_files


def _data_entry(spec: str | Path, records: list[Any]) -> dict[str, Any]:
    """A file's size and SHA-256; for a saved dataset's directory or a hub dataset, those of its records written
    as sorted JSON lines (what a resume must train on again, however the dataset is stored or cached)."""
    import hashlib
    import json

    from qdtool.core import checkpoint
    from qdtool.core.sources import source_kind

    if source_kind(spec) not in ("hub", "dataset"):
        return checkpoint.data_fingerprint([Path(spec)], [])["train"][0]
    digest, size = hashlib.sha256(), 0
    for record in records:
        line = json.dumps(record.to_dict(), sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass") + b"\n"
        digest.update(line)
        size += len(line)
    return {"path": str(spec), "size": size, "sha256": digest.hexdigest()}


@dataclass
class _Samples:
    tokenizer: Any
    train_set: Any
    eval_set: Any
    plan: Any
    eval_batches: list[Any]
    total_steps: int
    eval_records: list[Any]


def _samples(config: TrainConfig, inputs: _Inputs, hardware: Any, dist: Dist, report: Reporter) -> _Samples:
    """Tokenizer, encoded samples and the batch plan."""
    from qdtool.core import batching
    from qdtool.core.modeling import load_tokenizer

    records = [r for rows in inputs.per_file for r in rows]
    if inputs.eval_given is not None:
        train_records, eval_records = records, inputs.eval_given
    else:
        train_records, eval_records = batching.split_eval(records, config.eval_split, config.eval_max_records, config.seed)
    report.info(f"loading {config.model} on {hardware.name} ({hardware.precision})")
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code, progress=report.info)
    prompt = config.prompt_options()
    train_set = batching.encode_records(train_records, tokenizer, config.max_seq_len, config.overlong, prompt)
    eval_set = batching.encode_records(eval_records, tokenizer, config.max_seq_len, "truncate", prompt)
    if train_set.dropped or train_set.truncated:
        report.warn(f"{train_set.dropped} sample(s) over max_seq_len={config.max_seq_len} dropped, {train_set.truncated} truncated "
                    f"(e.g. {', '.join(train_set.examples_of_overlong[:3])})")
    # one optimizer step = grad_accum micro-batches per process; process r takes every world-th one
    pad_id = tokenizer.pad_token_id or 0
    plan = batching.BatchPlan(train_set.samples, config.seed, config.packing, config.batch_tokens, config.batch_size,
                              pad_id, config.grad_accum * dist.world)
    eval_batches = batching.make_batches(eval_set.samples, config.packing, config.batch_tokens, config.batch_size, pad_id)
    return _Samples(tokenizer, train_set, eval_set, plan, eval_batches, config.max_steps or plan.total_steps(config.epochs),
                    eval_records)


def _assemble(config: TrainConfig, hardware: Any, dist: Dist, out: RunDir, report: Reporter, samples: _Samples, built: Built,
              start_from: Path | None, data_files: list[DataFile]) -> Run:
    """The run with its optimizer, schedule and mixed precision, at step 0."""
    import torch

    optimizer = build_optimizer(built.model, config, hardware)
    scheduler = build_scheduler(optimizer, config, samples.total_steps)
    autocast = torch.autocast(device_type=hardware.device, dtype=hardware.dtype) if hardware.precision != "fp32" else None
    scaler = torch.amp.GradScaler("cuda") if hardware.precision == "fp16" else None
    return Run(config, hardware, dist, out, report, samples.tokenizer, samples.train_set, samples.eval_set, samples.plan,
               samples.eval_batches, samples.total_steps, built.model, built.loss_module, loss_function(built.model, built.loss_module),
               built.sharded, built.trainable, optimizer, scheduler, scaler, autocast, start_from, data_files, state={})


def _resume(run: Run, start_from: Path) -> None:
    """Weights, optimizer, schedule and RNG states from `start_from`; newer checkpoints are dropped."""
    from qdtool.core import checkpoint
    from qdtool.core.training import best

    load_optimizer = None
    if run.sharded:
        from qdtool.core import sharding

        load_optimizer = lambda saved: sharding.load_full_optimizer_state(run.loss_module, run.optimizer, saved)  # noqa: E731
    run.state = checkpoint.load_checkpoint(start_from, None if run.sharded else run.model, run.optimizer, run.scheduler, run.scaler,
                                           load_optimizer=load_optimizer, rank=run.dist.rank, world=run.dist.world)
    run.start_step = run.state["step"]
    best.check_kept(run.out, run.state.get("best_step"))
    if run.dist.main:
        checkpoint.drop_after(run.out.checkpoints, run.start_step)  # an older resume point abandons newer checkpoints
        best.prune(run.out, run.state.get("best_step"))  # and the best weights of their future
    run.report.info(f"resuming from {start_from} (step {run.start_step})")


def _decoding(run: Run, eval_records: list[Any], inputs: _Inputs) -> None:
    """The eval records decoded at each evaluation (none under FSDP), and the step cap of their decoding."""
    from qdtool.core.training import decode

    run.longest_trained = max((len(r.sub_questions) for rows in inputs.per_file for r in rows), default=None)
    if run.sharded:  # generate() runs outside the FSDP root, which gathers the embeddings and the head
        if run.config.eval_decode_records:
            run.report.warn("eval SARI is not computed under sharding fsdp (no process holds the whole model to decode with); "
                            "the adapter is selected by eval_loss")
        return
    run.decode_rows = decode.choose_rows(eval_records, run.config, run.tokenizer, run.model, run.report.warn)
    if run.decode_rows:
        run.report.info(f"eval SARI: {len(run.decode_rows)} of {len(eval_records)} eval records decoded at each evaluation")


class _NoMetrics:
    """What processes other than the first write: nothing."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def rows(self) -> list[dict[str, Any]]:
        return []


def _open_outputs(run: Run) -> None:
    """metrics.jsonl (cut back to the resumed step) and the tracker, in the first process only."""
    from qdtool.core.tracking import MetricsFile, Tracker

    main, out = run.dist.main, run.out
    run.metrics = MetricsFile(out.metrics, run.start_step) if main else _NoMetrics()
    run.tracker = Tracker(run.config.report_to if main else "none", out.path, run.config.run_name or out.path.name,
                          run.config.model_dump(mode="json"), run.report.warn)
