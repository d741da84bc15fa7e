"""`qdtool validate-data`: say exactly what is wrong with a dataset, and where."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from qdtool.cli._common import console, quiet_libraries, status, user_errors

# The field mapping, the same options in validate-data, eval and decompose (train has them from its config).
QuestionField = Annotated[Optional[str], typer.Option(
    metavar="COLUMN", show_default=False, help="The field (column) that holds the question [default: question].")]
StepsField = Annotated[Optional[str], typer.Option(
    metavar="COLUMN", show_default=False,
    help="The field (column) that holds the sub-questions: a list, or text split by lines or \"1. ... 2. ...\" [default: sub_questions].")]

EXAMPLES = """
Examples:

  qdtool validate-data examples/data/strategyqa_train.jsonl

  qdtool validate-data train.jsonl --against val.jsonl

  qdtool validate-data train.jsonl --model embedded

  qdtool validate-data data/*.jsonl --json > report.json

  qdtool validate-data train.csv --question-field q --steps-field decomp

  qdtool validate-data train.parquet hf://datasets/org/name:validation

FILE: JSON, JSONL, CSV, TSV or Parquet (by its suffix), a directory written by Dataset.save_to_disk
(DIR:SPLIT for one split of a DatasetDict), or hf://datasets/NAME[:SPLIT] (split train by default).
Problems are at FILE:LINE (JSONL), FILE:ROW (CSV/TSV, rows as a spreadsheet numbers them: the header
is row 1) or FILE[#INDEX] (JSON arrays, Parquet, datasets: the index from 0).

Exit codes: 0 valid (warnings allowed), 1 invalid data, 2 usage error (a missing file, a directory, a FIFO).
"""


def validate_data(
    files: Annotated[list[str], typer.Argument(
        metavar="FILE", help="Datasets to check: JSON, JSONL, CSV, TSV, Parquet, a save_to_disk dir or hf://datasets/NAME[:SPLIT].",
        show_default=False)],
    against: Annotated[Optional[list[str]], typer.Option(
        "--against", "-a", metavar="FILE", help="Flag questions also in FILE (train/eval leakage). Repeatable.")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="SPEC",
        help="Token lengths of the training samples with this tokenizer: 'embedded', a directory or a hub id.")] = None,
    template: Annotated[str, typer.Option(
        metavar="auto|plain|chat", help="Prompt template for --model (auto: chat template if the model has one).")] = "auto",
    question_field: QuestionField = None,
    steps_field: StepsField = None,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors: a file with warnings fails (exit 1).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable report on stdout.")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run the model repo's own code (for --model).")] = False,
) -> None:
    """Check question-decomposition datasets: every problem with its place (FILE:LINE, FILE:ROW), then statistics."""
    from qdtool.core.data import Fields
    from qdtool.core.prompts import PromptOptions
    from qdtool.core.validation import validate_data as run

    if template not in ("auto", "plain", "chat"):
        raise typer.BadParameter("must be auto, plain or chat", param_hint="--template")
    quiet_libraries()
    with user_errors():
        with status("loading the tokenizer") as say:
            report = run(files, against=against or (), model=model, trust_remote_code=trust_remote_code, strict=strict,
                         progress=say, prompt=PromptOptions(template=template), fields=Fields.of(question_field, steps_field))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        from qdtool.cli.render_data import render_report

        render_report(console, report)
    raise typer.Exit(0 if report.ok else 1)

