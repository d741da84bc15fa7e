"""`qdtool decompose`: sub-questions for one question, a file, or stdin."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from qdtool.cli._common import console, err_console, quiet_libraries, status, user_errors
from qdtool.errors import UsageError

EXAMPLES = """
Examples:

  qdtool decompose "Was Aristotle alive when the laptop was invented?"

  qdtool decompose --model runs/gemma-3-270m-examples/merged --input questions.jsonl --output out.jsonl

  cat questions.txt | qdtool decompose --input - --format jsonl

--model takes a run dir (base + adapter), a merged dir, a hub id or 'embedded'; by default the most
recent run under runs/.
"""


def decompose(
    question: Annotated[Optional[str], typer.Argument(metavar="QUESTION", help="One question (or use --input).", show_default=False)] = None,
    input: Annotated[Optional[str], typer.Option("--input", "-i", metavar="FILE|-", help="JSONL / JSON records with \"question\", or plain lines; - reads stdin.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write JSONL results here (input fields such as id are kept).")] = None,
    format: Annotated[str, typer.Option("--format", "-f", metavar="text|json|jsonl", help="How to print results on stdout.")] = "text",
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="SPEC", help="Run dir, merged dir, hub id or 'embedded' [default: the latest run in runs/].", show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate at most per question.")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling (with --temperature > 0).")] = 1.0,
    num_return_sequences: Annotated[int, typer.Option(min=1, help="Decompositions per question (sampling).")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Questions per generation batch.")] = 16,
    device: Annotated[str, typer.Option(metavar="auto|cpu|cuda", help="Where to run.")] = "auto",
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run the model repo's own code.")] = False,
) -> None:
    """Split complex questions into simple sub-questions with a trained decomposer."""
    from qdtool.core.generation import GenerationSettings, decompose as run, load_decomposer, read_questions, write_jsonl

    quiet_libraries()
    with user_errors():
        if format not in ("text", "json", "jsonl"):
            raise UsageError("--format must be text, json or jsonl")
        if (question is None) == (input is None):
            raise UsageError("pass one QUESTION or --input FILE (or --input - for stdin)")
        if num_return_sequences > 1 and temperature == 0:
            raise UsageError("--num-return-sequences > 1 needs sampling: add --temperature 0.7 (for example)")
        rows = [{"question": question}] if question is not None else read_questions(input, sys.stdin.read() if input == "-" else None)
        settings = GenerationSettings(max_new_tokens, temperature, top_p, num_return_sequences, batch_size)
        with status("loading the model") as say:
            decomposer = load_decomposer(model, device=device, trust_remote_code=trust_remote_code, progress=say)
        stream = len(rows) == 1 and format == "text" and console.is_terminal and output is None and num_return_sequences == 1
        if stream:
            console.print(rows[0]["question"], style="bold", markup=False)
            results = run(decomposer, rows, settings, on_text=lambda text: console.print(text, end="", markup=False, highlight=False))
            console.print()
        else:
            results = _with_progress(run, decomposer, rows, settings)
    if output is not None:
        write_jsonl(results, output)
        err_console.print(f"wrote {len(results)} result(s) to {output}", style="dim", markup=False)
    if format == "jsonl":
        for result in results:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    elif format == "json":
        typer.echo(json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2))
    elif not stream:
        for result in results:
            _print_text(result)
    failed = sum(1 for r in results if not r.parse_ok)
    if failed:
        err_console.print(f"warning: {failed} of {len(results)} output(s) did not parse into sub-questions (parse_ok=false; raw text kept)", style="yellow", markup=False)


def _with_progress(run, decomposer, rows, settings):
    if len(rows) == 1 or not err_console.is_terminal:
        return run(decomposer, rows, settings)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]decompose"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=err_console) as bar:
        task = bar.add_task("decompose", total=len(rows))
        return run(decomposer, rows, settings, progress=lambda done, total: bar.update(task, completed=done))


def _print_text(result) -> None:
    console.print(result.question, style="bold", markup=False)
    candidates = result.samples or [{"sub_questions": result.sub_questions, "raw": result.raw, "parse_ok": result.parse_ok}]
    for index, candidate in enumerate(candidates, start=1):
        if len(candidates) > 1:
            console.print(f"  sample {index}:", style="dim", markup=False)
        if candidate["parse_ok"]:
            for number, step in enumerate(candidate["sub_questions"], start=1):
                console.print(f"  {number}. {step}", markup=False)
        else:
            console.print(f"  (unparsed) {candidate['raw']}", style="yellow", markup=False)
    console.print()
