"""bench/train_memory.py profiles a real `qdtool train` run phase by phase, and compares two trees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_it_profiles_each_phase_and_prints_the_before_after_ratios(tiny_model_dir, tmp_path):
    out = tmp_path / "memory.jsonl"
    extra = ["--model", str(tiny_model_dir), "--data", str(REPO / "examples" / "data" / "sample_train.json"), "--lora-r", "4",
             "--eval-split", "0.2", "--report-to", "none"]
    done = subprocess.run([sys.executable, str(REPO / "bench" / "train_memory.py"), "--baseline-src", str(REPO / "src"),
                           "--max-steps", "2", "--out", str(out), "--", *extra], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["peak_rss_kib"]["load"] > 0 and row["vm_hwm_kib"] >= max(row["peak_rss_kib"].values())
        assert len(row["step_peak_gib"]) == 2 and row["supervised_tokens_per_s"] > 0
    assert "after / before: peak RSS" in done.stdout and "peak RSS, steady" in done.stdout
