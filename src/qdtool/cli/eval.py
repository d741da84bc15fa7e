"""`qdtool eval`: score decompositions against references (SARI, exact match, step counts, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from qdtool.cli._common import console, err_console, quiet_libraries, status, user_errors
from qdtool.cli.decompose import Consensus, MaxSubQuestions, NoRepeatNgramSize, RepetitionPenalty, StopAtRepeat, Temperature, sampling
from qdtool.cli.validate_data import QuestionField, StepsField
from qdtool.errors import UsageError

EXAMPLES = """
Examples:

  qdtool eval --data examples/data/strategyqa_val.jsonl --predictions preds.jsonl

  qdtool eval --data examples/data/strategyqa_val.jsonl --model runs/gemma-3-270m-examples --output eval/

  qdtool eval --data examples/data/strategyqa_val.jsonl --compare embedded runs/gemma-3-270m-examples

  qdtool eval --data refs.jsonl --model embedded --shots 3 --json

  qdtool eval --data examples/data/strategyqa_val.jsonl --model embedded --limit 8    # a quick look

  qdtool eval --data refs.parquet --question-field q --steps-field decomp --predictions preds.jsonl

  qdtool eval --data examples/data/strategyqa_val.jsonl --model runs/gemma-3-270m-examples --consensus 5

