"""What `train` writes into adapter/ besides the weights: our model card, and a base-model
reference that means the same on any machine.

PEFT's own card is an empty template, and its adapter_config.json names the directory the base
model was loaded from (for `embedded`, this machine's cache). qdtool loads a run's base model from
run_config.yaml, so the reference in adapter_config.json is for people and other tools: it is the
spec as given to `train` (`embedded`, a hub id, or the local path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdtool.config import TrainConfig
from qdtool.core.files import read_json, write_json_atomic

ADAPTER_CONFIG = "adapter_config.json"
EXAMPLE_QUESTION = "Was Aristotle alive when the laptop was invented?"


@dataclass(frozen=True)
class DataFile:
    role: str  # "train" or "eval"
    path: Path
    records: int
    sha256: str


def record_base_model(adapter_dir: Path, config: TrainConfig) -> None:
    """Replace the machine-specific base_model_name_or_path in adapter_config.json with the spec as given.

    Called inside core/files.atomic_dir's temp dir, which makes the whole adapter/ atomic and
    reports a failed write as one for adapter/.
    """
    path = adapter_dir / ADAPTER_CONFIG
    values = read_json(path)
    values["base_model_name_or_path"] = config.model.strip()
    write_json_atomic(path, values, sort_keys=True)  # PEFT's own layout: sorted keys


def adapter_card(run_dir: Path, config: TrainConfig, result: Any, files: list[DataFile]) -> str:
    """adapter/README.md: what the adapter was trained from and how, how well, and how to use it.

    Args:
        result: the run's TrainResult (steps, sample counts, eval losses, device and precision).
        files: the train and eval data files with their record counts.
    """
    from qdtool import __version__
    from qdtool.core.modeling import EMBEDDED

    spec = config.model.strip()  # it loaded a moment ago: a directory here is the local model, else a hub id
    kind = "embedded" if spec == EMBEDDED else ("local" if Path(spec).expanduser().is_dir() else "hub")
    base = {"embedded": f"`{spec}` (Gemma 3 270M, bundled with qdtool)", "hub": f"`{spec}` (Hugging Face hub)"}.get(
        kind, f"`{spec}` (a local directory)")
    front = ["---", "library_name: peft"] + ([f"base_model: {spec}"] if kind == "hub" else [])
    front += ["tags: [qdtool, question-decomposition, lora]", "---", ""]
    bundled = " (bundled with qdtool)" if config.data is None else ""
    train = "<br>".join(f"`{f.path.name}`{bundled}: {f.records:,} records (sha256 {f.sha256[:12]})" for f in files if f.role == "train")
    given = [f for f in files if f.role == "eval"]
    held_out = (f"{result.eval_records:,} records held out from the training data "
                f"(eval_split {config.eval_split:g}, at most {config.eval_max_records}, seed {config.seed})")
    evals = "<br>".join(f"`{f.path.name}`: {f.records:,} records (sha256 {f.sha256[:12]})" for f in given) or held_out
    lora = f"r {config.lora_r}, alpha {config.lora_alpha:g}, dropout {config.lora_dropout:g}, on {_targets(config.lora_target)}"
    lora += "".join(f", {name}" for name, on in (("rsLoRA", config.use_rslora), ("DoRA", config.use_dora)) if on)
    horizon = f"max_steps {config.max_steps}" if config.max_steps else f"{config.epochs:g} epoch(s)"
    batches = (f"packed rows of {config.batch_tokens:,} tokens" if config.packing else f"{config.batch_size} samples per micro-batch")
    run = str(run_dir)
    lines = front + [
        f"# Question decomposer adapter: `{run_dir.name}`", "",
        "Splits a complex question into simple sub-questions (numbered, one per line; `#k` refers to the answer of step k).",
        f"A LoRA adapter made with qdtool {__version__}; it runs on top of its base model.", "",
        "| | |", "|---|---|",
        f"| base model | {base} |",
        f"| training data | {train} |",
        f"| eval data | {evals} |",
        (f"| samples | {result.train_records:,} train / {result.eval_records:,} eval; {result.dropped} dropped and "
         f"{result.truncated} truncated at max_seq_len {config.max_seq_len} |"),
        f"| steps | {result.steps:,} optimizer steps ({horizon}) |",
        (f"| eval loss (answer tokens) | {_fmt(result.first_eval_loss)} at start → {_fmt(result.final_eval_loss)} at end "
         f"(best {_fmt(result.best_eval_loss)}) |"),
        *_selection_rows(result),
        f"| LoRA | {lora} |",
        (f"| optimization | {config.optimizer}, peak lr {config.lr:g}, {config.scheduler} after {config.warmup_ratio:.0%} "
         f"warm-up, weight decay {config.weight_decay:g}, seed {config.seed} |"),
        f"| batches | {batches}, grad_accum {config.grad_accum} (micro-batches per step and process) |",
        f"| precision | {result.precision} on {result.device}, quantization {config.quantization} |",
        f"| prompt | template {config.template}, language {config.language}{', own instruction' if config.instruction else ''} |",
        "",
        "## Use", "",
        "qdtool takes the run directory (the parent of this `adapter/`, with `run_config.yaml`), not `adapter/` itself:", "",
        "```bash",
        f"qdtool decompose --model {run} \"{EXAMPLE_QUESTION}\"",
        f"qdtool eval --data test.jsonl --model {run} --output {run}/eval",
        f"qdtool merge {run}     # a standalone model with the adapter folded in",
        "```", "",
        "Every setting of the run is in `../run_config.yaml`; the loss curves are in `../metrics.jsonl` and `../loss.png`.", "",
    ]
    return "\n".join(lines)


def _selection_rows(result: Any) -> list[str]:
    """Which step's weights the adapter holds, and the eval SARI of the decoded eval subset (when the run has them)."""
    rows = []
    if result.best_eval_sari is not None:
        rows.append(f"| eval SARI (decoded eval subset) | {_fmt(result.final_eval_sari)} at end (best {_fmt(result.best_eval_sari)}) |")
    if result.selected_step is not None:
        rows.append(f"| weights | of step {result.selected_step:,}, the best evaluation by {result.selected_by} "
                    f"({_fmt(result.selected_score)}) |")
    return rows


def _targets(target: Any) -> str:
    return target if isinstance(target, str) else ", ".join(target)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"
