"""`merge`: fold a run's LoRA adapter into its base model and save a standalone model.

The base is always loaded in the chosen 16/32-bit precision, never in 4-bit, even for a QLoRA run:
merging into a quantized base and re-quantizing drifts silently. Before reporting success, the
merged model's logits are compared with base + adapter on rendered prompts. The output directory
is built beside its destination and swapped in whole, with qdtool_merge.json written last.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qdtool.core.files import read_json, write_json_atomic
from qdtool.core.rundir import RunDir
from qdtool.errors import ConfigError, TrainingError, UsageError

MARKER = "qdtool_merge.json"  # written last: a merge output without it is incomplete

# Max |logit difference| accepted between merged and base + adapter, per dtype. Merging rounds
# W + BA once to the dtype; bf16 keeps 8 mantissa bits, so logits of size ~30 may move by ~0.1-0.3.
TOLERANCE = {"fp32": 1e-3, "fp16": 0.1, "bf16": 0.5}
_PROBES = [
    "Was Aristotle alive when the laptop was invented?",
    "Could a llama birth twice during the War in Vietnam?",
    "세종대왕이 태어났을 때 조선은 건국된 지 100년이 넘었는가?",
]

Progress = Callable[[str], None]


@dataclass
class MergeResult:
    output_dir: str
    base_model: str
    dtype: str
    max_abs_logit_diff: float
    tolerance: float
    parameters: int
    size_gb: float
    longest_decomposition: int | None = None  # from the run's summary: decompose's default step cap for this model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge(run_dir: str | Path, output: str | Path | None = None, *, dtype: str = "bf16", overwrite: bool = False,
          trust_remote_code: bool = False, progress: Progress | None = None) -> MergeResult:
    """Merge `run_dir/adapter` into its base model and save safetensors + tokenizer + model card.

    The output is built in a temp dir beside it and swapped in whole (core/files.atomic_dir): an
    earlier merge survives until the new one is complete, and a kill leaves one or the other.

    Args:
        trust_remote_code: run the base model repo's own code; only the caller's say-so counts,
            never the run dir's run_config.yaml (a run dir may come from anyone).

    Raises:
        UsageError: not a finished run dir; output exists without `overwrite`; not writable; not enough disk.
        ModelError: the adapter is a pickle (.bin) file; the base model cannot be loaded.
        TrainingError: the merged logits differ from base + adapter beyond the tolerance (exit 1).
        WriteError: the disk refused the write; nothing is left half-written.
    """
    from qdtool.config import load_train_config
    from qdtool.core.files import ensure_writable_dir
    from qdtool.core.modeling import check_available, refuse_pickle_weights

    say = progress or (lambda _m: None)
    run = RunDir(run_dir)
    _check_run(run)
    if dtype not in TOLERANCE:
        raise ConfigError(f"--dtype must be one of {', '.join(TOLERANCE)} (got {dtype})")
    out = Path(output) if output else run.merged
    _check_output(out, overwrite)
    refuse_pickle_weights(run.adapter, adapter=True)  # before anything is loaded
    ensure_writable_dir(out.parent)  # a read-only destination fails now, not after loading and checking the model
    config = load_train_config(run.config)
    check_available(config.model, say)  # a base model that cannot be had fails now, before torch is imported

    say(f"loading {config.model} in {dtype} (never 4-bit, whatever the training used)")
    model, tokenizer, parameters, size_gb = _load(run, config, dtype, out, trust_remote_code, say)
    merged, diff = _merge_checked(model, tokenizer, config, dtype, say)
    say(f"writing {out}")
    result = MergeResult(str(out), config.model, dtype, diff, TOLERANCE[dtype], parameters, round(size_gb, 3),
                         read_json(run.summary, default={}).get("longest_decomposition"))
    _write(out, run, config, merged, tokenizer, result)
    return result


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, or a directory that `overwrite` may not (or must never) replace."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; --output takes a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out} already exists; pass --overwrite to replace it, or --output another directory")
        if not (out / MARKER).is_file():
            raise UsageError(f"{out} is not a complete qdtool merge output (no {MARKER}); qdtool will not delete it. If it is "
                             "what an interrupted merge left, remove it yourself; otherwise choose another --output")


def _load(run: RunDir, config: Any, dtype: str, out: Path, trust_remote_code: bool, say: Progress) -> tuple[Any, Any, int, float]:
    """Base + adapter in `dtype`, its tokenizer, the base's parameter count and size in GB (checked against the free disk)."""
    import torch
    from peft import PeftModel

    from qdtool.core.hardware import torch_dtype
    from qdtool.core.modeling import load_model, load_tokenizer

    base = load_model(config.model, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, progress=say)
    parameters = sum(p.numel() for p in base.parameters())
    size_gb = parameters * torch.finfo(torch_dtype(dtype)).bits / 8 / 1e9
    _check_disk(out, size_gb)
    tokenizer = load_tokenizer(str(run.adapter))
    return PeftModel.from_pretrained(base, str(run.adapter)).eval(), tokenizer, parameters, size_gb


