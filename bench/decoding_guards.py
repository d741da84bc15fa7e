"""Decoding guards measured on references: which of them improve SARI, and by more than noise.

    python bench/decoding_guards.py --model runs/NAME --data examples/data/strategyqa_val.jsonl [--limit N]

The model is loaded once; the questions are decoded once per candidate (greedy, batched, as
`qdtool eval` decodes): no guards; the step cap (the run's longest training decomposition, else 8);
cap + stop at a repeated step; and each of those three with no-repeat n-gram 3 or 4, or repetition
penalty 1.1 or 1.2 (counted over the answer only). Each candidate's SARI is compared with the
no-guard baseline's by a paired bootstrap (core/evaluation.paired_bootstrap).

Writes to --out (default RUN_DIR/decoding_guards): summary.jsonl (one row per candidate), table.md,
and predictions/CANDIDATE.jsonl, which `qdtool eval --data DATA --compare A.jsonl B.jsonl` scores again.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "none"
# name -> (max_sub_questions, stop_at_repeat): 0 is no cap, None the model's own cap
BASES = {"none": (0, False), "cap": (None, False), "cap+repeat": (None, True)}
# name suffix -> (no_repeat_ngram_size, repetition_penalty)
GUARDS = {"": (0, 1.0), "+ngram3": (3, 1.0), "+ngram4": (4, 1.0), "+penalty1.1": (0, 1.1), "+penalty1.2": (0, 1.2)}


def candidates() -> dict[str, dict]:
    """Every candidate's GenerationSettings fields, the baseline first."""
    return {base + suffix: {"max_sub_questions": cap, "stop_at_repeat": repeat, "no_repeat_ngram_size": size, "repetition_penalty": penalty}
            for base, (cap, repeat) in BASES.items() for suffix, (size, penalty) in GUARDS.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run dir, merged dir, hub id or 'embedded'")
    parser.add_argument("--data", default=str(REPO / "examples" / "data" / "strategyqa_val.jsonl"), help="references (JSONL)")
    parser.add_argument("--limit", type=int, default=None, help="decode the first N references only")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=160, help="as `qdtool eval`'s default")
    parser.add_argument("--candidates", default=None,
                        help=f"comma-separated names to run (the baseline {BASELINE!r} always runs) [default: all {len(candidates())}]")
    parser.add_argument("--out", default=None, help="output directory [default: RUN_DIR/decoding_guards, else ./decoding_guards]")
    args = parser.parse_args()
    known = candidates()
    chosen = [BASELINE] + [c for c in (args.candidates.split(",") if args.candidates else known) if c != BASELINE]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        parser.error(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(known)}")
    args.chosen = chosen
    default = Path(args.model) / "decoding_guards" if Path(args.model).is_dir() else Path("decoding_guards")
    args.out = Path(args.out) if args.out else default
    return args


def measure(decomposer, references: list[dict], rows: list[dict], name: str, fields: dict, args) -> tuple[dict, list, list[dict]]:
    """Decode every row with one candidate's settings: its summary row, its scored examples and its predictions."""
    from qdtool.core.evaluation import evaluate
    from qdtool.core.generation import GenerationSettings, decompose
    from qdtool.core.prompts import first_repeat

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, **fields)
    started = time.perf_counter()
    predictions = [r.to_dict() for r in decompose(decomposer, rows, settings)]
    seconds = time.perf_counter() - started
    report = evaluate(references, predictions, name, args.limit)
    examples = report.examples
    summary = {
        "bench": "decoding_guards", "candidate": name, **fields, "step_cap": decomposer.step_cap(settings),
        "examples": len(examples), "sari": report.metrics["sari"], "exact_match": report.metrics["exact_match"],
        "mean_predicted_steps": report.metrics["mean_predicted_steps"], "mean_reference_steps": report.metrics["mean_gold_steps"],
        "repeated_step_share": sum(first_repeat(e.prediction) is not None for e in examples) / len(examples),
        "format_validity": report.metrics["format_validity"], "seconds": round(seconds, 2),
    }
    return summary, examples, predictions


def compare(rows: list[dict], scored: dict[str, list]) -> None:
    """Each candidate's SARI minus the baseline's, with its paired bootstrap 95% interval, into its row."""
    from qdtool.core.evaluation import paired_bootstrap

    base = [e.sari for e in scored[BASELINE]]
    for row in rows:
        mean, low, high = paired_bootstrap(base, [e.sari for e in scored[row["candidate"]]])
        row.update(sari_vs_none=mean, sari_vs_none_ci95=[low, high])


def table(rows: list[dict]) -> str:
    lines = ["| candidate | SARI | SARI − none (95% CI) | exact match | steps predicted / reference | repeated step | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["sari_vs_none_ci95"]
        lines.append(f"| {r['candidate']} | {r['sari']:.4f} | {r['sari_vs_none']:+.4f} ({low:+.4f} to {high:+.4f}) | "
                     f"{r['exact_match']:.4f} | {r['mean_predicted_steps']:.2f} / {r['mean_reference_steps']:.2f} | "
                     f"{r['repeated_step_share']:.1%} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def write(out: Path, rows: list[dict], predictions: dict[str, list[dict]], args) -> Path:
    from qdtool.core.evaluation import write_jsonl

    for name, preds in predictions.items():
        write_jsonl(preds, out / "predictions" / f"{name}.jsonl")
    write_jsonl(rows, out / "summary.jsonl")
    (out / "table.md").write_text(f"{rows[0]['examples']} examples of {args.data}, model {args.model}\n\n{table(rows)}", encoding="utf-8")
    return out


def main() -> None:
    args = parse_args()
    import torch
    import transformers

    from qdtool.core.data import read_dataset
    from qdtool.core.generation import GenerationSettings, decompose, load_decomposer

    references = [r.to_dict() for r in read_dataset(args.data)]
    rows = [{"question": r["question"], **({"id": r["id"]} if r.get("id") is not None else {})} for r in references[: args.limit]]
    decomposer = load_decomposer(args.model)
    decompose(decomposer, rows[:1], GenerationSettings(max_new_tokens=4))  # warm-up: the first candidate's time is not the first call's
    environment = {"model": args.model, "data": args.data, "device": str(next(decomposer.model.parameters()).device),
                   "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "torch": torch.__version__,
                   "transformers": transformers.__version__, "cpu": platform.processor() or platform.machine(),
                   "threads": torch.get_num_threads(), "date": date.today().isoformat()}
    summaries, scored, predictions = [], {}, {}
    known = candidates()
    for name in args.chosen:
        summary, scored[name], predictions[name] = measure(decomposer, references, rows, name, known[name], args)
        summaries.append({**summary, **environment})
        print(f"{name}: SARI {summary['sari']:.4f}, {summary['seconds']:.1f} s", flush=True)
    compare(summaries, scored)
    out = write(args.out, summaries, predictions, args)
    print(f"\n{len(rows)} examples, step cap {decomposer.step_cap(GenerationSettings())} (the model's own)\n\n{table(summaries)}")
    limit = f" --limit {args.limit}" if args.limit else ""
    other = "cap+repeat" if "cap+repeat" in args.chosen else args.chosen[-1]
    print(f"wrote {out}/summary.jsonl, table.md and predictions/; to score two again:\n"
          f"  qdtool eval --data {args.data}{limit} --compare {out}/predictions/{BASELINE}.jsonl {out}/predictions/{other}.jsonl")


if __name__ == "__main__":
    main()
