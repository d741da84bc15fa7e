"""How much of the SARI gap is knowledge? Train and decode with StrategyQA's gold facts in the question.

    python bench/facts_oracle.py --baseline docs/results/default-predictions-2026-12-03.jsonl --out /tmp/facts
    python bench/facts_oracle.py --limit 8 --max-new-tokens 8 --out /tmp/f -- --max-steps 2   # a smoke run

An oracle, not a recipe: every StrategyQA record carries `facts`, the evidence its annotators wrote
for the answer, which a user's question never has. This script appends them to each question
("QUESTION\\nFacts: FACT FACT ..."), trains `qdtool train`'s default recipe on those records (the
Korean records, which have no facts, as they are) into OUT/run, decodes val's questions with their
facts, and scores the outputs against val's plain questions and gold steps with `qdtool eval`
(SARI's source is the question without facts), compared with the default's predictions by the
paired bootstrap. If knowing the facts lifts SARI well above every recipe, what limits the 270M
model is what it knows of the world, not how it is trained: a larger base model, or retrieval
before decomposing, is the lever. Flags after `--` go to `qdtool train`. Run it alone.

`--context neighbours` is the realisable counterpart, not an oracle: instead of the facts, each
question gets the K training questions most like it (TF-IDF cosine over words; never itself) with
their gold steps, for training and val records alike, so the model learns to reuse the annotators'
wording of similar questions (retrieval-augmented decomposition, what `decompose` could do with a
user's training file beside it):

    python bench/facts_oracle.py --context neighbours --baseline docs/results/default-predictions-2026-12-03.jsonl --out /tmp/nb
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VAL = REPO / "examples" / "data" / "strategyqa_val.jsonl"


def with_facts(row: dict) -> dict:
    """The record with its facts appended to the question (unchanged when it has none)."""
    facts = [f.strip() for f in row.get("facts") or [] if f and f.strip()]
    return {**row, "question": f"{row['question']}\nFacts: {' '.join(facts)}"} if facts else dict(row)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def neighbours(queries: list[dict], pool: list[dict], k: int) -> list[list[dict]]:
    """For each query, the k pool records whose questions are most like its own (TF-IDF cosine), best first.

    A pool record with the query's id or the same question text is never its neighbour (a training
    record must not see its own answer).
    """
    import numpy as np

    vocabulary: dict[str, int] = {}
    documents = [[vocabulary.setdefault(w, len(vocabulary)) for w in _words(r["question"])] for r in pool]
    df = np.zeros(len(vocabulary))
    for ids in documents:
        df[sorted(set(ids))] += 1
    idf = np.log((1 + len(pool)) / (1 + df)) + 1.0

    def vectors(rows_of_ids: list[list[int]]) -> np.ndarray:
        matrix = np.zeros((len(rows_of_ids), len(vocabulary)), dtype=np.float32)
        for row, ids in enumerate(rows_of_ids):
            for i in ids:
                matrix[row, i] += 1.0
        matrix *= idf
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    pool_vectors = vectors(documents)
    query_vectors = vectors([[vocabulary[w] for w in _words(q["question"]) if w in vocabulary] for q in queries])
    similarity = query_vectors @ pool_vectors.T
    texts = [" ".join(_words(r["question"])) for r in pool]
    chosen = []
    for row, query in enumerate(queries):
        own, text = query.get("id"), " ".join(_words(query["question"]))
        picked = []
        for j in np.argsort(-similarity[row], kind="stable"):
            if (own is not None and pool[j].get("id") == own) or texts[j] == text:
                continue
            picked.append(pool[j])
            if len(picked) == k:
                break
        chosen.append(picked)
    return chosen


def with_examples(row: dict, examples: list[dict]) -> dict:
    """The record with its retrieved examples (question and gold steps) after the question."""
    shown = "".join(f"\nQ: {e['question']}\nSteps: {' | '.join(e['sub_questions'])}" for e in examples)
    return {**row, "question": f"{row['question']}\nSimilar questions:{shown}"} if examples else dict(row)


def _qdtool(*arguments: str, capture: bool = False) -> str:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "qdtool", *arguments], env=env, check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "facts_oracle")
    parser.add_argument("--data", type=Path, default=VAL, help="val references (with facts)")
    parser.add_argument("--limit", type=int, default=None, help="decode and score the first N references only")
    parser.add_argument("--baseline", type=Path, default=None, help="predictions to compare with (the default's, kept)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="for the decoding (default: eval's own)")
    parser.add_argument("--context", choices=("facts", "neighbours"), default="facts",
                        help="what follows each question: its gold facts (the oracle) or K similar training records")
    parser.add_argument("--k", type=int, default=2, help="how many similar training records (--context neighbours)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:split]), argv[split + 1:]
    if args.baseline is not None and not args.baseline.is_file():
        parser.error(f"--baseline {args.baseline}: no such file")

    from qdtool.core.data import read_dataset
    from qdtool.core.evaluation import write_jsonl
    from qdtool.core.files import read_json_lines
    from qdtool.resources import default_train_files

    # one file, in the order `qdtool train` reads the default files: its seeded hold-out takes the same records
    pool = [r.to_dict() for path in default_train_files() for r in read_dataset(path)]
    references = [r.to_dict() for r in read_dataset(args.data)][: args.limit]
    if any("id" not in r for r in references):
        raise SystemExit(f"{args.data}: every reference needs an id (predictions are matched to them by id)")
    if args.context == "facts":
        train_rows, val_rows = [with_facts(r) for r in pool], [with_facts(r) for r in references]
    else:
        train_rows = [with_examples(r, e) for r, e in zip(pool, neighbours(pool, pool, args.k), strict=True)]
        val_rows = [with_examples(r, e) for r, e in zip(references, neighbours(references, pool, args.k), strict=True)]
    write_jsonl(train_rows, args.out / "data" / "train.jsonl")
    write_jsonl(val_rows, args.out / "data" / "val.jsonl")
    plain = args.out / "data" / "val-plain.jsonl"
    write_jsonl(references, plain)

    run = args.out / "run"
    started = time.perf_counter()
    _qdtool("train", "--data", str(args.out / "data" / "train.jsonl"), "--output-dir", str(run), "--report-to", "none", *extra)
    train_wall = time.perf_counter() - started
    started = time.perf_counter()
    decoding = ["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens else []
    _qdtool("eval", "--data", str(args.out / "data" / "val.jsonl"), "--model", str(run), "--output", str(run / "eval"), *decoding)
    eval_wall = time.perf_counter() - started

    # the outputs, under the plain questions: scored as any prediction file is, against the plain references
    questions = {str(r["id"]): r["question"] for r in references}
    decoded = read_json_lines(run / "eval" / "predictions.jsonl")
    predictions = args.out / "predictions.jsonl"
    write_jsonl([{**p, "question": questions[str(p["id"])]} for p in decoded], predictions)
    report = json.loads(_qdtool("eval", "--data", str(plain), "--predictions", str(predictions), "--json", capture=True))
    summary = json.loads((run / "run_summary.json").read_text(encoding="utf-8"))
    result = {
        "train_wall_s": round(train_wall, 1), "eval_wall_s": round(eval_wall, 1), "steps": summary["total_steps"],
        "peak_rss_gib": round(summary["peak_memory_gb"], 2), "best_eval_loss": summary["best_eval_loss"],
        "selected_step": summary["selected_step"], "context": args.context, "metrics": report["metrics"],
    }
    if args.baseline is not None:
        compared = json.loads(_qdtool("eval", "--data", str(plain), "--json", "--compare", str(args.baseline), str(predictions),
                                      capture=True))
        difference = compared["sari_difference_vs_first"][1]
        result |= {"sari_vs_baseline": difference["mean"], "sari_vs_baseline_ci95": difference["ci95"]}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    m = result["metrics"]
    label = "with gold facts" if args.context == "facts" else f"with {args.k} similar training records"
    line = f"{label}: SARI {m['sari']:.4f} (keep {m['sari_keep']:.3f} / add {m['sari_add']:.3f} / delete {m['sari_del']:.3f})"
    if "sari_vs_baseline" in result:
        low, high = result["sari_vs_baseline_ci95"]
        line += f", {result['sari_vs_baseline']:+.4f} ({low:+.4f} to {high:+.4f}) against {args.baseline}"
    print(f"{line}\n{result['steps']} steps in {train_wall / 60:.1f} min, decoding {eval_wall / 60:.1f} min; wrote {args.out}/result.json")


if __name__ == "__main__":
    main()
