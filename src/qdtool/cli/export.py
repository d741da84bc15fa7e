"""`qdtool export`: a trained model as one GGUF file (llama.cpp, Ollama), verified before it is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from qdtool.cli._common import console, quiet_libraries, status, user_errors

EXAMPLES = """
Examples:

  qdtool export runs/gemma-3-270m-examples --format gguf --outtype q8_0 --ollama

  qdtool export models/qwen-7b-decomposer --outtype bf16 --output qwen-7b-decomposer.gguf
"""


def export(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A run dir (merged first), a merged or model dir, a hub id, or 'embedded'.",
                                         show_default=False)],
    format: Annotated[str, typer.Option("--format", metavar="gguf", help="File format.")] = "gguf",
    outtype: Annotated[str, typer.Option(
        "--outtype", metavar="f16|bf16|q8_0", help="Number format of the weights (vectors stay f32).")] = "f16",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="The .gguf file to write (default: RUN/gguf/NAME-OUTTYPE.gguf for a run, else ./NAME-OUTTYPE.gguf).",
        show_default=False)] = None,
    ollama: Annotated[bool, typer.Option("--ollama", help="Also write an Ollama Modelfile (NAME-OUTTYPE.Modelfile) beside it.")] = False,
    language: Annotated[Optional[str], typer.Option(
        "--language", metavar="en|ko", help="Instruction language of the Modelfile's prompt (default: the run's, else en).",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file (kept until the new one is verified).")] = False,
) -> None:
    """Export to GGUF for llama.cpp and Ollama, read back and compared with the model before it is kept."""
    from qdtool.core.exporting import export as run

    quiet_libraries()
    with user_errors():
        with status("exporting") as say:
            result = run(model, output, format=format, outtype=outtype, ollama=ollama, language=language, overwrite=overwrite,
                         progress=say)
    merged = " (merged first)" if result.merged else ""
    console.print(
        f"✓ exported {result.output} ({result.architecture}, {result.outtype}, {result.size_bytes / 1e6:,.0f} MB, "
        f"{result.tensors} tensors) from {result.source}{merged}",
        markup=False, soft_wrap=True,
    )
    console.print(
        f"  verified: logits within {result.logit_error:.3g} of the model's ({result.outtype} rounding alone: {result.rounding_noise:.3g}, "
        f"tolerance {result.tolerance:.3g}); greedy decompositions identical on {result.decodes_equal_source} of {result.decodes} "
        f"probe questions; written in {result.write_seconds:.1f} s, checked in {result.verify_seconds:.1f} s",
        markup=False, soft_wrap=True,
    )
    if result.f16_fallback:
        console.print(f"  {len(result.f16_fallback)} matrices written f16 (rows not whole q8_0 blocks): "
                      f"{', '.join(result.f16_fallback[:3])}", markup=False, soft_wrap=True)
    if result.modelfile:
        question = "Was Aristotle alive when the laptop was invented?"
        console.print(f"next: ollama create {result.ollama_name} -f {result.modelfile} && ollama run {result.ollama_name} \"{question}\"",
                      markup=False, soft_wrap=True)
    else:
        console.print(f"next: llama-server -m {result.output}  (or add --ollama for an Ollama Modelfile)", markup=False, soft_wrap=True)
