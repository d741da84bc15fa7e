"""bench/decompose_startup.py runs end to end on the tiny model and reports every phase."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_decompose_startup_times_each_phase(tiny_model_dir, tmp_path):
    out = tmp_path / "startup.jsonl"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "decompose_startup.py"), "--model", str(tiny_model_dir),
                           "--max-new-tokens", "4", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    phases = row["phases_s"]
    assert set(phases) == {"import qdtool CLI", "import torch", "import transformers", "load model", "load tokenizer",
                           "load_decomposer in all", "generate", "total in process"}
    assert phases["load_decomposer in all"] >= phases["load model"] + phases["load tokenizer"] - 0.01
    assert phases["total in process"] >= phases["generate"] + phases["load_decomposer in all"]
    assert row["cold"] is False and row["generated_tokens"] <= 8
    assert row["tokenizer"] in ("TokenizersBackend", "PreTrainedTokenizerFast")  # built from tokenizer.json alone
    assert set(row["phases_cpu_s"]) == set(phases) and row["phases_cpu_s"]["total in process"] > 0
    assert "load tokenizer" in done.stdout
