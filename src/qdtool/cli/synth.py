"""`qdtool synth`: a teacher writes decompositions for questions that have none (core/synth does the work)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from qdtool.cli._common import console, err_console, quiet_libraries, user_errors
from qdtool.errors import UsageError

EXAMPLES = """
Examples:

  qdtool synth examples/questions.txt --teacher embedded --samples 2 --limit 3 --out runs/synth.jsonl

  export OPENAI_API_KEY=...
  qdtool synth questions.jsonl --teacher https://api.openai.com/v1 --teacher-model gpt-4o-mini --api-key-env OPENAI_API_KEY \\
      --examples my_examples.jsonl --shots 5 --samples 5 --min-agreement 0.5 --out data/synth.jsonl

  qdtool synth questions.jsonl --teacher http://127.0.0.1:8000/v1 --out data/synth.jsonl --dry-run

The teacher gets an instruction and --shots solved examples from --examples (a dataset file; by
default the bundled StrategyQA and Korean examples), in the question's language where there are
any. It writes --samples candidates per question; only candidates that pass validate-data's checks
count, and the one the others agree with most (mean SARI) is kept, with its agreement and the
teacher's settings in a "synth" field. Dropped questions go to FILE.dropped.jsonl with the reason.
A fine-tuned local teacher (a run dir) already knows the format: --shots 0 asks it as it was trained.

