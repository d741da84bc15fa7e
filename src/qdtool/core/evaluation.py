"""`eval`: score decompositions against references, from a prediction file or a model.

Predictions are matched to references by `id` when both have one, else by exact question text;
whatever stays unmatched is reported, never silently dropped. A `limit` scores the first N
references only; predictions for the references past it are set aside, not reported as unmatched.
`compare` scores several sources on
the same references and gives each one's SARI difference to the first with a paired bootstrap 95%
interval.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from qdtool.core import metrics as m
from qdtool.core.data import DEFAULT_FIELDS, Fields, Problem, json_type_name, problems_error, read_json_rows
from qdtool.core.files import json_line, write_bytes_atomic, write_json_atomic, write_text_atomic
from qdtool.errors import DataError

Progress = Callable[[str], None]


@dataclass
class ExampleScore:
    question: str
    prediction: list[str]
    reference: list[str]
    parse_ok: bool
    sari: float
    sari_keep: float
    sari_add: float
    sari_del: float
    exact_match: bool
    step_count_error: int  # predicted - gold
    steps_matched: int
    id: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalReport:
    source: str
    metrics: dict[str, float]
    examples: list[ExampleScore]
    unmatched_references: list[str] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)
    limit: dict[str, int] | None = None  # {"first": N, "of": references in the file} when limited

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "limit": self.limit,
            "metrics": self.metrics,
            "unmatched_references": self.unmatched_references,
            "unmatched_predictions": self.unmatched_predictions,
        }


def score_example(reference: dict[str, Any], prediction: dict[str, Any]) -> ExampleScore:
    ref_steps, pred_steps = list(reference["sub_questions"]), list(prediction.get("sub_questions") or [])
    parse_ok = bool(prediction.get("parse_ok", True)) and bool(pred_steps)
    s = m.sari(reference["question"], m.join_steps(pred_steps), m.join_steps(ref_steps))
    match = m.match_steps(pred_steps, ref_steps)
    return ExampleScore(
        reference["question"], pred_steps, ref_steps, parse_ok, s.sari, s.keep, s.add, s.delete,
        m.exact_match(pred_steps, ref_steps), len(pred_steps) - len(ref_steps), match.matched, reference.get("id"),
    )


def corpus_metrics(examples: Sequence[ExampleScore]) -> dict[str, float]:
    """Corpus scores: means over examples; step matching micro-averaged over all steps."""
    n = len(examples)
    if n == 0:
        raise DataError("no prediction matched a reference; nothing to score")
    predicted = sum(len(e.prediction) for e in examples)
    gold = sum(len(e.reference) for e in examples)
    matched = sum(e.steps_matched for e in examples)
    precision = matched / predicted if predicted else 0.0
    recall = matched / gold if gold else 0.0
    chrf, bleu = m.chrf_and_bleu([m.join_steps(e.prediction) for e in examples], [m.join_steps(e.reference) for e in examples])
    return {
        "examples": n,
        "sari": sum(e.sari for e in examples) / n,
        "sari_keep": sum(e.sari_keep for e in examples) / n,
        "sari_add": sum(e.sari_add for e in examples) / n,
        "sari_del": sum(e.sari_del for e in examples) / n,
        "exact_match": sum(e.exact_match for e in examples) / n,
        "step_count_accuracy": sum(e.step_count_error == 0 for e in examples) / n,
        "step_count_mae": sum(abs(e.step_count_error) for e in examples) / n,
        "mean_predicted_steps": predicted / n,
        "mean_gold_steps": gold / n,
        "step_match_precision": precision,
        "step_match_recall": recall,
        "step_match_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "format_validity": sum(e.parse_ok for e in examples) / n,
        "chrf": chrf,
        "bleu": bleu,
    }


def pair_up(references: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]], limit: int | None = None):
    """(reference, prediction) pairs, by id when every row on both sides has one, else by exact
    question text; repeated keys pair in order. Returns the pairs and the unmatched references'
    and predictions' keys (nothing is dropped silently).

    With `limit`, only the first `limit` references are paired or reported missing; the rest
    still take their predictions, so that those are not reported as predictions without a reference.
    The key (id or question) is chosen on all the references, as it would be without a limit.
    """
    use_ids = all(r.get("id") is not None for r in references) and all(p.get("id") is not None for p in predictions)
    key = (lambda row: str(row["id"])) if use_ids else (lambda row: row["question"])
    by_key: dict[str, list[dict[str, Any]]] = {}
    for prediction in predictions:
        by_key.setdefault(key(prediction), []).append(prediction)
    pairs, missing = [], []
    for index, reference in enumerate(references):
        waiting = by_key.get(key(reference))
        prediction = waiting.pop(0) if waiting else None
        if limit is not None and index >= limit:
            continue
        if prediction is not None:
            pairs.append((reference, prediction))
        else:
            missing.append(key(reference))
    extra = [k for k, rows in by_key.items() for _ in rows]
    return pairs, missing, extra


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows with "question" and "sub_questions" (a list of strings, possibly empty), JSONL or a JSON array.

    Raises:
        UsageError: the path is missing, a directory or not a regular file.
        DataError: the file is empty, or a row is broken or repeats another row's id; the message
            lists every such row with its place.
    """
    source = read_json_rows(path, what="predictions")
    problems = list(source.problems)
    rows: list[dict[str, Any]] = []
    first_with_id: dict[str, str] = {}
    for row in source.rows:
        found = [row.problem] if row.problem else _prediction_problems(row.value, row.location, row.line)
        if found:
            problems += found
            continue
        value = row.value
        value.setdefault("sub_questions", [])
        if value.get("id") is not None:
            # A repeated id would be scored once, by whichever row comes first: refuse rather than guess.
            key = str(value["id"])
            if key in first_with_id:
                problems.append(Problem(row.location, f"{json.dumps(value['id'], ensure_ascii=False)[:60]} repeats the id of "
                                        f"{first_with_id[key]}; give each prediction its own id (or remove the repeat)",
                                        field="id", line=row.line))
                continue
            first_with_id[key] = row.location
        rows.append(value)
    if problems:
        raise problems_error(str(path), problems, 'Each prediction is {"question": str, "sub_questions": [str, ...], "id": optional}.')
    return rows


