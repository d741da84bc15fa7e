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


def test_decoding_guards_decodes_each_candidate_and_compares_it_with_no_guards(tiny_model_dir, tmp_path):
    from qdtool.core.evaluation import evaluate, read_predictions

    data, out = REPO / "examples" / "data" / "strategyqa_val.jsonl", tmp_path / "guards"
    stdout = _run("decoding_guards.py", "--model", str(tiny_model_dir), "--data", str(data), "--limit", "3", "--max-new-tokens", "8",
                  "--out", str(out))
    rows = _lines(out / "summary.jsonl")
    names = [r["candidate"] for r in rows]
    assert names[:3] == ["none", "none+ngram3", "none+ngram4"] and len(names) == 15 and names[-1] == "cap+repeat+penalty1.2"
    by_name = {r["candidate"]: r for r in rows}
    assert (by_name["none"]["step_cap"], by_name["none"]["stop_at_repeat"]) == (0, False)
    assert (by_name["cap+repeat"]["step_cap"], by_name["cap+repeat"]["stop_at_repeat"]) == (8, True)  # no record: the default cap
    assert by_name["cap+ngram4"]["no_repeat_ngram_size"] == 4 and by_name["none+penalty1.2"]["repetition_penalty"] == 1.2
    assert by_name["none"]["sari_vs_none"] == 0.0 and by_name["none"]["sari_vs_none_ci95"] == [0.0, 0.0]
    references = [json.loads(line) for line in data.read_text().splitlines()]
    for row in rows:  # each file scores again as the summary says, on the same 3 questions
        report = evaluate(references, read_predictions(out / "predictions" / f"{row['candidate']}.jsonl"), row["candidate"], 3)
        assert report.metrics["examples"] == row["examples"] == 3 and abs(report.metrics["sari"] - row["sari"]) < 1e-12
        assert row["seconds"] > 0
    assert "| cap+repeat |" in (out / "table.md").read_text() and "SARI − none (95% CI)" in stdout
    assert f"--limit 3 --compare {out}/predictions/none.jsonl {out}/predictions/cap+repeat.jsonl" in stdout


def test_synth_consensus_scores_each_arm_on_the_same_questions(tiny_model_dir, tmp_path):
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps({"question": f"Is city {n} larger than town {n}?",
                                        "sub_questions": [f"How large is city {n}?", f"How large is town {n}?", "Is #1 larger than #2?"]})
                            + "\n" for n in range(3)), encoding="utf-8")
    out = tmp_path / "consensus"
    stdout = _run("synth_consensus.py", "--teacher", str(tiny_model_dir), "--data", str(data), "--samples", "2", "--out", str(out))
    rows = _lines(out / "summary.jsonl")
    assert [(r["arm"], r["samples"], r["temperature"]) for r in rows] == [("greedy", 1, 0.0), ("one sample", 1, 0.7),
                                                                          ("consensus of 2", 2, 0.7)]
    assert all(r["questions"] == 3 and 0 <= r["kept"] <= 3 and 0 <= r["sari"] <= 1 for r in rows)
    assert rows[0]["sari_vs_greedy"] is None and all(r["sari_vs_greedy"] is not None for r in rows[1:])
    # every arm is scored on all three questions: a dropped one is an empty prediction, not a missing one
    for name in ("greedy", "one_sample", "consensus_of_2"):
        assert len((out / f"{name}.predictions.jsonl").read_text().splitlines()) == 3
    assert "| consensus of 2 | 2 | 0.7 |" in stdout
