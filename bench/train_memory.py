"""Where `qdtool train`'s memory goes: resident memory sampled through a real run, phase by phase.

    python bench/train_memory.py --max-steps 12                          # this tree, the defaults
    python bench/train_memory.py --src /tmp/old/src --max-steps 12       # another checkout (before/after)
    python bench/train_memory.py --max-steps 12 -- --batch-tokens 1024   # after --: more `qdtool train` flags
    python bench/train_memory.py --baseline-src /tmp/old/src --max-steps 12   # before/after, one after the other

It starts `python -m qdtool train` (the embedded model, the bundled data, unless the extra flags say
otherwise) in a child process with `--src` first on PYTHONPATH, reads the child's VmRSS from
/proc every 0.2 s, and splits the run into phases by the files the run writes: *load* ends when
run_config.yaml appears (written once the model has loaded), *first step* ends with the first step
row in metrics.jsonl, *steady* is everything after. It prints the peak of each phase, the peak RSS
of every step (the step rows' own ru_maxrss), and VmHWM (the kernel's peak), and appends one JSON
line to --out. With --baseline-src, the same run is made first with that tree, then with --src, and
the ratios (peak RSS, supervised tokens/s of the training steps) are printed. Run it alone: two torch
processes on two cores make each other's figures noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _steps(metrics: Path) -> list[dict]:
    if not metrics.is_file():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r for r in rows if "loss" in r]


def profile(src: Path, max_steps: int, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="qdtool-mem-")) / "run"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "qdtool", "train", "--max-steps", str(max_steps), "--output-dir", str(out), *extra]
    started = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    phases = {"load": 0, "first_step": 0, "steady": 0}
    hwm = 0
    while child.poll() is None:
        rss = _status_kib(child.pid, "VmRSS")
        hwm = max(hwm, _status_kib(child.pid, "VmHWM"))
        if not (out / "run_config.yaml").exists():
            phase = "load"
        else:
            phase = "first_step" if not _steps(out / "metrics.jsonl") else "steady"
        phases[phase] = max(phases[phase], rss)
        time.sleep(0.2)
    stderr = child.stderr.read() if child.stderr else ""
    if child.returncode != 0:
        raise SystemExit(f"train failed ({child.returncode}):\n{stderr[-2000:]}")
    steps = _steps(out / "metrics.jsonl")
    summary = json.loads((out / "run_summary.json").read_text())
    return {
        "src": str(src), "run": str(out), "max_steps": max_steps, "extra": extra, "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_kib": {k: v for k, v in phases.items()}, "vm_hwm_kib": hwm,
        "step_peak_gib": [r.get("peak_memory_gb") for r in steps],
        "supervised_tokens_per_s": round(summary["supervised_tokens_per_s"], 2),
        "final_train_loss": summary.get("final_train_loss"), "final_eval_loss": summary.get("final_eval_loss"),
    }


def _print(row: dict) -> None:
    gib = lambda kib: f"{kib / 2**20:.2f} GiB"  # noqa: E731
    print(f"{row['src']}  ({row['max_steps']} steps, {row['wall_s']} s, {row['supervised_tokens_per_s']} supervised tokens/s)")
    for phase, kib in row["peak_rss_kib"].items():
        print(f"  peak RSS, {phase:<10} {gib(kib)}")
    print(f"  VmHWM (whole run)     {gib(row['vm_hwm_kib'])}")
    print("  peak per step (GiB)   " + " ".join(f"{v:.2f}" for v in row["step_peak_gib"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the source tree to run (its src/ directory)")
    parser.add_argument("--baseline-src", type=Path, help="a tree to run first, the same way, for before/after ratios")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "train_memory.jsonl")
    parser.add_argument("extra", nargs="*", help="more `qdtool train` flags, after --")
    args = parser.parse_args()
    trees = ([args.baseline_src] if args.baseline_src else []) + [args.src]
    rows = []
    for tree in trees:
        rows.append(profile(tree.resolve(), args.max_steps, args.extra))
        _print(rows[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    if len(rows) == 2:
        before, after = rows
        print(f"after / before: peak RSS {after['vm_hwm_kib'] / before['vm_hwm_kib']:.2f}x, "
              f"supervised tokens/s {after['supervised_tokens_per_s'] / before['supervised_tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