Each record is appended as soon as it is judged: after Ctrl-C, a crash or a kill, the same command
continues, skipping the questions in FILE.jsonl and in FILE.dropped.jsonl (--retry-dropped asks the
dropped ones again). Requests that fail after --retries are asked again by the next run.
"""

Questions = Annotated[str, typer.Argument(
    metavar="QUESTIONS", help="Questions: JSONL / JSON records with \"question\" (other fields kept), or plain lines; - reads stdin.",
    show_default=False)]
Teacher = Annotated[str, typer.Option(
    "--teacher", "-t", metavar="URL|MODEL", show_default=False,
    help="An OpenAI-compatible base URL (http://host:port/v1), or a local model: a run dir, a merged dir, a hub id or 'embedded'.")]
Out = Annotated[Path, typer.Option("--out", "-o", show_default=False, help="JSONL file the kept records are appended to.")]
TeacherModel = Annotated[Optional[str], typer.Option(
    metavar="NAME", show_default=False, help="Model name for a URL teacher (default: the server's only model).")]
ApiKeyEnv = Annotated[Optional[str], typer.Option(
    metavar="NAME", show_default=False, help="Environment variable that holds the URL teacher's API key (e.g. OPENAI_API_KEY).")]
Examples = Annotated[Optional[Path], typer.Option(
    metavar="FILE", show_default=False,
    help="Your hand-written decompositions (a dataset file) to draw demonstrations from (default: the bundled examples).")]
Seed = Annotated[Optional[int], typer.Option(
    metavar="N", show_default=False,
    help="Seed the sampling: a local teacher repeats its candidates for the same questions; a URL teacher gets a seed per request.")]


def synth(
    questions: Questions,
    teacher: Teacher,
    out: Out,
    teacher_model: TeacherModel = None,
    api_key_env: ApiKeyEnv = None,
    examples: Examples = None,
    shots: Annotated[int, typer.Option(metavar="K", help="Demonstrations per prompt (0: the instruction alone).")] = 3,
    samples: Annotated[int, typer.Option(metavar="N", help="Candidates per question; the consensus of the valid ones is kept.")] = 5,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy, with --samples 1 only).")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 1.0,
    seed: Seed = None,
    min_agreement: Annotated[float, typer.Option(
        help="Drop a question whose chosen candidate agrees less than this with the others (mean SARI, 0 to 1).")] = 0.0,
    max_steps: Annotated[int, typer.Option(metavar="N", help="Sub-questions per candidate at most; a longer one is not valid.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(metavar="N", help="Tokens per candidate at most.")] = 256,
    limit: Annotated[Optional[int], typer.Option(
        metavar="N", show_default=False, help="Ask at most N new questions (a first look, or a run in portions).")] = None,
    retry_dropped: Annotated[bool, typer.Option("--retry-dropped", help="Ask the questions in FILE.dropped.jsonl again.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the requests and estimated tokens it would send; send nothing.")] = False,
    question_field: Annotated[Optional[str], typer.Option(
        metavar="NAME", show_default=False, help="The field that holds the question in QUESTIONS (default: question).")] = None,
    workers: Annotated[int, typer.Option(help="URL teacher: requests in flight at once.")] = 4,
    timeout: Annotated[float, typer.Option(help="URL teacher: seconds to wait for a reply before retrying.")] = 60.0,
    retries: Annotated[int, typer.Option(help="URL teacher: retries per request on 429, 5xx and timeouts (Retry-After honoured).")] = 3,
    device: Annotated[str, typer.Option(metavar="auto|cpu|cuda", help="Local teacher: where to run.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Local teacher: questions per generation batch.")] = 8,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Local teacher: run the model repo's own code (never taken from a run dir).")] = False,
) -> None:
    """Decompose questions with a teacher model into a training set: validated, by consensus, resumable."""
    from qdtool.core.synth import SynthSettings, api_key_from_env

    quiet_libraries()
    with user_errors():
        settings = SynthSettings(teacher=teacher, teacher_model=teacher_model, shots=shots, samples=samples, temperature=temperature,
                                 top_p=top_p, seed=seed, max_new_tokens=max_new_tokens, max_steps=max_steps, min_agreement=min_agreement,
                                 workers=workers, timeout=timeout, retries=retries, retry_dropped=retry_dropped, limit=limit,
                                 device=device, batch_size=batch_size, trust_remote_code=trust_remote_code)
        settings.check()  # before any file is read: a bad option fails at once
        if api_key_env:
            from dataclasses import replace

            settings = replace(settings, api_key=api_key_from_env(api_key_env))
            settings.check()  # --api-key-env with a local teacher
        rows = _read(questions, out, question_field)
        if dry_run:
            from qdtool.core.synth import plan

            _print_plan(plan(rows, out, settings, examples=examples), settings, out)
            return
        report = _run(rows, out, settings, examples)
    _summarize(report)
    if report.failed:
        raise typer.Exit(1)


def _read(questions: str, out: Path, question_field: str | None) -> list[dict]:
    from qdtool.core.generation import read_questions

    if questions != "-" and Path(questions).resolve() == out.resolve():
        raise UsageError(f"--out {out} is the questions file itself; write the records to another file")
    text = sys.stdin.buffer.read() if questions == "-" else None
    # Passed only when given: read_questions takes question_field once the CSV/Parquet reader is in.
    return read_questions(questions, text, **({"question_field": question_field} if question_field else {}))


def _run(rows: list[dict], out: Path, settings: Any, examples: Path | None) -> Any:
    from qdtool.core.synth import synth as run

    def say(text: str) -> None:
        err_console.print(text, style="dim", markup=False, soft_wrap=True)

    try:
        with _progress() as progress:
            return run(rows, out, settings, examples=examples, progress=progress, status=say)
    except KeyboardInterrupt:
        err_console.print(f"interrupted; the records finished so far are in {out}: run the same command again to continue",
                          style="yellow", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None


# Off a terminal (logs, CI), a progress line at most this often, and at the end.
LOG_EVERY_S = 10.0


@contextmanager
def _progress() -> Iterator[Callable[[Any], None]]:
    """A rich bar with ETA and kept/dropped counts on a terminal; a line every 10 s in logs."""
    if not err_console.is_terminal:
        start, last = time.monotonic(), 0.0

        def log(p: Any) -> None:
            nonlocal last
            now = time.monotonic()
            if p.done == p.total or now - last >= LOG_EVERY_S:
                last = now
                rate = p.done / max(now - start, 1e-9)
                eta = f", about {(p.total - p.done) / rate:.0f} s left" if 0 < p.done < p.total else ""
                err_console.print(f"synth: {p.done}/{p.total} questions, kept {p.kept}, dropped {p.dropped}, failed {p.failed}, "
                                  f"{now - start:.0f} s{eta}", style="dim", markup=False)
        yield log
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task("synth", total=None, counts="")

        def update(p: Any) -> None:
            counts = f"kept {p.kept} · dropped {p.dropped}" + (f" · failed {p.failed}" if p.failed else "")
            bar.update(task, total=p.total, completed=p.done, counts=counts)
        yield update


def _summarize(report: Any) -> None:
    def say(text: str, style: str = "dim") -> None:
        err_console.print(text, style=style, markup=False, soft_wrap=True)

    for path in report.repaired:
        say(f"repaired {path}: its last line was cut short (a run stopped mid-write); that question is asked again", "yellow")
    if report.already_done:
        say(f"skipped {report.already_done} question(s) already in {report.out} or {report.dropped_out.name}"
            + ("" if report.asked else "; nothing to do"))
    if report.retried_dropped:
        say(f"asking {report.retried_dropped} dropped question(s) again (--retry-dropped)")
    if report.asked:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(report.reasons.items()))
        say(f"asked {report.asked} question(s): kept {report.kept} in {report.out}, dropped {report.dropped}"
            + (f" ({reasons}) in {report.dropped_out}" if report.dropped else "")
            + f"; {report.requests} request(s), {report.retries} retried, {report.seconds:.0f} s", "")
    left = report.questions - report.already_done - report.asked
    if left > 0 and not report.failed:
        say(f"{left} question(s) left (--limit): run the same command again to continue")
    if report.failed:
        first = "; ".join(report.failures[:3])
        say(f"{report.failed} question(s) failed after every retry ({first}); run the same command again to ask them again",
            "yellow")


def _print_plan(plan: Any, settings: Any, out: Path) -> None:
    def line(text: str) -> None:
        console.print(text, markup=False, soft_wrap=True)

    line(f"dry run: nothing sent; {plan.questions} question(s), {plan.already_done} already in {out} or its .dropped file, "
         f"{plan.to_ask} to ask")
    if plan.remote:
        line(f"requests: {plan.requests:,} with n={plan.samples} ({plan.requests_without_n:,} if the server does not support n)")
        line(f"prompt tokens: about {plan.prompt_tokens:,} ({plan.prompt_tokens_without_n:,} without n)")
    else:
        line(f"generations: {plan.to_ask:,} question(s) x {plan.samples} sample(s) on {settings.teacher}; "
             f"prompt tokens: about {plan.prompt_tokens:,}")
    estimate = f"about {plan.completion_tokens_estimate:,}, " if plan.completion_tokens_estimate else ""
    line(f"completion tokens: {estimate}at most {plan.completion_tokens_max:,} (--max-new-tokens {settings.max_new_tokens})")