def _prediction_problems(value: Any, location: str, line: int | None) -> list[Problem]:
    if not isinstance(value, dict):
        got = json_type_name(value)
        return [Problem(location, f'prediction must be a JSON object with "question" and "sub_questions" (got {got})', line=line)]
    problems = []
    if not isinstance(value.get("question"), str):
        got = "missing" if "question" not in value else f"must be a string (got {json_type_name(value['question'])})"
        problems.append(Problem(location, got, field="question", line=line))
    steps = value.get("sub_questions", [])
    if not isinstance(steps, list):
        problems.append(Problem(location, f"must be a list of strings, [] for no output (got {json_type_name(steps)})",
                                field="sub_questions", line=line))
    else:
        problems += [Problem(location, f"step {n} must be a string (got {json_type_name(s)})", field="sub_questions", line=line)
                     for n, s in enumerate(steps, start=1) if not isinstance(s, str)]
    return problems


def predict(references: Sequence[dict[str, Any]], model: str, settings: Any = None, shots: int = 0,
            shots_from: str | Path | None = None, progress: Progress | None = None,
            limit: int | None = None, shots_fields: Fields = DEFAULT_FIELDS) -> list[dict[str, Any]]:
    """Predictions of a model for the references' questions (through the decompose engine).

    With `limit`, only the first `limit` questions are decomposed; the demonstrations still avoid
    every reference question, so they are the ones a full run would use. `shots_fields` names the
    question and steps fields of `shots_from`.
    """
    from qdtool.core.generation import GenerationSettings, decompose, load_decomposer

    decomposer = load_decomposer(model, progress=progress)
    if shots:
        demos = few_shot_examples(shots, shots_from, exclude={r["question"] for r in references}, fields=shots_fields)
        decomposer.prompt_options = replace(decomposer.prompt_options, shots=demos)
    rows = [{"question": r["question"], **({"id": r["id"]} if r.get("id") is not None else {})} for r in references[:limit]]
    results = decompose(decomposer, rows, settings or GenerationSettings())
    return [r.to_dict() for r in results]


def few_shot_examples(k: int, path: str | Path | None, exclude: set[str], fields: Fields = DEFAULT_FIELDS) -> list[tuple[str, list[str]]]:
    """k demonstrations (question, steps), seeded, never one of the evaluated questions.

    `fields` maps the columns of `path`; the bundled file (no `path`) has the default names.
    """
    from qdtool.core.data import read_dataset
    from qdtool.resources import example_data_dir

    if path is None:  # the bundled file has the default names
        path, fields = example_data_dir() / "strategyqa_train.jsonl", DEFAULT_FIELDS
    records = read_dataset(path, fields=fields)
    pool = [r for r in records if r.question not in exclude and 2 <= len(r.sub_questions) <= 4]
    random.Random(0).shuffle(pool)
    return [(r.question, r.sub_questions) for r in pool[:k]]


def evaluate(references: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]], source: str,
             limit: int | None = None) -> EvalReport:
    """Score `predictions` against `references` (all of them, or the first `limit`)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (got {limit})")
    pairs, missing, extra = pair_up(references, predictions, limit)
    examples = [score_example(ref, pred) for ref, pred in pairs]
    limited = None if limit is None else {"first": min(limit, len(references)), "of": len(references)}
    return EvalReport(source, corpus_metrics(examples), examples, missing, extra, limited)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], samples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a and its 95% percentile interval, resampling examples with replacement."""
    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs two equally long, non-empty score lists")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return sum(diffs) / n, means[int(0.025 * samples)], means[int(0.975 * samples) - 1]


def write_report(report: EvalReport, out: Path) -> list[Path]:
    """report.json, per_example.jsonl and metrics.png in `out`, each written atomically.

    Raises:
        WriteError: the file system refused a write (read-only, full, no permission).
    """
    write_json_atomic(out / "report.json", report.to_dict())
    write_jsonl([e.to_dict() for e in report.examples], out / "per_example.jsonl")
    write_bytes_atomic(out / "metrics.png", _chart(report))
    return [out / "report.json", out / "per_example.jsonl", out / "metrics.png"]


def write_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One JSON object per line, written atomically."""
    write_text_atomic(path, "".join(json_line(row) for row in rows))


def _chart(report: EvalReport) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["sari", "exact_match", "step_count_accuracy", "step_match_f1", "format_validity"]
    values = [report.metrics[n] for n in names] + [report.metrics["chrf"] / 100, report.metrics["bleu"] / 100]
    labels = names + ["chrf / 100", "bleu / 100"]
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    bars = ax.barh(labels[::-1], values[::-1], color="#4c72b0")
    ax.bar_label(bars, fmt="%.3f", padding=3)
    ax.set_xlim(0, 1.1)
    limited = f", --limit: first {report.limit['first']} of {report.limit['of']} references" if report.limit else ""
    ax.set_title(f"qdtool eval: {report.source} ({report.metrics['examples']} examples{limited})", fontsize=10)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()
