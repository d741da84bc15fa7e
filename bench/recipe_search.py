"""The recipe search: train each candidate recipe, score it on val, compare it with the default.

    python bench/recipe_search.py --list                                   # the candidates and their flags
    python bench/recipe_search.py --candidates default,epochs2,lr4e-4      # train + eval those (default always runs)
    python bench/recipe_search.py --candidates all --out runs/recipe_search
    python bench/recipe_search.py --candidates default --max-steps 4 --limit 16   # a smoke run of the machinery
    python bench/recipe_search.py --candidates full --baseline docs/results/default-predictions-2026-12-03.jsonl
    python bench/recipe_search.py --candidates r32 -- --model Qwen/Qwen2.5-0.5B   # flags after -- go to every run
    python bench/recipe_search.py --candidates data12,data25,data50 --baseline ...   # the learning curve

Each candidate is `qdtool train` with no arguments plus its own flags (the embedded model, the bundled
StrategyQA train split), trained in a child process into OUT/NAME, then decoded and scored on
--data (val: the only set we tune on) with `qdtool eval --model OUT/NAME --output OUT/NAME/eval`
(greedy, `eval`'s defaults), then compared with the default's predictions by `qdtool eval --compare`
(paired bootstrap over the same questions), so noise is not mistaken for progress. Training is
resumable: rerunning the same command skips finished runs and evaluations and continues a killed one.
The data12/25/50 candidates train on a seeded 12.5/25/50% of the training records (written to
OUT/NAME-data/, with the default's own hold-out as --eval-data) for about the default's step count.

The default is trained first unless --baseline gives its val predictions from an earlier search
(OUT/default/eval/predictions.jsonl, kept in docs/results/): training is deterministic, so while the
default recipe, the model and the decoding are unchanged those predictions are what a new default run
would write, and a session saves the half hour. A stale file shows: the table names the file.

Writes OUT/summary.jsonl (one row per candidate: flags, steps, wall time, peak RSS, eval loss, the
selected step, SARI and its difference from the default with a 95% interval) and OUT/table.md.
Run it alone: two torch processes on two cores make each other's wall times noise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "default"

# name -> the `qdtool train` flags that differ from the defaults (configs/default.yaml).
CANDIDATES: dict[str, list[str]] = {
    BASELINE: [],
    "epochs2": ["--epochs", "2"],
    "epochs3": ["--epochs", "3"],
    "epochs4": ["--epochs", "4"],
    "lr1e-4": ["--lr", "1e-4"],
    "lr4e-4": ["--lr", "4e-4"],
    "r8": ["--lora-r", "8", "--lora-alpha", "16"],
    "r32": ["--lora-r", "32", "--lora-alpha", "64"],
    "r64": ["--lora-r", "64", "--lora-alpha", "128"],
    "dropout0": ["--lora-dropout", "0"],
    "dropout0.1": ["--lora-dropout", "0.1"],
    "full": ["--method", "full", "--lr", "5e-5"],
    "rows512": ["--batch-tokens", "512", "--grad-accum", "4"],
    "rows2048": ["--batch-tokens", "2048", "--grad-accum", "1"],
    "neftune5": ["--neftune-alpha", "5"],
    "plain": ["--template", "plain"],
    "chat": ["--template", "chat"],
    "select-sari": ["--select-by", "sari"],
    # the earlier bundle's only significant gain (+0.0172, 95% CI +0.0005 to +0.0336; docs/results.md)
    "e2-r32-lr4e-4": ["--epochs", "2", "--lora-r", "32", "--lora-alpha", "64", "--lr", "4e-4"],
    # e2-r32-lr4e-4 kept its step-100 weights (about one epoch; +0.012 on 2026-12-03): that recipe in one epoch's time
    "r32-lr4e-4": ["--lora-r", "32", "--lora-alpha", "64", "--lr", "4e-4"],
    # epochs3 on 2026-12-04: eval loss bottomed at step 200 while eval SARI still rose (0.560 -> 0.595 at 250)
    "e3-sari": ["--epochs", "3", "--select-by", "sari"],
    "e4-sari": ["--epochs", "4", "--select-by", "sari"],
    # e4-sari's 32-record eval SARI jumped 0.553 -> 0.602 -> 0.557 around its pick: select on all 95 eval records
    "e3-sari95": ["--epochs", "3", "--select-by", "sari", "--eval-decode-records", "95"],
    # the learning curve: a seeded share of the default's training records (SUBSETS), evaluated on the default's own
    # held-out records, for about the default's optimizer steps (97 here): does more data of this kind help?
    "data12": ["--epochs", "8"],
    "data25": ["--epochs", "4"],
    "data50": ["--epochs", "2"],
}
# candidate -> the share of the training records it trains on (the rest of its flags are in CANDIDATES)
SUBSETS: dict[str, float] = {"data12": 0.125, "data25": 0.25, "data50": 0.5}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", default=BASELINE, help="comma-separated names, or 'all' (the default always runs)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "recipe_search", help="one run directory per candidate")
    parser.add_argument("--data", default=str(REPO / "examples" / "data" / "strategyqa_val.jsonl"), help="val references")
    parser.add_argument("--limit", type=int, default=None, help="score the first N references only (smoke runs)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every run's steps (smoke runs; not a recipe)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="the default's predictions.jsonl from an earlier search: compare with it instead of training the default")
    parser.add_argument("--list", action="store_true", help="print the candidates and exit")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.extra = argv[split + 1:]  # `qdtool train` flags for every candidate (another --model, --data for a smoke run)
    names = list(CANDIDATES) if args.candidates == "all" else [n for n in args.candidates.split(",") if n]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(CANDIDATES)}")
    if args.baseline is not None and not args.baseline.is_file():
        parser.error(f"--baseline {args.baseline}: no such file")
    if args.baseline is not None and BASELINE in names:
        parser.error("--baseline stands in for the default's run: leave 'default' out of --candidates")
    args.names = ([] if args.baseline else [BASELINE]) + [n for n in names if n != BASELINE]
    args.limit_flags = ["--limit", str(args.limit)] if args.limit else []  # the same references for eval and --compare
    return args


def _qdtool(*arguments: str, capture: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "qdtool", *arguments], env=env, check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)


def _last_flag(extra: list[str], flag: str) -> str | None:
    """The value of the last `flag VALUE` in the pass-through flags (the one `qdtool train` would use)."""
    values = [extra[i + 1] for i, token in enumerate(extra[:-1]) if token == flag]
    return values[-1] if values else None


def subset_flags(name: str, args: argparse.Namespace) -> list[str]:
    """For a SUBSETS candidate, `--data` and `--eval-data` files next to its run: the hold-out `qdtool train` would make
    of the same data (its eval_split, eval_max_records and seed), and a seeded share of the rest. Else no flags."""
    if name not in SUBSETS:
        return []
    from qdtool.config import TrainConfig
    from qdtool.core.batching import split_eval
    from qdtool.core.data import read_dataset
    from qdtool.core.evaluation import write_jsonl
    from qdtool.resources import default_train_files

    folder = args.out / f"{name}-data"
    train_file, eval_file = folder / "train.jsonl", folder / "eval.jsonl"
    if not (train_file.is_file() and eval_file.is_file()):  # written once: a rerun resumes on the same files
        defaults = TrainConfig()
        given = _last_flag(args.extra, "--data")
        records = [r for path in ([given] if given else default_train_files()) for r in read_dataset(path)]
        share = float(_last_flag(args.extra, "--eval-split") or defaults.eval_split)
        limit = int(_last_flag(args.extra, "--eval-max-records") or defaults.eval_max_records)
        seed = int(_last_flag(args.extra, "--seed") or defaults.seed)
        train_records, eval_records = split_eval(records, share, limit, seed)
        kept = sorted(random.Random(seed).sample(range(len(train_records)), max(1, round(len(train_records) * SUBSETS[name]))))
        write_jsonl([r.to_dict() for r in eval_records], eval_file)  # atomic: a killed run leaves no half file to resume on
        write_jsonl([train_records[i].to_dict() for i in kept], train_file)
    return ["--data", str(train_file), "--eval-data", str(eval_file)]


def train(name: str, run: Path, args: argparse.Namespace) -> dict:
    """Train (or finish, or skip) one candidate; its run_summary.json plus the wall time of this call."""
    steps = ["--max-steps", str(args.max_steps)] if args.max_steps else []
    data = subset_flags(name, args)
    timing = run / "search_timing.json"  # the training's wall time, kept for reruns that find the run complete
    finished_before, resumed = (run / "run_summary.json").is_file(), (run / "checkpoints").is_dir()
    started = time.perf_counter()
    _qdtool("train", "--output-dir", str(run), "--report-to", "none", *args.extra, *CANDIDATES[name], *data, *steps)
    if not finished_before:  # after a kill, this is the resumed part's time only: the table says so
        timing.write_text(json.dumps({"train_wall_s": round(time.perf_counter() - started, 1), "resumed": resumed}), encoding="utf-8")
    elif not timing.is_file():
        raise SystemExit(f"{run} was trained outside the search (no {timing.name}): write its wall time there or remove the run")
    summary = json.loads((run / "run_summary.json").read_text(encoding="utf-8"))
    return {**summary, **json.loads(timing.read_text(encoding="utf-8"))}


def evaluate(run: Path, args: argparse.Namespace) -> dict:
    """`qdtool eval` of the run on val (skipped when its report is there); the report and the decoding time."""
    out = run / "eval"
    report = out / "report.json"
    if not report.is_file():
        started = time.perf_counter()
        _qdtool("eval", "--data", args.data, "--model", str(run), "--output", str(out), *args.limit_flags)
        (out / "eval_wall_s").write_text(f"{time.perf_counter() - started:.1f}\n", encoding="utf-8")
    return {**json.loads(report.read_text(encoding="utf-8")), "eval_wall_s": float((out / "eval_wall_s").read_text())}


def compare(baseline: Path, run: Path, args: argparse.Namespace) -> dict:
    """SARI(run) - SARI(baseline: the default's predictions) on the same questions, with its paired bootstrap 95% interval."""
    printed = _qdtool("eval", "--data", args.data, *args.limit_flags, "--json", "--compare",
                      str(baseline), str(run / "eval" / "predictions.jsonl"), capture=True).stdout
    difference = json.loads(printed)["sari_difference_vs_first"][1]
    return {"sari_vs_default": difference["mean"], "sari_vs_default_ci95": difference["ci95"]} if difference else {}


def row(name: str, summary: dict, report: dict) -> dict:
    metrics = report["metrics"]
    return {
        "candidate": name, "flags": " ".join(CANDIDATES[name]) or "(none)", "steps": summary["total_steps"],
        "train_share": SUBSETS.get(name, 1.0),
        "train_wall_s": summary["train_wall_s"], "resumed": summary.get("resumed", False),
        "peak_rss_gib": round(summary["peak_memory_gb"], 2),
        "best_eval_loss": summary["best_eval_loss"], "selected_by": summary["selected_by"], "selected_step": summary["selected_step"],
        "sari": metrics["sari"], "step_count_accuracy": metrics["step_count_accuracy"],
        "mean_predicted_steps": metrics["mean_predicted_steps"], "mean_gold_steps": metrics["mean_gold_steps"],
        "eval_wall_s": report["eval_wall_s"],
    }


def table(rows: list[dict]) -> str:
    lines = ["| candidate | flags | steps | train wall | peak RSS | best eval loss | adapter step | SARI | SARI − default (95% CI) "
             "| steps predicted / gold | eval wall |", "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        low, high = r.get("sari_vs_default_ci95") or (0.0, 0.0)
        delta = "—" if r["candidate"] == BASELINE else f"{r['sari_vs_default']:+.4f} ({low:+.4f} to {high:+.4f})"
        wall = f"{r['train_wall_s'] / 60:.1f} min" + (" (resumed part)" if r["resumed"] else "")
        share = r.get("train_share", 1.0)
        flags = f"`{r['flags']}`" + (f" on {share:.1%} of the training records" if share < 1 else "")
        lines.append(f"| {r['candidate']} | {flags} | {r['steps']} | {wall} | {r['peak_rss_gib']:.2f} GiB "
                     f"| {r['best_eval_loss']:.3f} | {r['selected_step']} ({r['selected_by']}) | {r['sari']:.4f} | {delta} "
                     f"| {r['mean_predicted_steps']:.2f} / {r['mean_gold_steps']:.2f} | {r['eval_wall_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    if args.list:
        for name, flags in CANDIDATES.items():
            share = f" on {SUBSETS[name]:.1%} of the training records" if name in SUBSETS else ""
            print(f"{name:12} {' '.join(flags) or '(the defaults)'}{share}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    baseline = args.baseline or args.out / BASELINE / "eval" / "predictions.jsonl"
    heading = f"val: {args.data}{f' (first {args.limit})' if args.limit else ''}"
    heading += f"\n\ndefault: the predictions in {args.baseline} (not trained again)" if args.baseline else ""
    heading += f"\n\nevery run also had: `{' '.join(args.extra)}`" if args.extra else ""
    for name in args.names:
        run = args.out / name
        print(f"== {name}: qdtool train {' '.join(CANDIDATES[name])}", flush=True)
        summary, report = train(name, run, args), evaluate(run, args)
        rows.append({**row(name, summary, report), **({} if name == BASELINE else compare(baseline, run, args))})
        (args.out / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        (args.out / "table.md").write_text(f"{heading}\n\n{table(rows)}", encoding="utf-8")
        print(table(rows[-1:]), flush=True)
    print(f"\n{table(rows)}\nwrote {args.out}/summary.jsonl and table.md")


if __name__ == "__main__":
    main()
