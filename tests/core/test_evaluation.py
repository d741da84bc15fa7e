"""core/evaluation.py: matching, corpus scores, bootstrap, report files."""

from __future__ import annotations

import json

import pytest

from qdtool.core.evaluation import evaluate, paired_bootstrap, pair_up, read_predictions, write_report
from qdtool.errors import DataError

REFS = [
    {"id": "a", "question": "Was Aristotle alive when the laptop was invented?", "sub_questions": ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"]},
    {"id": "b", "question": "Are amoebas safe from breast cancer?", "sub_questions": ["What tissue does breast cancer affect?", "Do amoebas have #1?"]},
]


def test_pairing_by_id_then_by_question():
    preds = [{"id": "b", "question": "other text", "sub_questions": ["x?"]}, {"id": "z", "question": "?", "sub_questions": []}]
    pairs, missing, extra = pair_up(REFS, preds)
    assert [(r["id"], p["id"]) for r, p in pairs] == [("b", "b")] and missing == ["a"] and extra == ["z"]
    no_ids = [{"question": REFS[0]["question"], "sub_questions": ["x?"]}]
    pairs, missing, extra = pair_up(REFS, no_ids)
    assert len(pairs) == 1 and missing == [REFS[1]["question"]] and extra == []


def test_corpus_metrics_by_hand():
    preds = [
        {"id": "a", "question": REFS[0]["question"], "sub_questions": list(REFS[0]["sub_questions"])},  # perfect
        {"id": "b", "question": REFS[1]["question"], "sub_questions": [], "parse_ok": False},  # unparsed
    ]
    report = evaluate(REFS, preds, "test")
    metrics = report.metrics
    assert metrics["examples"] == 2
    assert metrics["exact_match"] == 0.5
    assert metrics["format_validity"] == 0.5
    assert metrics["step_count_accuracy"] == 0.5 and metrics["step_count_mae"] == 1.0
    assert metrics["step_match_precision"] == 1.0 and metrics["step_match_recall"] == pytest.approx(3 / 5)
    assert report.examples[0].sari == pytest.approx(1.0)
    assert metrics["sari"] == pytest.approx((1.0 + report.examples[1].sari) / 2)


def test_paired_bootstrap():
    a = [0.1 * (i % 5) for i in range(100)]
    mean, low, high = paired_bootstrap(a, [x + 0.2 for x in a])
    assert mean == pytest.approx(0.2) and low == pytest.approx(0.2) and high == pytest.approx(0.2)
    noisy = [x + (0.3 if i % 2 else -0.1) for i, x in enumerate(a)]
    mean, low, high = paired_bootstrap(a, noisy)
    assert mean == pytest.approx(0.1) and low < 0.1 < high and high - low < 0.2


def test_reports_and_prediction_files(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "q", "sub_questions": ["x"]}) + "\n")
    assert read_predictions(path)[0]["sub_questions"] == ["x"]
    (tmp_path / "bad.jsonl").write_text('{"question": 3}\n')
    with pytest.raises(DataError, match="row 1 needs"):
        read_predictions(tmp_path / "bad.jsonl")
    report = evaluate(REFS, [{"id": "a", "question": "q", "sub_questions": REFS[0]["sub_questions"]}], "x")
    files = write_report(report, tmp_path / "out")
    assert [f.name for f in files] == ["report.json", "per_example.jsonl", "metrics.png"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["metrics"]["sari"] == pytest.approx(1.0) and saved["unmatched_references"] == ["b"]
    assert (tmp_path / "out" / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_repeated_questions_and_null_ids_pair_in_order():
    refs = [{"question": "Q?", "sub_questions": ["a?"], "id": None}, {"question": "Q?", "sub_questions": ["b?"], "id": None}]
    preds = [{"question": "Q?", "sub_questions": ["a?"], "id": None}, {"question": "Q?", "sub_questions": ["b?"], "id": None},
             {"question": "Q?", "sub_questions": ["c?"]}]
    pairs, missing, extra = pair_up(refs, preds)
    assert [(r["sub_questions"], p["sub_questions"]) for r, p in pairs] == [(["a?"], ["a?"]), (["b?"], ["b?"])]
    assert missing == [] and extra == ["Q?"]
