"""Is synth's consensus selection worth its samples? Greedy vs one sample vs consensus-of-N, scored on val.

    python bench/synth_consensus.py --teacher runs/recipe_search/default            # the full measurement
    python bench/synth_consensus.py --teacher RUN --limit 8 --out /tmp/consensus    # a smoke run

A fine-tuned run is the teacher; val's questions go through `synth` three ways (the same settings
otherwise, no demonstrations: a fine-tuned model needs none), and each kept decomposition is scored
against val's gold steps with `qdtool eval --predictions`:

- greedy:      --samples 1 --temperature 0
- one sample:  --samples 1 --temperature T
- consensus:   --samples N --temperature T (the candidate with the highest mean SARI against the others)

A question synth drops (no valid candidate) counts as an empty output in the "all questions" SARI:
it is data the user does not get. The paired comparisons (`qdtool eval --compare`, bootstrap) are on
all questions, so every arm is judged on the same 200. Sampling is seeded (torch.manual_seed before
each arm), so a rerun reproduces the figures; each arm's synth output is resumable and kept in OUT.
Run it alone for its timings to mean anything (the SARI figures do not depend on the load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="a fine-tuned run directory (or any local model spec)")
    parser.add_argument("--data", type=Path, default=REPO / "examples" / "data" / "strategyqa_val.jsonl", help="val references")
    parser.add_argument("--samples", type=int, default=5, help="N of consensus-of-N")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--limit", type=int, default=None, help="the first N questions only (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "synth_consensus")
    return parser.parse_args()


def arms(args: argparse.Namespace) -> dict[str, dict]:
    return {
        "greedy": {"samples": 1, "temperature": 0.0},
        "one sample": {"samples": 1, "temperature": args.temperature},
        f"consensus of {args.samples}": {"samples": args.samples, "temperature": args.temperature},
    }


def run_arm(name: str, knobs: dict, questions: list[dict], args: argparse.Namespace) -> tuple[Path, float]:
    """synth's output for one arm (resumed if it is there) and the seconds this call took."""
    import torch

    from qdtool.core.synth import SynthSettings, synth

    out = args.out / (name.replace(" ", "_") + ".jsonl")
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    report = synth(questions, out, SynthSettings(teacher=args.teacher, shots=0, **knobs))
    seconds = time.perf_counter() - started
    print(f"{name}: kept {report.kept}, dropped {report.dropped} ({dict(report.reasons)}), {seconds:.0f} s", flush=True)
    return out, seconds


def predictions(out: Path, questions: list[dict]) -> tuple[Path, int]:
    """One prediction per question: the kept steps, or [] for a dropped one; and how many were kept."""
    kept = {}
    lines = out.read_text(encoding="utf-8").splitlines() if out.is_file() else []  # no file: nothing was kept
    for line in lines:
        if line.strip():
            record = json.loads(line)
            kept[record["question"]] = record["sub_questions"]
    path = out.with_suffix(".predictions.jsonl")
    path.write_text("".join(json.dumps({"question": q["question"], "sub_questions": kept.get(q["question"], [])},
                                       ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    return path, sum(q["question"] in kept for q in questions)


def qdtool_json(*arguments: str) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "qdtool", *arguments, "--json"], env=env, check=True, text=True,
                          stdout=subprocess.PIPE)
    return json.loads(done.stdout)


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    references = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    references = references[: args.limit] if args.limit else references
    data = args.out / "references.jsonl"  # exactly the questions asked, so --limit scores what it asked
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in references), encoding="utf-8")
    questions = [{"question": r["question"]} for r in references]  # the gold steps never reach the teacher

    rows, files = [], []
    for name, knobs in arms(args).items():
        out, seconds = run_arm(name, knobs, questions, args)
        path, kept = predictions(out, questions)
        metrics = qdtool_json("eval", "--data", str(data), "--predictions", str(path))["metrics"]
        rows.append({"arm": name, **knobs, "kept": kept, "questions": len(questions), "sari": metrics["sari"],
                     "step_count_accuracy": metrics["step_count_accuracy"], "seconds": round(seconds, 1)})
        files.append(str(path))
    compared = qdtool_json("eval", "--data", str(data), "--compare", *files)["sari_difference_vs_first"]
    for row, difference in zip(rows, compared, strict=True):
        row["sari_vs_greedy"] = difference["mean"] if difference else None
        row["sari_vs_greedy_ci95"] = difference["ci95"] if difference else None

    lines = [f"teacher: {args.teacher}; data: {args.data.name} ({len(questions)} questions); seed {args.seed}", "",
             "| arm | samples | temperature | kept | SARI (dropped = empty) | SARI − greedy (95% CI) | step count acc. | seconds |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        delta = "—" if r["sari_vs_greedy"] is None else \
            f"{r['sari_vs_greedy']:+.4f} ({r['sari_vs_greedy_ci95'][0]:+.4f} to {r['sari_vs_greedy_ci95'][1]:+.4f})"
        lines.append(f"| {r['arm']} | {r['samples']} | {r['temperature']:g} | {r['kept']}/{r['questions']} | {r['sari']:.4f} "
                     f"| {delta} | {r['step_count_accuracy']:.3f} | {r['seconds']:.0f} |")
    (args.out / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (args.out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
