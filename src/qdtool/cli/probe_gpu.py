"""`qdtool probe-gpu`: the GPUs here, a memory estimate, and the preset `--preset auto` would pick."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from qdtool.cli._common import console, quiet_libraries, user_errors

EXAMPLES = """
Examples:

  qdtool probe-gpu

  qdtool probe-gpu --model Qwen/Qwen2.5-7B-Instruct --data train.jsonl

  qdtool probe-gpu --json
"""


def probe_gpu(
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="SPEC",
                                                 help="Model to plan for [default: the tier's recommendation].")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Training data: max_seq_len from its p99 token length.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Read the GPUs (NVML), estimate training memory, and pick a preset: 4-bit or not, sequence length, batch."""
    from qdtool.core.hardware import probe_hardware
    from qdtool.core.presets import plan_training

    quiet_libraries()
    with user_errors():
        hardware = probe_hardware()
        _, choice = plan_training("auto", None, {"model": model, "data": data}, hardware=hardware)
    if as_json:
        typer.echo(json.dumps({"hardware": hardware.to_dict(), "preset": choice.to_dict()}, indent=2))
        return
    if hardware.gpus:
        console.print(_gpu_table(hardware, choice))
    else:
        console.print(f"No CUDA GPU found: CPU with {hardware.cpu_cores} cores and {hardware.ram_gib:.1f} GiB RAM.", markup=False)
    if choice.estimate is not None:
        console.print(_estimate_table(hardware, choice))
    console.print(_settings_table(choice))
    for reason in choice.reasons:
        console.print(f"  • {reason}", markup=False, soft_wrap=True)
    console.print("use it: qdtool train --preset auto" + (f" --model {model}" if model else "") + (f" --data {data}" if data else ""),
                  markup=False)


def _gpu_table(hardware: Any, choice: Any) -> Any:
    from rich.table import Table

    gpus = Table(title=f"GPUs (via {hardware.source}; driver {hardware.driver or '?'}, CUDA {hardware.cuda or '?'})", title_justify="left")
    for column in ("#", "name", "total GiB", "free GiB", "compute", "bf16", "fits the plan"):
        gpus.add_column(column)
    need = choice.estimate.total_gib if choice.estimate else 0
    for g in hardware.gpus:
        fits = "yes" if g.free_gib >= need else f"no (needs {need:.1f})"
        gpus.add_row(str(g.index), g.name, f"{g.total_gib:.1f}", f"{g.free_gib:.1f}", g.compute_capability, "yes" if g.bf16 else "no", fits)
    return gpus


def _estimate_table(hardware: Any, choice: Any) -> Any:
    from rich.table import Table

    e = choice.estimate
    n = len(hardware.gpus)
    where = f", per GPU with FSDP over {n}: {e.total_gib * n:.1f} GiB in all" if choice.settings.get("sharding") == "fsdp" else ""
    title = f"memory estimate for {choice.settings['model']} ({e.parameters / 1e9:.2f}B parameters{where})"
    table = Table(title=title, title_justify="left")
    table.add_column("term")
    table.add_column("GiB", justify="right")
    trained = f"trainable weights ({e.trainable_params / 1e6:.1f}M)" if e.method == "full" else f"LoRA ({e.lora_params / 1e6:.1f}M)"
    terms = (("weights", e.weights_gib), (f"{trained} + grads + optimizer", e.lora_and_optimizer_gib),
             ("activations", e.activations_gib), ("logits and loss", e.logits_and_loss_gib),
             ("4-bit dequantization buffer", e.dequant_buffer_gib), ("allocator overhead", e.overhead_gib),
             ("peak reserved (torch)", e.peak_reserved_gib))
    if hardware.gpus:
        terms += (("CUDA context", e.cuda_context_gib), ("needed free", e.total_gib))
    else:  # a CPU run's peak is the process's resident memory
        terms += (("Python, torch, tokenizer", e.runtime_gib), ("peak RSS", e.total_gib))
    for label, value in terms:
        table.add_row(label, f"{value:.2f}")
    return table


def _settings_table(choice: Any) -> Any:
    from rich.table import Table

    settings = Table(title=f"preset: {choice.name}", title_justify="left", show_header=False)
    settings.add_column(style="cyan")
    settings.add_column()
    for key, value in choice.settings.items():
        settings.add_row(key, str(value))
    return settings
