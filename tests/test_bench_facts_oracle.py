"""bench/facts_oracle.py end to end on a tiny model: facts in the questions it trains and decodes on, none in what is scored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "facts_oracle.py"
VAL = REPO / "examples" / "data" / "strategyqa_val.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_oracle_trains_and_decodes_with_facts_and_scores_against_the_plain_questions(tiny_model_dir, tmp_path):
    gold = tmp_path / "gold.jsonl"  # a baseline whose SARI is known: the gold steps themselves
    gold.write_text("".join(json.dumps({k: r[k] for k in ("id", "question", "sub_questions")}) + "\n" for r in _rows(VAL)[:4]))
    out = tmp_path / "oracle"
    done = subprocess.run([sys.executable, str(SCRIPT), "--limit", "4", "--max-new-tokens", "8", "--out", str(out),
                           "--baseline", str(gold), "--", "--model", str(tiny_model_dir), "--max-steps", "2",
                           "--eval-decode-max-new-tokens", "8"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    train, val = _rows(out / "data" / "train.jsonl"), _rows(out / "data" / "val.jsonl")
    strategyqa = [r for r in train if r.get("facts")]
    assert len(strategyqa) == 1861 and all("\nFacts: " in r["question"] for r in strategyqa)
    assert all("\nFacts: " not in r["question"] for r in train if not r.get("facts"))  # the Korean records, as they are
    plain = _rows(VAL)[:4]
    assert [r["question"] for r in val] == [f"{p['question']}\nFacts: {' '.join(p['facts'])}" for p in plain]

    predictions = _rows(out / "predictions.jsonl")
    assert [p["question"] for p in predictions] == [p["question"] for p in plain]  # scored under the plain questions
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 2 and result["metrics"]["examples"] == 4
    assert result["sari_vs_baseline"] == pytest.approx(result["metrics"]["sari"] - 1.0, abs=1e-4)  # gold scores SARI 1
    assert "with gold facts: SARI" in done.stdout


def test_a_record_without_facts_is_left_as_it_is():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import facts_oracle
    finally:
        sys.path.remove(str(SCRIPT.parent))
    row = {"question": "Q?", "sub_questions": ["A?"]}
    assert facts_oracle.with_facts(row) == row
    assert facts_oracle.with_facts({**row, "facts": [" a. ", "", "b."]})["question"] == "Q?\nFacts: a. b."
