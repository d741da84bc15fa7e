"""The bench scripts run end to end on a tiny shape, so a GPU visit finds them working.

Their figures on a CPU mean nothing (the estimator predicts CUDA memory, not process RSS): these
tests check that each script runs, measures both sides and writes its JSON lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_estimator_accuracy_measures_and_estimates_each_configuration(tmp_path):
    out = tmp_path / "estimator.jsonl"
    _run("estimator_accuracy.py", "--shapes", "tiny", "--quick", "--out", str(out))
    rows = _lines(out)
    assert [(r["shape"], r["checkpointing"]) for r in rows] == [("tiny", False), ("tiny", True)]
    assert all(r["measured_gib"] > 0 and r["estimated_gib"] > 0 for r in rows)


def test_train_throughput_runs_both_sides_on_the_same_samples(tmp_path):
    out = tmp_path / "train.jsonl"
    stdout = _run("train_throughput.py", "--shape", "tiny", "--samples", "16", "--batch-tokens", "512", "--out", str(out))
    rows = _lines(out)
    assert [r["side"] for r in rows] == ["seed", "qdtool"]
    assert all(r["supervised_tokens_per_s"] > 0 and r["timed_steps"] > 0 for r in rows)
    ratio = rows[1]["supervised_tokens_per_s"] / rows[0]["supervised_tokens_per_s"]
    assert abs(rows[1]["ratio_supervised_tokens_per_s"] - ratio) < 0.02
    assert "ratio (qdtool / seed-style)" in stdout


def test_decode_throughput_compares_batched_with_one_at_a_time(tiny_model_dir, tmp_path):
    out = tmp_path / "decode.jsonl"
    _run("decode_throughput.py", "--model", str(tiny_model_dir), "--questions", "4", "--batch-size", "2", "--max-new-tokens", "4",
         "--out", str(out))
    rows = _lines(out)
    assert [r["batch_size"] for r in rows] == [1, 2] and all(r["questions"] == 4 for r in rows)


@pytest.mark.embedded
def test_head_strided_times_both_inputs_of_the_real_head(use_embedded_cache, tmp_path):
    out = tmp_path / "head.jsonl"
    stdout = _run("head_strided.py", "--rows", "2", "--length", "8", "--out", str(out))  # the script checks equal values
    (row,) = _lines(out)
    assert row["rows"] == 2 and row["strided_view_s"] > 0 and row["contiguous_copy_s"] > 0
    assert "strided / contiguous" in stdout