Decoding is greedy by default. --consensus N samples N decompositions a question (at --temperature
0.7 unless given, seeded by --seed) and scores the one the others agree with most.
"""

Output = Annotated[Optional[Path], typer.Option(
    "--output", "-o", help="Write report.json, per_example.jsonl, predictions.jsonl and metrics.png here.")]
ShotsFrom = Annotated[Optional[Path], typer.Option(
    help="Where the demonstrations come from, read with the same --question-field / --steps-field as --data "
         "[default: bundled StrategyQA train].")]
Limit = Annotated[Optional[int], typer.Option(
    min=1, metavar="N", help="Score only the first N references of --data (file order); predictions for the others are ignored.")]
Seed = Annotated[int, typer.Option(help="Seed of the sampling (with --consensus or --temperature), so that a score repeats.")]

_ROWS = [
    ("sari", "SARI"), ("sari_keep", "  keep"), ("sari_add", "  add"), ("sari_del", "  delete"),
    ("exact_match", "exact match"), ("step_count_accuracy", "step count accuracy"), ("step_count_mae", "step count MAE"),
    ("mean_predicted_steps", "steps predicted / gold"), ("step_match_precision", "step match precision"),
    ("step_match_recall", "step match recall"), ("step_match_f1", "step match F1"), ("format_validity", "format validity"),
    ("chrf", "chrF"), ("bleu", "BLEU"),
]


def eval(  # noqa: A001 - the command's name
    data: Annotated[str, typer.Option(
        "--data", "-d", help="Reference decompositions: JSON, JSONL, CSV, TSV, Parquet, a save_to_disk dir or hf://datasets/NAME[:SPLIT].")],
    sources: Annotated[Optional[list[str]], typer.Argument(
        metavar="[SOURCE]...", help="With --compare: run dirs, models or prediction files.", show_default=False)] = None,
    predictions: Annotated[Optional[Path], typer.Option(
        "--predictions", "-p", help="Score this JSONL/JSON file of {question, sub_questions, id?}.")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="SPEC", help="Generate predictions with this run dir, merged dir, hub id or 'embedded'.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Score every SOURCE on the same references, side by side.")] = False,
    output: Output = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    shots: Annotated[int, typer.Option(min=0, help="Few-shot demonstrations in the prompt (for models not fine-tuned).")] = 0,
    shots_from: ShotsFrom = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Generation limit per question.")] = 160,
    batch_size: Annotated[int, typer.Option(min=1, help="Questions per generation batch.")] = 16,
    max_sub_questions: MaxSubQuestions = None,
    stop_at_repeat: StopAtRepeat = False,
    no_repeat_ngram_size: NoRepeatNgramSize = 0,
    repetition_penalty: RepetitionPenalty = 1.0,
    consensus: Consensus = 0,
    temperature: Temperature = None,
    seed: Seed = 0,
    question_field: QuestionField = None,
    steps_field: StepsField = None,
    limit: Limit = None,
) -> None:
    """Score decompositions against references: SARI, exact match, step counts, step matching, chrF, BLEU."""
    from qdtool.core.data import Fields, read_dataset
    from qdtool.core.files import ensure_writable_dir
    from qdtool.core.generation import GenerationSettings

    quiet_libraries()
    with user_errors():
        _check_sources(sources, compare, predictions, model, output)
        if output is not None:
            ensure_writable_dir(output)  # now, not after minutes of generation
        fields = Fields.of(question_field, steps_field)
        references = [r.to_dict() for r in read_dataset(data, fields=fields)]
        temperature, samples = sampling(temperature, consensus)
        settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, max_sub_questions=max_sub_questions,
                                      stop_at_repeat=stop_at_repeat, no_repeat_ngram_size=no_repeat_ngram_size,
                                      repetition_penalty=repetition_penalty, temperature=temperature, num_return_sequences=samples,
                                      consensus=consensus > 0, seed=seed)

        def run(source: str, is_file: bool):
            return _score(references, source, is_file, settings, shots, shots_from, fields, limit)

        if compare:
            reports = [run(s, Path(s).is_file())[0] for s in sources]
        else:
            report, rows = run(str(predictions) if predictions else model, predictions is not None)
            reports = [report]
            if output is not None:
                _write(report, rows, output)
    _warn_unmatched(reports)
    _print_reports(reports, compare, as_json)


def _write(report, rows: list[dict] | None, output: Path) -> None:
    """report.json, per_example.jsonl, metrics.png and (for a model) predictions.jsonl in `output`."""
    from qdtool.core.evaluation import write_jsonl, write_report

    paths = write_report(report, output)
    if rows is not None:
        write_jsonl(rows, output / "predictions.jsonl")
    err_console.print(f"wrote {', '.join(str(p) for p in paths)}", style="dim", markup=False)


def _check_sources(sources: list[str] | None, compare: bool, predictions: Path | None, model: str | None, output: Path | None) -> None:
    """Exactly one way to name what is scored: --compare SOURCE SOURCE ..., --predictions or --model."""
    if compare:
        if not sources or len(sources) < 2:
            raise UsageError("--compare needs at least two SOURCEs (run dirs, models or prediction files)")
        if output is not None or predictions is not None or model is not None:
            raise UsageError("--compare takes its sources as arguments; --output, --predictions and --model work on one source")
    elif sources:
        raise UsageError(f"unexpected argument {sources[0]!r}; use --compare to score several sources")
    elif (predictions is None) == (model is None):
        raise UsageError("pass --predictions FILE or --model SPEC (or --compare SOURCE SOURCE ...)")


def _score(references: list[dict], source: str, is_file: bool, settings, shots: int, shots_from: Path | None, fields, limit: int | None):
    """The report on one source (a predictions file, or a model that generates them), and the rows generated (None for a file).

    `fields` names the columns of `shots_from`, as of --data.
    """
    from qdtool.core.evaluation import evaluate, predict, read_predictions

    if is_file:
        return evaluate(references, read_predictions(source), str(source), limit), None
    with status(f"decomposing {len(references[:limit])} questions with {source}") as say:
        rows = predict(references, source, settings, shots, shots_from, progress=say, limit=limit, shots_fields=fields)
    return evaluate(references, rows, source + (f" ({shots}-shot)" if shots else ""), limit), rows


def _warn_unmatched(reports) -> None:
    for report in reports:
        if report.unmatched_references or report.unmatched_predictions:
            err_console.print(
                f"warning: {report.source}: {len(report.unmatched_references)} reference(s) without a prediction, "
                f"{len(report.unmatched_predictions)} prediction(s) without a reference "
                f"(e.g. {(report.unmatched_references + report.unmatched_predictions)[0]!r})",
                style="yellow", markup=False,
            )


def _print_reports(reports, compare: bool, as_json: bool) -> None:
    if not compare:
        if as_json:
            typer.echo(json.dumps(reports[0].to_dict(), indent=2, ensure_ascii=False))
        else:
            _table([reports[0]])
        return
    intervals = [None] + [_sari_interval(reports[0], r) for r in reports[1:]]
    if as_json:
        differences = [None if i is None else {"mean": i[0], "ci95": [i[1], i[2]]} for i in intervals]
        document = {"limit": reports[0].limit, "reports": [r.to_dict() for r in reports], "sari_difference_vs_first": differences}
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        _compare_table(reports, intervals)


def _sari_interval(first, other):
    """SARI(other) - SARI(first) with its paired bootstrap interval; None when they scored different examples."""
    from qdtool.core.evaluation import paired_bootstrap

    if [e.question for e in other.examples] != [e.question for e in first.examples]:
        return None
    return paired_bootstrap([e.sari for e in first.examples], [e.sari for e in other.examples])


def _value(key: str, metrics: dict[str, float]) -> str:
    if key == "mean_predicted_steps":
        return f"{metrics['mean_predicted_steps']:.2f} / {metrics['mean_gold_steps']:.2f}"
    value = metrics[key]
    return f"{value:.2f}" if key in ("chrf", "bleu", "step_count_mae") else f"{value:.4f}"


def _table(reports) -> None:
    from rich.table import Table

    limit = reports[0].limit
    if limit:  # its own line: a table title wraps at the table's width
        console.print(f"--limit: scored the first {limit['first']} of {limit['of']} references", markup=False, soft_wrap=True)
    table = Table(title=f"{reports[0].metrics['examples']} examples", title_justify="left")
    table.add_column("metric", style="cyan")
    for report in reports:
        table.add_column(report.source, justify="right", overflow="fold")
    for key, label in _ROWS:
        table.add_row(label, *[_value(key, r.metrics) for r in reports])
    console.print(table)


def _compare_table(reports, intervals) -> None:
    _table(reports)
    for report, interval in zip(reports[1:], intervals[1:], strict=True):
        if interval is None:
            console.print(f"{report.source}: scored on other examples than {reports[0].source}; no paired interval", markup=False)
        else:
            mean, low, high = interval
            console.print(f"SARI {report.source} − {reports[0].source}: {mean:+.4f} (paired bootstrap 95% CI {low:+.4f} to {high:+.4f})",
                          markup=False)
