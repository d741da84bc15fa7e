"""Where the time of one `qdtool decompose --model SPEC QUESTION` goes, phase by phase, in one process.

    python bench/decompose_startup.py                     # warm: the embedded cache exists
    python bench/decompose_startup.py --cold              # first use: converts into a fresh temp cache
    python bench/decompose_startup.py --model runs/NAME --out docs/benchmarks/decompose_startup.jsonl

Phases: imports (what the CLI imports, torch, transformers), the first-use conversion of the
embedded GGUF (with its steps), model load, tokenizer load, generation of one question (greedy, as
decompose does). The model and tokenizer are timed inside `load_decomposer`, so the figures are
those of the real command. The whole command is timed from outside with /usr/bin/time -v.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()


class Clock:
    """Wall and CPU seconds of each phase. CPU time (all threads) says what a phase costs on a
    shared machine, where wall time also counts the waiting for other jobs."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def start(self) -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def stop(self, name: str, started: tuple[float, float]) -> None:
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - started[0]
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - started[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--question", default="Was Aristotle alive when the laptop was invented?")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--cold", action="store_true", help="use a fresh temporary QDTOOL_CACHE (the embedded model converts)")
    parser.add_argument("--out", type=Path, help="append one JSON line here")
    parser.add_argument("--label", default="", help="recorded in the JSON line (e.g. which code was measured)")
    args = parser.parse_args()

    cache = None
    if args.cold:
        cache = Path(tempfile.mkdtemp(prefix="qdtool-cold-"))
        os.environ["QDTOOL_CACHE"] = str(cache)
    clock = Clock()
    try:
        row = _measure(args, clock)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    print(f"{'phase':<48} {'wall':>8} {'cpu':>8}")
    for name, seconds in clock.wall.items():
        print(f"{name:<48} {seconds:7.2f}s {clock.cpu[name]:7.2f}s")
    if args.out:
        with args.out.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")


def _measure(args: argparse.Namespace, clock: Clock) -> dict:
    t = clock.start()
    import qdtool.cli.app  # noqa: F401  (what the CLI imports before a command runs)
    clock.stop("import qdtool CLI", t)
    t = clock.start()
    import torch
    clock.stop("import torch", t)
    t = clock.start()
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (the lazy modules load here)
    clock.stop("import transformers", t)

    from qdtool.core import generation, modeling

    def timed(name: str, function):
        def wrapper(*a, **k):
            started = clock.start()
            try:
                return function(*a, **k)
            finally:
                clock.stop(name, started)
        return wrapper

    cold = args.model == "embedded" and not modeling.is_complete(modeling.embedded_cache_dir())
    if cold:
        steps: list[tuple[str, tuple[float, float]]] = []

        def step(message: str) -> None:
            if steps:
                clock.stop(f"  convert: {steps[-1][0][:40]}", steps[-1][1])
            steps.append((message, clock.start()))

        t = clock.start()
        modeling.ensure_embedded(step)
        clock.stop(f"  convert: {steps[-1][0][:40]}", steps[-1][1])
        clock.stop("convert the GGUF (first use)", t)
    modeling.load_model = timed("load model", modeling.load_model)
    modeling.load_tokenizer = timed("load tokenizer", modeling.load_tokenizer)
    t = clock.start()
    decomposer = generation.load_decomposer(args.model, device="cpu")
    clock.stop("load_decomposer in all", t)
    settings = generation.GenerationSettings(max_new_tokens=args.max_new_tokens)
    t = clock.start()
    (result,) = generation.decompose(decomposer, [{"question": args.question}], settings)
    clock.stop("generate", t)
    clock.wall["total in process"] = time.perf_counter() - START
    clock.cpu["total in process"] = time.process_time()
    generated = len(decomposer.tokenizer(result.raw, add_special_tokens=False)["input_ids"])
    return {
        "label": args.label, "model": args.model, "cold": cold, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "dtype": str(next(decomposer.model.parameters()).dtype).removeprefix("torch."),
        "tokenizer": type(decomposer.tokenizer).__name__, "generated_tokens": generated,
        "max_new_tokens": args.max_new_tokens, "parse_ok": result.parse_ok,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "phases_s": {name: round(seconds, 2) for name, seconds in clock.wall.items()},
        "phases_cpu_s": {name: round(seconds, 2) for name, seconds in clock.cpu.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
