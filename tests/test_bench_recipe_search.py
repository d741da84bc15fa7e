"""bench/recipe_search.py end to end on a tiny model: train, eval, compare with the default; --baseline stands in for it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "recipe_search.py"


def _search(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)


def _rows(out: Path) -> dict[str, dict]:
    return {row["candidate"]: row for row in map(json.loads, (out / "summary.jsonl").read_text().splitlines())}


def test_a_candidate_is_compared_with_the_default_run_or_with_its_kept_predictions(tiny_model_dir, tmp_path):
    tiny = ["--", "--model", str(tiny_model_dir), "--data", str(REPO / "examples" / "data" / "sample_train.json"),
            "--eval-split", "0.2", "--eval-decode-max-new-tokens", "8"]
    smoke = ["--max-steps", "2", "--limit", "4"]
    first = _search("--candidates", "r8,data50", *smoke, "--out", str(tmp_path / "a"), *tiny)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = _rows(tmp_path / "a")
    assert list(rows) == ["default", "r8", "data50"] and rows["r8"]["steps"] == 2
    assert rows["data50"]["train_share"] == 0.5 and "on 50.0% of the training records" in (tmp_path / "a" / "table.md").read_text()
    assert rows["r8"]["sari_vs_default"] == pytest.approx(_report_difference(tmp_path / "a"), abs=1e-4)
    low, high = rows["r8"]["sari_vs_default_ci95"]
    assert low <= rows["r8"]["sari_vs_default"] <= high

    kept = tmp_path / "a" / "default" / "eval" / "predictions.jsonl"
    second = _search("--candidates", "r8", *smoke, "--out", str(tmp_path / "b"), "--baseline", str(kept), *tiny)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not (tmp_path / "b" / "default").exists()  # the default was not trained again
    again = _rows(tmp_path / "b")
    assert list(again) == ["r8"]
    assert again["r8"]["sari_vs_default"] == rows["r8"]["sari_vs_default"]  # training is deterministic: the same comparison
    table = (tmp_path / "b" / "table.md").read_text()
    assert f"default: the predictions in {kept}" in table and "--eval-split 0.2" in table


def test_a_subset_candidate_trains_on_a_seeded_share_and_keeps_the_defaults_hold_out(tmp_path):
    """data50's files: half of what `qdtool train` would train on, and exactly the records it would hold out."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import recipe_search
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from qdtool.core.batching import split_eval
    from qdtool.core.data import read_dataset

    data = REPO / "examples" / "data" / "sample_train.json"
    args = argparse.Namespace(out=tmp_path, extra=["--data", str(data), "--eval-split", "0.2"])
    flags = recipe_search.subset_flags("data50", args)
    train_file, eval_file = Path(flags[flags.index("--data") + 1]), Path(flags[flags.index("--eval-data") + 1])
    train, held = split_eval(read_dataset(data), 0.2, 200, 42)
    subset, evaluated = read_dataset(train_file), read_dataset(eval_file)
    assert [r.question for r in evaluated] == [r.question for r in held]
    assert len(subset) == round(len(train) / 2)
    assert {r.question for r in subset} < {r.question for r in train}  # a proper subset, none of it held out
    assert recipe_search.subset_flags("data50", args) == flags and recipe_search.subset_flags("r8", args) == []


def _report_difference(out: Path) -> float:
    """SARI(r8) - SARI(default) from the two eval reports: what the paired comparison's mean must be."""
    sari = {name: json.loads((out / name / "eval" / "report.json").read_text())["metrics"]["sari"] for name in ("default", "r8")}
    return sari["r8"] - sari["default"]


def test_baseline_refuses_a_missing_file_and_the_default_named_beside_it(tmp_path):
    missing = _search("--candidates", "r8", "--baseline", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    (tmp_path / "p.jsonl").write_text("{}\n")
    both = _search("--candidates", "default,r8", "--baseline", str(tmp_path / "p.jsonl"))
    assert both.returncode == 2 and "leave 'default' out" in both.stderr
