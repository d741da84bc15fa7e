"""`qdtool train`: parse options (one per TrainConfig field), run core training, render progress."""

from __future__ import annotations

import inspect
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from qdtool.cli._common import console, err_console, quiet_libraries, user_errors
from qdtool.config import TrainConfig
from qdtool.core import events

EXAMPLES = """
Examples:

  qdtool train                                   # embedded model, bundled example data

  qdtool train --data train.jsonl --eval-data val.jsonl --model Qwen/Qwen2.5-0.5B-Instruct

  qdtool train --data train.csv --question-field q --steps-field decomp    # CSV/TSV/Parquet, save_to_disk dirs, hf://datasets/NAME:SPLIT

  qdtool train --config configs/low_memory.yaml --model Qwen/Qwen2.5-7B-Instruct

  qdtool train --config runs/NAME/run_config.yaml     # resume an interrupted run

  torchrun --nproc_per_node 4 -m qdtool train --data train.jsonl     # 4 GPUs (DDP)

  torchrun --nproc_per_node 8 -m qdtool train --config configs/fsdp.yaml --model Qwen/Qwen2.5-14B-Instruct

CLI flags override the YAML file. Every setting is listed below with its default.
"""

# Flags the seed tool's users know, mapped to ours.
_ALIASES = {"max_seq_len": ["--max-seq-length"], "lr": ["--learning-rate"], "epochs": ["--num-epochs"]}


def _field_option(name: str, info: Any) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    annotation = info.annotation
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation is bool:
        decls, kind = [f"{flag}/--no-{flag[2:]}"], Optional[bool]
    elif annotation in (int, float) or (origin in (typing.Union, types.UnionType) and args and args[0] in (int, float)):
        decls, kind = [flag], Optional[args[0] if args else annotation]
    else:
        decls, kind = [flag], Optional[str]
    choices = [a for a in typing.get_args(annotation) if isinstance(a, str)] if origin is typing.Literal else []
    default = info.default if info.default is not None else "none"
    help_text = escape(f"{info.description} [{'|'.join(choices) + ', ' if choices else ''}default: {default}]")
    option = typer.Option(*decls, *_ALIASES.get(name, []), help=help_text, show_default=False, rich_help_panel=_panel(name))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind, option])


def _panel(name: str) -> str:
    order = list(TrainConfig.model_fields)
    marks = [("model", "What to train"), ("template", "Prompt"), ("max_seq_len", "Sequences and batches"), ("lora_r", "LoRA"),
             ("quantization", "Precision and memory"), ("optimizer", "Optimization"), ("eval_steps", "Run")]
    panel = marks[0][1]
    for field, title in marks:
        if order.index(name) >= order.index(field):
            panel = title
    return panel


def _to_override(name: str, value: Any) -> Any:
    if name == "lora_target" and isinstance(value, str) and value != "all-linear":
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML file of settings (see configs/).")] = None,
    preset: Annotated[Optional[str], typer.Option(
        metavar="auto|cpu|8gb|12gb|16gb|24gb|48gb|80gb",
        help="Memory preset under --config and flags; auto plans for the GPU found (see qdtool probe-gpu).")] = None,
    resume: Annotated[str, typer.Option(
        help="auto: continue from the last checkpoint in --output-dir; never; or a checkpoint path.")] = "auto",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a run directory that holds a different run (or a finished one).")] = False,
    **fields: Any,
) -> None:
    """Fine-tune a LoRA adapter (or, with --method full, the model itself) that turns the model into a question decomposer."""
    from qdtool.core.presets import plan_training
    from qdtool.core.training import train as run

    quiet_libraries()
    with user_errors():
        overrides = {k: _to_override(k, v) for k, v in fields.items() if v is not None}
        clear_max_steps = overrides.get("max_steps") == 0  # --max-steps 0: train by --epochs instead
        if clear_max_steps:
            del overrides["max_steps"]
        settings, choice = plan_training(preset, config, overrides)
        if choice is not None:
            _show_choice(choice)
        if clear_max_steps:
            settings = settings.model_copy(update={"max_steps": None})
        with _Progress() as progress:
            result = run(settings, resume=resume, overwrite=overwrite, on_event=progress.event)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, the first process reports
        return
    if result.already_complete:
        console.print(f"{result.output_dir} is already complete ({result.steps} steps). Pass --overwrite to train it again.")
    _summary(result)


def _show_choice(choice: Any) -> None:
    """The preset and why; for `auto`, the estimate of the settings this run trains with."""
    err_console.print(f"preset {choice.name}: " + "; ".join(choice.reasons), style="dim", markup=False, soft_wrap=True)
    if choice.estimate is not None:
        err_console.print(f"estimated peak {choice.estimate.total_gib:.1f} GiB (budget {choice.budget_gib:.1f} GiB) for the settings "
                          "this run trains with: the preset's under --config under flags", style="dim", markup=False, soft_wrap=True)


