"""`qdtool decompose`: sub-questions for one question, a file, or stdin."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from qdtool.cli._common import console, err_console, quiet_libraries, status, user_errors
from qdtool.cli.validate_data import QuestionField
from qdtool.errors import UsageError

EXAMPLES = """
Examples:

  qdtool decompose "Was Aristotle alive when the laptop was invented?"

  qdtool decompose --model runs/gemma-3-270m-examples/merged --input questions.jsonl --output out.jsonl

  cat questions.txt | qdtool decompose --input - --format jsonl

  qdtool decompose --input questions.csv --question-field q --output out.jsonl

With --output, each result is appended as soon as it is done; after Ctrl-C (or a crash) the same
command continues, skipping the questions already in the file (matched by "id", else by text).

--model takes a run dir (base + adapter), a merged dir, a hub id or 'embedded'; by default the most
recent run under runs/.

An output stops at its step cap (--max-sub-questions; by default the longest decomposition the run
was trained on, else 8); --stop-at-repeat also ends it at a step that repeats an earlier one.

--consensus 5 samples five decompositions (at --temperature 0.7 unless given) and returns the one
the others agree with most (mean SARI, among those that pass validate-data's checks and repeat no
step): about five times the decoding work; on the default run it scored the same SARI as greedy
decoding (docs/results.md).

  qdtool decompose "Could a llama birth twice during the War in Vietnam?" --consensus 5 --seed 0
