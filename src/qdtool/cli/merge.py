"""`qdtool merge`: fold a run's LoRA adapter into its base model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qdtool.cli._common import console, quiet_libraries, status, user_errors

EXAMPLES = """
Examples:

  qdtool merge runs/gemma-3-270m-examples

  qdtool merge runs/qwen-7b --output models/qwen-7b-decomposer --dtype bf16
"""


def merge(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory (from qdtool train).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Where to write the merged model (default: RUN_DIR/merged).", show_default=False)] = None,
    dtype: Annotated[str, typer.Option(
        metavar="bf16|fp16|fp32", help="Precision of the merged weights (fp16 overflows on Gemma: the check refuses it).")] = "bf16",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an earlier merge output (kept until the new one is complete).")] = False,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Run the base model repo's own code (never taken from the run directory).")] = False,
) -> None:
    """Merge the LoRA adapter into the base model: a standalone model, verified before it is saved."""
    from qdtool.core.merging import merge as run

    quiet_libraries()
    with user_errors():
        with status("merging") as say:
            result = run(run_dir, output, dtype=dtype, overwrite=overwrite, trust_remote_code=trust_remote_code, progress=say)
    size = f"{result.parameters / 1e6:,.0f}M parameters, {result.dtype}, {result.size_gb:.2f} GB"
    console.print(f"✓ merged into {result.output_dir} ({size})", markup=False, soft_wrap=True)
    console.print(f"  check: {result.check.describe(result.dtype)}", markup=False, soft_wrap=True)
    console.print(f"next: qdtool decompose --model {result.output_dir} \"your question\"", markup=False, soft_wrap=True)