def _build_signature() -> None:
    hints = typing.get_type_hints(train, include_extras=True)
    params = [p.replace(annotation=hints[p.name]) for p in list(inspect.signature(train).parameters.values())[:-1]]
    params += [_field_option(name, info) for name, info in TrainConfig.model_fields.items()]
    train.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    train.__annotations__ = {p.name: p.annotation for p in params}


_build_signature()


class _Progress:
    """A rich progress bar fed by core training events."""

    def __enter__(self) -> _Progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err_console, transient=False,
        )
        self.task = None
        self.eval_loss: float | None = None
        self.eval_sari: float | None = None
        self.last: events.Step | None = None
        return self

    def event(self, event: events.Event) -> None:
        """Render one core training event; every type in core.events.Event has a renderer here (a test feeds each)."""
        render = {events.Info: self._info, events.Warn: self._warning, events.Start: self._start, events.Step: self._step,
                  events.Eval: self._eval, events.Checkpoint: self._checkpoint}[type(event)]
        render(event)

    def _info(self, event: events.Info) -> None:
        err_console.print(event.message, style="dim", markup=False)

    def _warning(self, event: events.Warn) -> None:
        err_console.print("warning: " + event.message, style="yellow", markup=False)

    def _start(self, event: events.Start) -> None:
        err_console.print(
            f"{event.train_samples:,} train / {event.eval_samples:,} eval samples · "
            f"{event.trainable_params:,} trainable parameters · {event.device} {event.precision} · run dir {event.output_dir}",
            markup=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=event.total_steps, completed=event.start_step, info="")

    def _eval(self, event: events.Eval) -> None:
        self.eval_loss, self.eval_sari = event.eval_loss, event.eval_sari
        if self.task is not None:
            self.bar.update(self.task, info=self._status())

    def _step(self, event: events.Step) -> None:
        if self.task is None:
            return
        self.last = event
        self.bar.update(self.task, completed=event.step, info=self._status())
        if not err_console.is_terminal:  # logs (nohup, RunPod, CI) get one plain line per step
            total = self.bar.tasks[0].total
            err_console.print(f"step {event.step}/{total:.0f} · {self._status()}", markup=False)

    def _checkpoint(self, event: events.Checkpoint) -> None:
        self.bar.console.print(f"checkpoint: {event.path}", style="dim", markup=False)

    def _status(self) -> str:
        """The bar's text: the last step's loss, speed and memory, and the last eval loss and SARI."""
        parts = []
        if self.last is not None:
            parts += [f"loss {self.last.loss:.3f}", f"{self.last.supervised_tokens_per_s:,.0f} sup tok/s",
                      f"peak {self.last.peak_memory_gb:.1f} GiB"]
        if self.eval_loss is not None:
            parts[1:1] = [f"eval {self.eval_loss:.3f}"] + ([f"sari {self.eval_sari:.3f}"] if self.eval_sari is not None else [])
        return " · ".join(parts)

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()


def _summary(result: Any) -> None:
    from rich.table import Table

    table = Table(title="training summary", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="cyan")
    table.add_column()
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    table.add_row("steps", f"{result.steps:,}" + (f" (resumed from {result.resumed_from})" if result.resumed_from else ""))
    table.add_row("samples", f"{result.train_records:,} train / {result.eval_records:,} eval "
                  f"({result.dropped} dropped, {result.truncated} truncated)")
    table.add_row("time", f"{result.train_seconds:,.0f} s of training steps")
    table.add_row("supervised tokens", f"{result.supervised_tokens:,} ({result.supervised_tokens_per_s:,.1f} per s)")
    table.add_row("eval loss", f"{fmt(result.first_eval_loss)} at start → {fmt(result.final_eval_loss)} at end "
                  f"(best {fmt(result.best_eval_loss)})")
    if result.best_eval_sari is not None:
        table.add_row("eval SARI", f"{fmt(result.final_eval_sari)} at end (best {fmt(result.best_eval_sari)})")
    if result.selected_step is not None:
        table.add_row("weights", f"of step {result.selected_step:,}, the best by {result.selected_by} ({fmt(result.selected_score)})")
    table.add_row("peak memory", f"{result.peak_memory_gb:.2f} GiB ({'GPU reserved' if result.device == 'cuda' else 'process RSS'})")
    full = result.method == "full"
    table.add_row("model" if full else "adapter", result.adapter_dir)
    table.add_row("curves", f"{result.output_dir}/metrics.jsonl, {result.output_dir}/loss.png")
    console.print(table)
    console.print(f"next: qdtool decompose --model {result.output_dir} \"your question\"", markup=False, soft_wrap=True)
    if not full:  # a full run's model/ is already standalone
        console.print(f"      qdtool merge {result.output_dir}     (a standalone model)", markup=False, soft_wrap=True)