"""

# Decoding guards, the same options in `decompose` and `eval`.
MaxSubQuestions = Annotated[Optional[int], typer.Option(
    min=0, metavar="N", show_default=False,
    help="Steps per output at most, by default the run's longest training decomposition (else 8); generation stops there. 0: no cap.")]
StopAtRepeat = Annotated[bool, typer.Option(
    "--stop-at-repeat/--keep-repeats",
    help="End an output at a step that repeats an earlier one (the repeat is dropped). Off by default: it cost SARI on val.")]
NoRepeatNgramSize = Annotated[int, typer.Option(
    min=0, metavar="N", help="No N-gram of tokens twice in an answer (the prompt does not count); 0: off.")]
RepetitionPenalty = Annotated[float, typer.Option(
    min=1.0, help="Tokens already in an answer get less likely by this factor (the prompt does not count); 1.0: off.")]
MaxNewTokens = Annotated[int, typer.Option(min=1, help="Tokens to generate at most per question.")]
MaxInputTokens = Annotated[int, typer.Option(
    min=1, help="Prompt tokens per question at most (also capped by the model's context); longer questions are refused.")]
Device = Annotated[str, typer.Option(metavar="auto|cpu|cuda", help="Where to run.")]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Run the model repo's own code (never taken from a run dir).")]
# Consensus decoding, the same options in `decompose`, `eval` and `serve`.
Consensus = Annotated[int, typer.Option(
    min=0, metavar="N",
    help="Sample N decompositions and return the one the others agree with most (mean SARI); about N times the decoding work. 0: off.")]
Temperature = Annotated[Optional[float], typer.Option(
    min=0.0, show_default=False, help="Sampling temperature [default: 0, greedy; 0.7 with --consensus].")]


def sampling(temperature: float | None, consensus: int, num_return_sequences: int = 1) -> tuple[float, int]:
    """The temperature and the samples per question that --temperature, --consensus and --num-return-sequences ask for.

    Raises:
        UsageError: --consensus 1, --consensus with --num-return-sequences or with --temperature 0,
            or several samples without sampling.
    """
    if consensus == 1:
        raise UsageError("--consensus needs two or more samples to compare (e.g. --consensus 5); 0 turns it off")
    if consensus:
        if num_return_sequences > 1:
            raise UsageError("--consensus N already samples N decompositions a question; drop --num-return-sequences")
        if temperature == 0:
            raise UsageError("--consensus needs sampling: drop --temperature 0 (0.7 is used) or give one above 0")
        return (0.7 if temperature is None else temperature), consensus
    temperature = temperature or 0.0
    if num_return_sequences > 1 and temperature == 0:
        raise UsageError("--num-return-sequences > 1 needs sampling: add --temperature 0.7 (for example)")
    return temperature, num_return_sequences


def decompose(
    question: Annotated[Optional[str], typer.Argument(
        metavar="QUESTION", help="One question (or use --input).", show_default=False)] = None,
    input: Annotated[Optional[str], typer.Option(
        "--input", "-i", metavar="FILE|-", help="JSONL / JSON records with \"question\", plain lines (.txt), a CSV/TSV/Parquet "
        "table, a save_to_disk dir or hf://datasets/NAME[:SPLIT]; - reads stdin (JSON or lines).")] = None,
    question_field: QuestionField = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Append JSONL results here as they finish (input fields "
                                                   "such as id are kept); a rerun skips the questions already there.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --output instead of continuing it.")] = False,
    format: Annotated[str, typer.Option("--format", "-f", metavar="text|json|jsonl", help="How to print results on stdout.")] = "text",
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="SPEC", help="Run dir, merged dir, hub id or 'embedded' [default: the latest run in runs/].",
        show_default=False)] = None,
    max_new_tokens: MaxNewTokens = 256,
    max_input_tokens: MaxInputTokens = 1024,
    temperature: Temperature = None,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling (with --temperature > 0).")] = 1.0,
    num_return_sequences: Annotated[int, typer.Option(min=1, help="Decompositions per question (sampling), all printed.")] = 1,
    consensus: Consensus = 0,
    seed: Annotated[Optional[int], typer.Option(help="Seed the sampling, for repeatable samples.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Questions per generation batch.")] = 16,
    max_sub_questions: MaxSubQuestions = None,
    stop_at_repeat: StopAtRepeat = False,
    no_repeat_ngram_size: NoRepeatNgramSize = 0,
    repetition_penalty: RepetitionPenalty = 1.0,
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Split complex questions into simple sub-questions with a trained decomposer."""
    from qdtool.core.generation import GenerationSettings, load_decomposer
    from qdtool.core.results import ResultsFile

    quiet_libraries()
    sink = None
    try:
        with user_errors():
            temperature, samples = sampling(temperature, consensus, num_return_sequences)
            rows = _read_rows(question, input, format, question_field)
            settings = GenerationSettings(max_new_tokens, temperature, top_p, samples, batch_size, max_input_tokens, max_sub_questions,
                                          stop_at_repeat, no_repeat_ngram_size, repetition_penalty, consensus > 0, seed)
            numbers = list(range(1, len(rows) + 1))  # each row's place in the input, for messages
            if output is not None:  # before the model loads: a bad --output fails in a second, not after the work
                sink = ResultsFile(output, overwrite=overwrite)
                rows, numbers = _skip_done(sink, rows, output)
                if not rows:
                    return
            with status("loading the model") as say:
                decomposer = load_decomposer(model, device=device, trust_remote_code=trust_remote_code, progress=say)
            source = None if question is not None else ("<stdin>" if input == "-" else str(input))
            results = _generate(decomposer, rows, numbers, settings, source, format, sink)
    except KeyboardInterrupt:
        kept = f"; {sink.written} new result(s) are in {output}: run the same command again to continue" if sink is not None else ""
        err_console.print(f"interrupted{kept}", style="yellow", markup=False)
        raise typer.Exit(130) from None
    finally:
        if sink is not None:
            sink.close()
    _summarize(results, sink, output, format)


def _read_rows(question: str | None, input: str | None, format: str, question_field: str | None = None) -> list[dict]:
    """Check the options that need no model, then read the questions (from QUESTION, a file or stdin)."""
    from qdtool.core.generation import read_questions

    if format not in ("text", "json", "jsonl"):
        raise UsageError("--format must be text, json or jsonl")
    if (question is None) == (input is None):
        raise UsageError("pass one QUESTION or --input FILE (or --input - for stdin)")
    if question is not None and not question.strip():
        raise UsageError("QUESTION is empty; pass the question to decompose")
    if question is not None:
        return [{"question": question}]
    return read_questions(input, sys.stdin.buffer.read() if input == "-" else None, question_field=question_field)


