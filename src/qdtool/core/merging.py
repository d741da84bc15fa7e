"""`merge`: fold a run's LoRA adapter into its base model and save a standalone model.

The base is always loaded in the chosen 16/32-bit precision, never in 4-bit, even for a QLoRA run:
merging into a quantized base and re-quantizing drifts silently. Before reporting success, the
merged model's logits are compared with base + adapter computed in fp32 on rendered prompts, and
the error must stay within a few times what the dtype's own rounding does to the base alone
(`MergeCheck`). The output directory is built beside its destination and swapped in whole, with
qdtool_merge.json written last.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qdtool.core.files import read_json, write_json_atomic
from qdtool.core.rundir import RunDir
from qdtool.errors import ConfigError, TrainingError, UsageError

MARKER = "qdtool_merge.json"  # written last: a merge output without it is incomplete

DTYPES = ("bf16", "fp16", "fp32")
REFERENCE = {"bf16": "fp32", "fp16": "fp32", "fp32": "fp64"}  # the check's reference: one precision above the merge's
# The merge check (MergeCheck): the merged model may be this many times further from the reference
# than the unmerged model in the same dtype is (measured: 1.0-1.1x in bf16, up to 2.6x in fp16)...
NOISE_FACTOR = 4.0
# ...or this far (relative L2) whatever the rounding, for a model that rounding leaves exact.
ERROR_FLOOR = 1e-6
# Share of positions whose next token may flip beyond NOISE_FACTOR times the flips rounding causes.
TOP1_SLACK = 0.02
# The prompts the merge check (and export's check, core/exporting/verify.py) runs the models on.
PROBES = [
    "Was Aristotle alive when the laptop was invented?",
    "Could a llama birth twice during the War in Vietnam?",
    "세종대왕이 태어났을 때 조선은 건국된 지 100년이 넘었는가?",
]
PROBE_ANSWER = ["First step?", "Second step using #1?"]

Progress = Callable[[str], None]


@dataclass
class MergeCheck:
    """The merged model's logits against base + adapter computed one precision up, beside what rounding alone does.

    Distances are relative L2 norms, ||a - b|| / ||b||, over the logits of every non-pad position of
    the probe prompts. The reference is the unmerged model (base + adapter, as training ran it)
    computed in fp32 for a 16-bit merge, in fp64 for an fp32 one. Rounding moves any model in the
    merge's dtype away from it; how far depends on the model and its adapter (a strongly trained
    adapter can make the network amplify rounding 30-fold), so the yardstick is the same unmerged
    model run in the merge's dtype. A wrong merge (a module missed, a scale wrong) moves the logits
    by a share of the adapter's own effect instead. The merged model passes when its error is within
    NOISE_FACTOR times that rounding (or ERROR_FLOOR) and its greedy next token flips about as rarely.
    """

    error: float  # merged model (in dtype) vs the reference
    rounding: float  # the unmerged model in dtype vs the reference: the dtype's own noise on this model
    allowed: float  # max(NOISE_FACTOR * rounding, ERROR_FLOOR)
    adapter_effect: float  # base + adapter vs base alone, both in the reference precision: what the merge carries
    top1_agreement: float  # share of positions where the merged model and the reference pick the same next token
    top1_agreement_rounding: float  # the same for the unmerged model in dtype
    positions: int  # non-pad positions compared
    reference: str  # precision of the reference: fp32, or fp64 for an fp32 merge

    @property
    def passed(self) -> bool:
        flips_allowed = NOISE_FACTOR * (1 - self.top1_agreement_rounding) + TOP1_SLACK
        return self.error <= self.allowed and 1 - self.top1_agreement <= flips_allowed

    def describe(self, dtype: str) -> str:
        """The check in a sentence, for the CLI, the model card and the failure message."""
        unmerged = f"the {_pct(self.rounding)} of the unmerged model in {dtype}"
        floor = self.allowed > NOISE_FACTOR * self.rounding
        basis = f"the floor, above {NOISE_FACTOR:g} × {unmerged}" if floor else f"{NOISE_FACTOR:g} × {unmerged}"
        return (f"merged {dtype} logits {_pct(self.error)} (relative L2) from base + adapter in {self.reference}, allowed "
                f"{_pct(self.allowed)} ({basis}); the adapter "
                f"itself moves them {_pct(self.adapter_effect)}; same next token at {self.top1_agreement:.1%} of {self.positions} "
                f"positions ({self.top1_agreement_rounding:.1%} unmerged)")


@dataclass
class MergeResult:
    output_dir: str
    base_model: str
    dtype: str
    check: MergeCheck
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
        TrainingError: the merged model fails the check (`MergeCheck`), or its logits overflow the dtype (exit 1).
        WriteError: the disk refused the write; nothing is left half-written.
    """
    from qdtool.config import load_train_config
    from qdtool.core.files import ensure_writable_dir
    from qdtool.core.modeling import check_available, refuse_pickle_weights

    say = progress or (lambda _m: None)
    run = RunDir(run_dir)
    _check_run(run)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype})")
    out = Path(output) if output else run.merged
    _check_output(out, overwrite)
    refuse_pickle_weights(run.adapter, adapter=True)  # before anything is loaded
    ensure_writable_dir(out.parent)  # a read-only destination fails now, not after loading and checking the model
    config = load_train_config(run.config)
    check_available(config.model, say)  # a base model that cannot be had fails now, before torch is imported

    say(f"loading {config.model} in {dtype} (never 4-bit, whatever the training used)")
    model, tokenizer, parameters, size_gb = _load(run, config, dtype, out, trust_remote_code, say)
    merged, check = _merge_checked(model, tokenizer, config, dtype, say)
    say(f"writing {out}")
    result = MergeResult(str(out), config.model, dtype, check, parameters, round(size_gb, 3),
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


def _merge_checked(model: Any, tokenizer: Any, config: Any, dtype: str, say: Progress) -> tuple[Any, MergeCheck]:
    """The merged model and its check against base + adapter computed one precision up (see MergeCheck).

    Memory: the model stays stored in `dtype` throughout. The reference runs use the same weights,
    each module's own tensors widened only while it runs (`_computing_in`): a 7B model merged in
    bf16 needs its 14 GB plus one module in fp32, not a 28 GB fp32 twin. Its LoRA matrices are fp32
    already (PEFT keeps an adapter in fp32 over a 16-bit base), and merging adds their fp32 product
    to each weight and rounds the sum once: bit for bit what merging in fp32 and casting gives,
    without the fp32 copy. At most two [positions, vocab] logit tensors are held at once.

    Raises:
        TrainingError: non-finite logits (fp16 overflows on Gemma: found before merging), or a failed check.
    """
    import torch

    batch = probe_batch(tokenizer, config.prompt_options())
    mask = batch["attention_mask"].bool()
    reference_dtype = REFERENCE[dtype]
    say(f"checking: base + adapter, unmerged, in {dtype} and in {reference_dtype}")
    with torch.no_grad():
        unmerged = _logits(model, batch, mask, "base + adapter, unmerged,", dtype)  # first: fp16 overflow fails fast
        with _computing_in(model, reference_dtype):
            reference = _logits(model, batch, mask, "base + adapter, unmerged,", reference_dtype)
        rounding, agreement_rounding = _distance(unmerged, reference), _agreement(unmerged, reference)
        del unmerged
        with model.disable_adapter(), _computing_in(model, reference_dtype):
            effect = _distance(reference, _logits(model, batch, mask, "the base model alone", reference_dtype))
    say("merging")
    merged = model.merge_and_unload().eval()
    with torch.no_grad():
        got = _logits(merged, batch, mask, "the merged model", dtype)
    check = MergeCheck(error=_distance(got, reference), rounding=rounding, allowed=max(NOISE_FACTOR * rounding, ERROR_FLOOR),
                       adapter_effect=effect, top1_agreement=_agreement(got, reference), top1_agreement_rounding=agreement_rounding,
                       positions=int(mask.sum()), reference=reference_dtype)
    if not check.passed:
        raise TrainingError(f"merge check failed: {check.describe(dtype)}. Nothing was written. Rounding does not move logits this "
                            "far: part of the adapter did not merge as it runs unmerged. Try --dtype fp32; if that fails too, "
                            "report it with the run's adapter/adapter_config.json")
    return merged, check


def _logits(model: Any, batch: dict[str, Any], mask: Any, what: str, dtype: str) -> Any:
    """Logits of the non-pad positions as [positions, vocab], in fp32 or wider.

    Raises:
        TrainingError: a logit is not finite (overflow: fp16 on Gemma).
    """
    import torch

    logits = model(**batch, use_cache=False).logits[mask]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if not bool(torch.isfinite(logits).all()):
        if dtype == "fp16":
            model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
            why = "Gemma overflows in fp16" if model_type.startswith("gemma") else "its activations overflow fp16's range, 65504"
            raise TrainingError(f"merge check failed: {what} gives non-finite logits in fp16 ({why}); nothing was written. "
                                "Use --dtype bf16 (the default) or fp32")
        raise TrainingError(f"merge check failed: {what} gives non-finite logits in {dtype}; nothing was written. "
                            + ("Try --dtype fp32" if what == "the merged model" else "The base model or the adapter itself is broken"))
    return logits


def _distance(a: Any, b: Any) -> float:
    """Relative L2 distance of `a` from `b`: ||a - b|| / ||b||."""
    import torch

    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def _agreement(a: Any, b: Any) -> float:
    """Share of positions (rows) where `a` and `b` pick the same greedy next token."""
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


@contextmanager
def _computing_in(model: Any, precision: str) -> Iterator[None]:
    """Run `model` in `precision` (fp32, fp64) while it stays stored in its own dtype.

    As each module starts, its own floating-point parameters and buffers are cast to `precision`;
    as it ends (or fails), the very same stored tensors are put back, bit for bit. The extra memory
    is one module's widened copy at a time, not a copy of the model, and activations are in
    `precision` from the embedding on (where a model upcasts to fp32 on purpose, in its norms and
    rotary angles, it still does).
    """
    import torch

    wide = {"fp32": torch.float32, "fp64": torch.float64}[precision]
    stored: dict[int, tuple[Any, Any]] = {}  # id(tensor) → (tensor, its data as stored)
    cast_by: dict[int, list[int]] = {}  # id(module) → the tensors its start cast

    def widen(value: Any) -> Any:
        return value.to(wide) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    def cast(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        cast_by[id(module)] = []
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if tensor.is_floating_point() and tensor.dtype != wide and id(tensor) not in stored:
                stored[id(tensor)] = (tensor, tensor.data)
                tensor.data = tensor.data.to(wide)
                cast_by[id(module)].append(id(tensor))
        # inputs too: PEFT casts a LoRA branch's input to its (fp32) weights' dtype before they are widened
        return tuple(widen(a) for a in args), {k: widen(v) for k, v in kwargs.items()}

    def restore(module: Any, *_: Any) -> None:
        for key in cast_by.pop(id(module), []):
            tensor, data = stored.pop(key)
            tensor.data = data

    handles = [hook for module in model.modules()
               for hook in (module.register_forward_pre_hook(cast, with_kwargs=True),
                            module.register_forward_hook(restore, always_call=True))]
    try:
        yield
    finally:
        for hook in handles:
            hook.remove()
        for tensor, data in stored.values():
            tensor.data = data


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
    refusal = run.merge_refusal()  # a full fine-tuning run: nothing to merge
    if refusal is not None:
        raise UsageError(refusal)
    if not run.has_adapter():
        raise UsageError(f"{run} has no adapter/ (adapter/adapter_config.json): the run may not have finished training. "
                         f"Resume it with `{run.resume_command}`")


def probe_batch(tokenizer: Any, options: Any) -> dict[str, Any]:
    """PROBES rendered with an answer (`options`: the run's PromptOptions), as training encodes them
    (`encode_sample`), right-padded."""
    import torch

    from qdtool.core.prompts import encode_sample

    rows = [encode_sample(tokenizer, q, PROBE_ANSWER, options).input_ids for q in PROBES]
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
        f"| merge check | {result.check.describe(result.dtype)} |",
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


def _pct(value: float) -> str:
    return f"{100 * value:.2g}%"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "-")
