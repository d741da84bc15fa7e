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


def _script():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import facts_oracle
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return facts_oracle


def test_neighbours_are_the_most_similar_questions_best_first_and_never_the_record_itself():
    f = _script()
    pool = [{"id": "a", "question": "Did Genghis Khan have children?", "sub_questions": ["How many kids did Genghis Khan have?"]},
            {"id": "b", "question": "Was Genghis Khan a ruler of Mongolia?", "sub_questions": ["What did Genghis Khan rule?"]},
            {"id": "c", "question": "Is the Eiffel Tower in Paris?", "sub_questions": ["Where is the Eiffel Tower?"]},
            {"id": "d", "question": "did genghis khan have children", "sub_questions": ["x"]}]  # a's text: never a's neighbour
    chosen = f.neighbours(pool, pool, 2)
    assert [e["id"] for e in chosen[0]] == ["b", "c"]  # not itself (id), not d (same text)
    assert [e["id"] for e in chosen[2]][0] != "c"
    assert all(len(c) == 2 and row["id"] not in {e["id"] for e in c} for row, c in zip(pool, chosen, strict=True))
    query = {"id": "v1", "question": "Who ruled Mongolia, Genghis Khan?"}
    assert [e["id"] for e in f.neighbours([query], pool, 1)[0]] == ["b"]
    shown = f.with_examples(query, f.neighbours([query], pool, 1)[0])["question"]
    assert shown == ("Who ruled Mongolia, Genghis Khan?\nSimilar questions:\n"
                     "Q: Was Genghis Khan a ruler of Mongolia?\nSteps: What did Genghis Khan rule?")
    assert f.with_examples(query, []) == query


def test_the_neighbours_context_trains_and_decodes_with_similar_training_records(tiny_model_dir, tmp_path):
    out = tmp_path / "nb"
    done = subprocess.run([sys.executable, str(SCRIPT), "--context", "neighbours", "--k", "1", "--limit", "3",
                           "--max-new-tokens", "8", "--out", str(out), "--", "--model", str(tiny_model_dir),
                           "--max-steps", "1", "--eval-decode-max-new-tokens", "8"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    train, val = _rows(out / "data" / "train.jsonl"), _rows(out / "data" / "val.jsonl")
    assert all(r["question"].count("\nQ: ") == 1 and "\nSimilar questions:" in r["question"] for r in train + val)
    val_ids = {r["id"] for r in _rows(VAL)}
    assert not any(f"\nQ: {v['question']}\n" in r["question"] for r in train + val for v in _rows(VAL) if v["id"] in val_ids)
    assert [p["question"] for p in _rows(out / "predictions.jsonl")] == [r["question"] for r in _rows(VAL)[:3]]
    assert json.loads((out / "result.json").read_text())["context"] == "neighbours"
    assert "with 1 similar training records: SARI" in done.stdout