def _skip_done(sink, rows: list[dict], output: Path) -> tuple[list[dict], list[int]]:
    """The rows not yet in --output, and their places in the input (1-based)."""
    todo = sink.pending(rows)
    if len(todo) < len(rows):
        err_console.print(f"skipping {len(rows) - len(todo)} question(s) already in {output} (--overwrite starts over)",
                          style="dim", markup=False)
    if not todo:
        err_console.print(f"all questions are already in {output}; nothing to do", markup=False)
    return [rows[i] for i in todo], [i + 1 for i in todo]


def _generate(decomposer, rows: list[dict], numbers: list[int], settings, source: str | None, format: str, sink) -> list:
    """Decompose every row: streamed token by token for one question on a terminal, else printed (and saved) as each finishes."""
    from qdtool.core.generation import decompose_stream

    stream = len(rows) == 1 and format == "text" and console.is_terminal and sink is None and settings.num_return_sequences == 1
    if stream:
        console.print(rows[0]["question"], style="bold", markup=False)
        results = list(decompose_stream(decomposer, rows, settings, source=source, numbers=numbers,
                                        on_text=lambda text: console.print(text, end="", markup=False, highlight=False)))
        console.print()
        return results
    results = []
    with _progress(len(rows)) as progress:
        for result in decompose_stream(decomposer, rows, settings, progress=progress, source=source, numbers=numbers):
            results.append(result)
            if sink is not None:
                sink.append(result.to_dict())
            if format == "jsonl":
                typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
            elif format == "text":
                _print_text(result)
    return results


def _summarize(results: list, sink, output: Path | None, format: str) -> None:
    if sink is not None:
        err_console.print(f"wrote {sink.written} result(s) to {output}", style="dim", markup=False)
    if format == "json":
        typer.echo(json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2))
    failed = sum(1 for r in results if not r.parse_ok)
    if failed:
        err_console.print(f"warning: {failed} of {len(results)} output(s) did not parse into sub-questions (parse_ok=false; raw text kept)",
                          style="yellow", markup=False)


# Off a terminal (logs, CI), a progress line at most this often, and at the end.
LOG_EVERY_S = 10.0


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int, int], None] | None]:
    """A bar on a terminal; plain lines in logs; nothing for one question."""
    if total == 1:
        yield None
        return
    if not err_console.is_terminal:
        start = last = time.monotonic()

        def log(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if done == total or now - last >= LOG_EVERY_S:
                last = now
                rate = done / max(now - start, 1e-9)
                eta = f", about {(total - done) / rate:.0f} s left" if done < total else ""
                err_console.print(f"decompose: {done}/{total} questions, {now - start:.0f} s{eta}", style="dim", markup=False)
        yield log
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = TextColumn("[bold]decompose"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task("decompose", total=total)
        yield lambda done, total: bar.update(task, completed=done)


def _print_text(result) -> None:
    console.print(result.question, style="bold", markup=False)
    chosen = [{"sub_questions": result.sub_questions, "raw": result.raw, "parse_ok": result.parse_ok}]
    candidates = chosen if result.consensus is not None else result.samples or chosen
    if result.consensus is not None:
        agreement = result.consensus["agreement"]
        console.print(f"  consensus of {result.consensus['samples']} samples ({result.consensus['valid']} valid"
                      f"{f', agreement {agreement:.2f}' if agreement is not None else ''}):", style="dim", markup=False)
    for index, candidate in enumerate(candidates, start=1):
        if len(candidates) > 1:
            console.print(f"  sample {index}:", style="dim", markup=False)
        if candidate["parse_ok"]:
            for number, step in enumerate(candidate["sub_questions"], start=1):
                console.print(f"  {number}. {step}", markup=False)
        else:
            console.print(f"  (unparsed) {candidate['raw']}", style="yellow", markup=False)
    console.print()