def _merge_checked(model: Any, tokenizer: Any, config: Any, dtype: str, say: Progress) -> tuple[Any, float]:
    """The merged model and its max |logit difference| from base + adapter on rendered prompts.

    Raises:
        TrainingError: the logits are not finite, or differ beyond the tolerance for `dtype`.
    """
    import torch

    say("checking: logits of base + adapter")
    batch = _probe_batch(tokenizer, config)
    with torch.no_grad():
        expected = model(**batch).logits.float()
    say("merging")
    merged = model.merge_and_unload().eval()
    with torch.no_grad():
        got = merged(**batch).logits.float()
    mask = batch["attention_mask"].bool()
    diff = float((got - expected).abs()[mask].max())
    finite = bool(torch.isfinite(expected[mask]).all() and torch.isfinite(got[mask]).all())
    if not finite:
        raise TrainingError(f"merge check failed: the model produces non-finite logits in {dtype}; nothing was written. "
                            "Try --dtype fp32 or bf16.")
    if diff > TOLERANCE[dtype]:
        raise TrainingError(
            f"merge check failed: merged logits differ from base + adapter by {diff:.4g} (tolerance {TOLERANCE[dtype]} for {dtype}); "
            "nothing was written. Try --dtype fp32."
        )
    return merged, diff


def _write(out: Path, run: RunDir, config: Any, merged: Any, tokenizer: Any, result: MergeResult) -> None:
    """The merged model, tokenizer, generation config, run config and card, swapped in whole at `out`."""
    from qdtool.core.files import atomic_dir

    merged.config.use_cache = True
    with atomic_dir(out, needed_bytes=int(result.size_gb * 1e9)) as tmp:
        merged.save_pretrained(str(tmp), max_shard_size="2GB")  # safetensors (the only format transformers 5 writes)
        tokenizer.save_pretrained(str(tmp))
        _generation_config(merged, tokenizer).save_pretrained(str(tmp))
        shutil.copy(run.config, tmp / run.config.name)  # decompose reads the prompt settings from it
        (tmp / "README.md").write_text(model_card(run, config, result), encoding="utf-8")
        write_json_atomic(tmp / MARKER, result.to_dict())  # last: the dir is complete


def _check_run(run: RunDir) -> None:
    """A finished run dir, or a message that says what it lacks."""
    if not run.is_run():
        owner = RunDir.holding_adapter(run.path)
        if owner is not None:
            raise UsageError(f"{run} is the adapter of a run; pass the run directory instead: qdtool merge {owner}")
        raise UsageError(f"{run} is not a qdtool run (it has no run_config.yaml); train one with `qdtool train`")
    if not run.has_adapter():
        raise UsageError(f"{run} has no adapter/ (adapter/adapter_config.json): the run may not have finished training. "
                         f"Resume it with `{run.resume_command}`")


def _probe_batch(tokenizer: Any, config: Any) -> dict[str, Any]:
    """Rendered prompts with an answer, as training encodes them (`encode_sample`), right-padded."""
    import torch

    from qdtool.core.prompts import encode_sample

    rows = [encode_sample(tokenizer, q, ["First step?", "Second step using #1?"], config.prompt_options()).input_ids for q in _PROBES]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
    }


def _generation_config(model: Any, tokenizer: Any) -> Any:
    """Greedy decoding that stops at the EOS the model was trained to emit."""
    from transformers import GenerationConfig

    config = GenerationConfig.from_model_config(model.config)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.do_sample = False
    config.max_new_tokens = 256
    return config


def _check_disk(out: Path, size_gb: float) -> None:
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    free_gb = shutil.disk_usage(parent).free / 1e9
    if free_gb < size_gb * 1.1 + 0.1:
        raise UsageError(f"not enough disk space for the merged model: {size_gb:.1f} GB needed, {free_gb:.1f} GB free at {parent}")


def model_card(run: RunDir, config: Any, result: MergeResult) -> str:
    from qdtool import __version__
    from qdtool.config import dump_config

    licence = (
        "Gemma Terms of Use (https://ai.google.dev/gemma/terms): this is a derivative of Gemma 3 270M."
        if config.model == "embedded" else f"the licence of the base model `{config.model}` applies; see its model card."
    )
    summary = read_json(run.summary, default={})
    data = str(config.data) if config.data else "qdtool's bundled examples (StrategyQA, MIT; Korean samples by the qdtool team)"
    lines = [
        "---", "tags: [qdtool, question-decomposition, lora-merged]", "---", "",
        f"# Question decomposer merged from `{run.path.name}`", "",
        "Splits a complex question into simple sub-questions (numbered, one per line; `#k` refers to the answer of step k).",
        f"Made with qdtool {__version__}: LoRA fine-tuning, then the adapter merged into the base in {result.dtype}.", "",
        "| | |", "|---|---|",
        f"| base model | `{config.model}` |",
        f"| licence | {licence} |",
        f"| training data | {data} |",
        f"| samples | {summary.get('train_records', '?')} train / {summary.get('eval_records', '?')} eval |",
        f"| steps | {summary.get('steps', '?')} |",
        f"| eval loss (answer tokens) | {_fmt(summary.get('first_eval_loss'))} → {_fmt(summary.get('final_eval_loss'))} |",
        f"| merge check | max abs logit difference {result.max_abs_logit_diff:.3g} (tolerance {result.tolerance}) |",
        "",
    ]
    report = read_json(run.path / "eval" / "report.json", default=None)
    if isinstance(report, dict):
        metrics = report.get("metrics", {})
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if isinstance(v, (int, float))]
        lines.append("")
    lines += ["## Use", "", "```bash",
              f"qdtool decompose --model {result.output_dir} \"Was Aristotle alive when the laptop was invented?\"", "```", "",
              "## Training configuration", "", "```yaml", dump_config(config).rstrip(), "```", ""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "-")
