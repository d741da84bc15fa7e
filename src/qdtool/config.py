"""Settings shared by every command.

Run configurations (training, presets) live here too as they arrive: typed, with a default and a
one-line help per field, and unknown keys rejected.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from qdtool.errors import ConfigError

if TYPE_CHECKING:
    from qdtool.core.prompts import PromptOptions

CACHE_ENV = "QDTOOL_CACHE"


def cache_dir() -> Path:
    """Where qdtool keeps converted models: `$QDTOOL_CACHE`, else the platform's user cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("qdtool", appauthor=False))


# ---------------------------------------------------------------------------------------------
# Training configuration
# ---------------------------------------------------------------------------------------------

# A data source as written: a path, or hf://datasets/NAME[:SPLIT], which a Path would fold to "hf:/".
DataSpec = Annotated[str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)]


class TrainConfig(BaseModel):
    """Everything a training run needs; written next to the adapter as run_config.yaml."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # what to train
    model: str = Field("embedded", description="Base model: 'embedded', a local directory or a hub id.")
    data: DataSpec | None = Field(
        None, description="Training data: a JSON/JSONL/CSV/TSV/Parquet file, a save_to_disk dir or hf://datasets/NAME[:SPLIT]; "
        "default: the bundled examples.")
    eval_data: DataSpec | None = Field(None, description="Evaluation data (as data); default: a seeded hold-out of the training data.")
    question_field: str = Field("question", min_length=1, description="The field (column) of data and eval_data that holds the question.")
    steps_field: str = Field("sub_questions", min_length=1, description="The field (column) of data and eval_data that holds the "
                             "sub-questions: a list, or text split by lines or '1. ... 2. ...'.")
    eval_split: float = Field(0.05, gt=0, lt=0.5, description="Share of the training data held out when there is no eval_data.")
    eval_max_records: int = Field(200, ge=1, description="At most this many held-out records.")
    output_dir: Path | None = Field(None, description="Run directory; default runs/<model>-<data>.")
    trust_remote_code: bool = Field(False, description="Run the model repo's own code (off unless you trust it).")
    method: Literal["lora", "full"] = Field(
        "lora", description="lora: train low-rank adapters on the frozen base; full: train the model's own weights (fp32 master "
        "weights + grads + 2 AdamW states, 16 bytes a weight: for small models such as the embedded 270M).")
    train_embeddings: bool = Field(
        False, description="With method full, train the input embedding too (in Gemma also the LM head; an untied head trains either "
        "way). Off by default: Gemma 3 270M's 262k x 640 embedding is 168M of its 268M weights, its grad + AdamW states would add "
        "1.9 GiB, and a few thousand examples would move every vocabulary row through the head's dense gradient.")

    # prompt
    template: Literal["auto", "plain", "chat"] = Field(
        "auto", description="Prompt template: the model's chat template if it has one, else plain.")
    language: Literal["auto", "en", "ko"] = Field("auto", description="Instruction language; auto follows each question.")
    instruction: str | None = Field(None, description="Your own instruction text instead of the defaults.")

    # sequence handling
    max_seq_len: int = Field(512, ge=16, description="Tokens per sample, prompt + answer.")
    overlong: Literal["drop", "truncate", "error"] = Field("drop", description="What to do with samples over max_seq_len.")
    packing: bool = Field(True, description="Pack several samples per row (padding-free); false: dynamic padding.")
    batch_tokens: int = Field(
        1024, ge=16, description="Tokens per micro-batch row when packing (bounds the attention mask and the activations).")
    batch_size: int = Field(4, ge=1, description="Samples per micro-batch without packing.")
    grad_accum: int = Field(2, ge=1, description="Micro-batches per optimizer step (the default: 2 x 1,024 = 2,048 tokens a step).")

    # LoRA
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rsLoRA).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target: Literal["all-linear"] | list[str] = Field("all-linear", description="Modules to adapt: all-linear or a list of names.")
    use_rslora: bool = Field(False, description="Rank-stabilized LoRA scaling.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")

    # precision and memory
    quantization: Literal["none", "4bit", "8bit"] = Field("none", description="Base weights in 4-bit NF4 or 8-bit (CUDA + bitsandbytes).")
    double_quant: bool = Field(True, description="NF4 double quantization (4-bit only).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Compute precision; auto: bf16 where the GPU or CPU supports it, else fp16 (GPU) or fp32 (CPU).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, ~30% slower.")
    sharding: Literal["none", "fsdp"] = Field(
        "none", description="With several processes (torchrun): none = each holds the whole model; "
        "fsdp = the base weights are sharded across them.")

    # optimization
    optimizer: Literal["adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"] = Field(
        "adamw", description="Optimizer.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0: off).")
    neftune_alpha: float = Field(
        0.0, ge=0, description="NEFTune: uniform noise on the input embeddings in training steps, scaled by alpha / sqrt(length x "
        "hidden) with each sample's own length (never in evaluation or decoding); 0: off, 5 is the paper's usual value.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs (--max-steps 0: use epochs).")
    seed: int = Field(42, description="Seed for data order, split, LoRA init and dropout.")

    # runs
    eval_steps: int = Field(25, ge=1, description="Evaluate every N optimizer steps (and at the end).")
    select_by: Literal["eval_loss", "sari"] = Field(
        "eval_loss", description="The evaluation whose best step gives the adapter: lowest eval_loss or highest eval SARI "
        "(at the default one epoch both pick the last step; at three epochs sari scored +0.012 on val, not significant: "
        "docs/results.md).")
    eval_decode_records: int = Field(
        32, ge=0, description="Eval records decoded (greedy) at each evaluation for eval SARI: a fixed, seeded subset of the "
        "eval split; 0: no decoding.")
    eval_decode_batch: int = Field(16, ge=1, description="Questions per generate() call when decoding them (as decompose's default).")
    eval_decode_max_new_tokens: int = Field(256, ge=1, description="Tokens generated per question at most when decoding them "
                                            "(as decompose's default).")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept (the newest).")
    report_to: Literal["auto", "none", "wandb", "tensorboard"] = Field(
        "auto", description="Tracking: auto = wandb if logged in, else none.")
    run_name: str | None = Field(None, description="Name for the run in trackers; default: the output dir's name.")

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        problems = []
        if self.packing and self.batch_tokens < self.max_seq_len:
            problems.append(f"batch_tokens ({self.batch_tokens}) must be at least max_seq_len ({self.max_seq_len}) when packing")
        if self.use_dora and self.quantization == "8bit":
            problems.append("use_dora does not work with 8-bit quantization; use 4bit or none")
        if self.quantization != "none" and self.precision == "fp32":
            problems.append(f"quantization {self.quantization} computes in bf16/fp16; precision fp32 is not supported with it")
        if self.sharding == "fsdp" and self.quantization != "none":
            problems.append(f"sharding fsdp shards 16/32-bit weights; quantization {self.quantization} is not supported with it "
                            "(a 4-bit model that fits one GPU trains with sharding none under torchrun)")
        if self.sharding == "fsdp" and self.optimizer not in ("adamw", "adamw_fused"):
            problems.append(f"sharding fsdp works with optimizer adamw or adamw_fused, not {self.optimizer} (bitsandbytes "
                            "optimizers do not take sharded parameters)")
        if self.sharding == "fsdp" and self.precision == "fp16":
            problems.append("sharding fsdp trains in bf16 or fp32, not fp16 (no sharded gradient scaler); use --precision bf16")
        if self.select_by == "sari" and self.eval_decode_records == 0:
            problems.append("select_by sari needs decoded eval records: set eval_decode_records above 0, or select_by eval_loss")
        if self.select_by == "sari" and self.sharding == "fsdp":
            problems.append("select_by sari decodes with the whole model, which no process holds under sharding fsdp; "
                            "use select_by eval_loss")
        problems += self._method_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _method_problems(self) -> list[str]:
        if self.method == "lora":
            return ["train_embeddings applies to method full only (LoRA keeps every base weight frozen)"] if self.train_embeddings else []
        problems = []
        if self.quantization != "none":
            problems.append(f"method full trains the weights themselves, in fp32; quantization {self.quantization} is not supported with "
                            "it (use quantization none, or method lora for QLoRA)")
        if self.sharding == "fsdp":
            problems.append("method full trains unsharded: use sharding none (several processes under torchrun still train as DDP)")
        return problems

    def prompt_options(self) -> PromptOptions:
        """The prompt settings, as `render_prompt` / `encode_prompt` / `encode_sample` take them (train = decompose = eval)."""
        from qdtool.core.prompts import PromptOptions

        return PromptOptions(self.template, self.language, self.instruction)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(error["loc"][-1]), TrainConfig.model_fields, n=1)
            message = "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        lines += [f"  {field}: {m}" if field else f"  {m}" for m in message.splitlines()]
    return f"invalid configuration ({source}):\n" + "\n".join(lines)


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a YAML config file, not yet validated.

    Raises:
        ConfigError: no such file, not YAML, or not a mapping.
    """
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (got {type(loaded).__name__})")
    return loaded or {}


def load_train_config(path: Path | None = None, overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None,
                      *, from_file: dict[str, Any] | None = None) -> TrainConfig:
    """`base` (a preset's settings) under the YAML file (if any) under CLI overrides, validated at
    once: every problem is reported. `from_file`: the file's settings, when the caller has read them
    already (`read_config_file`).

    Raises:
        ConfigError: unreadable YAML, unknown keys or bad values, listed together.
    """
    values: dict[str, Any] = dict(base or {})
    source = "command line"
    if path is not None:
        source = f"{path} + command line"
        values.update(read_config_file(path) if from_file is None else from_file)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    # Remote code runs only when this command line asks for it: a YAML file, and above all a
    # downloaded run dir's run_config.yaml (read by resume, merge and decompose), never switches it on.
    values["trust_remote_code"] = (overrides or {}).get("trust_remote_code") is True
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def dump_config(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
