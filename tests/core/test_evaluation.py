"""core/evaluation.py: matching, corpus scores, bootstrap, report files."""

from __future__ import annotations

import errno
import json
import os

import pytest

from qdtool.core.evaluation import evaluate, pair_up, paired_bootstrap, read_predictions, write_report
from qdtool.core.files import WriteError
from qdtool.errors import DataError, UsageError

REFS = [
    {"id": "a", "question": "Was Aristotle alive when the laptop was invented?",
     "sub_questions": ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"]},
    {"id": "b", "question": "Are amoebas safe from breast cancer?",
     "sub_questions": ["What tissue does breast cancer affect?", "Do amoebas have #1?"]},
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
    with pytest.raises(DataError, match="bad.jsonl:1: question: must be a string \\(got int\\)"):
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


ROW = {"id": "a", "question": "q?", "sub_questions": ["x?"]}


def _rows(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


# (file name, content, the problem lines the DataError lists)
BROKEN_PREDICTIONS = [
    ("empty.jsonl", b"", ["empty.jsonl: file is empty; expected JSON predictions"]),
    ("blank.json", b"  \n", ["blank.json: file is empty; expected JSON predictions"]),
    ("emptyarr.json", b"[]", ["emptyarr.json: the array has no predictions"]),
    ("intstep.jsonl", _rows(ROW, {**ROW, "id": "b", "sub_questions": ["x?", 3, None]}),
     ["intstep.jsonl:2: sub_questions: step 2 must be a string (got int)",
      "intstep.jsonl:2: sub_questions: step 3 must be a string (got null)"]),
    ("strsteps.jsonl", _rows({**ROW, "sub_questions": "x? y?"}),
     ["strsteps.jsonl:1: sub_questions: must be a list of strings, [] for no output (got str)"]),
    ("noq.json", json.dumps([ROW, {"id": "b"}]).encode(), ["noq.json[#1]: question: missing"]),
    ("list.jsonl", _rows([1]), ['list.jsonl:1: prediction must be a JSON object with "question" and "sub_questions" (got list)']),
    ("latin1.jsonl", _rows(ROW) + '{"question": "café?"}\n'.encode("latin-1"),
     ["latin1.jsonl:2: not valid UTF-8 (byte 0xe9 at column 18); save the file as UTF-8"]),
    ("dupid.jsonl", _rows(ROW, {**ROW, "question": "other?"}, {**ROW, "id": "c"}, {**ROW, "id": "c"}),
     ['dupid.jsonl:2: id: "a" repeats the id of dupid.jsonl:1; give each prediction its own id (or remove the repeat)',
      'dupid.jsonl:4: id: "c" repeats the id of dupid.jsonl:3; give each prediction its own id (or remove the repeat)']),
    ("deep.jsonl", _rows(b"[" * 3000 + b"]" * 3000),
     ["deep.jsonl:1: JSON nested too deeply (more than 100 levels of [ and {); flatten the record"]),
    ("bigint.jsonl", _rows(b'{"id": ' + b"1" * 4400 + b', "question": "q?"}'),
     ["bigint.jsonl:1:8: integer with 4,400 digits (the limit is 4,300); write it as a string"]),
    ("surrogate.jsonl", _rows(b'{"question": "q?", "sub_questions": ["\\udbff"]}'),
     ["surrogate.jsonl:1: sub_questions: the escape \\udbff is a lone UTF-16 surrogate, not a character; "
      "write the character itself, or both halves of its surrogate pair"]),
    ("utf16.jsonl", _rows(ROW).decode().encode("utf-16"),
     ["utf16.jsonl: file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8"]),
]


@pytest.mark.parametrize(("name", "content", "expected"), BROKEN_PREDICTIONS, ids=[c[0] for c in BROKEN_PREDICTIONS])
def test_broken_prediction_files_list_every_problem_with_its_place(tmp_path, monkeypatch, name, content, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as info:
        read_predictions(name)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{name} has {len(expected)} error(s):"
    assert [line.strip() for line in lines[1:-1]] == expected


def test_empty_steps_and_ids_of_any_type_are_fine(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(_rows({"id": 1, "question": "q?", "sub_questions": []}, {"id": [1, 2], "question": "q?"},
                           {"question": "r?", "parse_ok": False}))
    rows = read_predictions(path)
    assert [r["sub_questions"] for r in rows] == [[], [], []]


def test_a_fifo_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "p.jsonl")
    with pytest.raises(UsageError, match="is a named pipe"):
        read_predictions(tmp_path / "p.jsonl")


def test_a_failed_report_write_leaves_no_partial_file(tmp_path, monkeypatch):
    report = evaluate(REFS, [{"id": "a", "question": "q", "sub_questions": REFS[0]["sub_questions"]}], "x")
    out = tmp_path / "out"
    write_report(report, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("qdtool.core.files.os.fsync", full)
    with pytest.raises(WriteError, match=f"no space left on the device holding {out / 'report.json'}"):
        write_report(report, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old files whole, no temp file left


REFS3 = REFS + [{"id": "c", "question": "Is a tomato a fruit?", "sub_questions": ["What is a fruit?", "Is a tomato #1?"]}]


def test_a_limit_pairs_the_first_references_and_sets_the_rest_aside():
    preds = [{"id": r["id"], "question": r["question"], "sub_questions": r["sub_questions"]} for r in REFS3[1:]]  # no "a"
    preds.append({"id": "z", "question": "?", "sub_questions": []})
    pairs, missing, extra = pair_up(REFS3, preds, limit=2)
    # "a" (inside the limit) is missing, "c" (past it) is neither scored nor an unmatched prediction; "z" matches nothing.
    assert [r["id"] for r, _ in pairs] == ["b"] and missing == ["a"] and extra == ["z"]
    assert pair_up(REFS3, preds, limit=10) == pair_up(REFS3, preds)


def test_a_limit_by_question_text_gives_repeats_past_it_their_own_prediction():
    refs = [{"question": "Q?", "sub_questions": ["a?"]}, {"question": "Q?", "sub_questions": ["b?"]}]
    preds = [{"question": "Q?", "sub_questions": ["a?"]}, {"question": "Q?", "sub_questions": ["b?"]}]
    pairs, missing, extra = pair_up(refs, preds, limit=1)
    assert [(r["sub_questions"], p["sub_questions"]) for r, p in pairs] == [(["a?"], ["a?"])] and missing == [] and extra == []


def test_evaluate_with_a_limit_scores_the_first_n_and_says_so():
    preds = [{"id": "a", "question": "q", "sub_questions": REFS3[0]["sub_questions"]},
             {"id": "b", "question": "q", "sub_questions": []}, {"id": "c", "question": "q", "sub_questions": []}]
    report = evaluate(REFS3, preds, "x", limit=1)
    assert report.metrics["examples"] == 1 and report.metrics["sari"] == pytest.approx(1.0)
    assert report.unmatched_references == [] and report.unmatched_predictions == []
    assert report.to_dict()["limit"] == {"first": 1, "of": 3}
    assert evaluate(REFS3, preds, "x", limit=5).to_dict()["limit"] == {"first": 3, "of": 3}
    assert evaluate(REFS3, preds, "x").to_dict()["limit"] is None
    with pytest.raises(ValueError, match="at least 1"):
        evaluate(REFS3, preds, "x", limit=0)


def test_predict_with_a_limit_generates_only_the_first_questions(monkeypatch):
    from qdtool.core import generation

    class Decomposer:
        def __init__(self):
            from qdtool.core.prompts import PromptOptions

            self.prompt_options = PromptOptions()

    asked = []

    class Result:
        def __init__(self, row):
            self.row = row

        def to_dict(self):
            return {**self.row, "sub_questions": [self.row["question"]]}

    def fake_decompose(decomposer, rows, settings):
        asked.extend(rows)
        return [Result(r) for r in rows]

    seen_exclude = []
    monkeypatch.setattr(generation, "load_decomposer", lambda model, progress=None: Decomposer())
    monkeypatch.setattr(generation, "decompose", fake_decompose)

    def few_shot_examples(k, path, exclude, fields=None):
        seen_exclude.append(exclude)
        return []

    monkeypatch.setattr("qdtool.core.evaluation.few_shot_examples", few_shot_examples)
    from qdtool.core.evaluation import predict

    rows = predict(REFS3, "m", shots=2, limit=2)
    assert [r["id"] for r in asked] == ["a", "b"] and [r["id"] for r in rows] == ["a", "b"]
    # the demonstrations avoid every reference question, as in a full run, not only the two decomposed
    assert seen_exclude == [{r["question"] for r in REFS3}]


def test_demonstrations_from_a_file_with_other_column_names_are_those_of_the_same_records_under_the_default_names(tmp_path):
    import csv

    from qdtool.core.data import Fields
    from qdtool.core.evaluation import few_shot_examples
    from qdtool.resources import example_data_dir

    records = [json.loads(line) for line in (example_data_dir() / "strategyqa_train.jsonl").read_text().splitlines()[:40]]
    (tmp_path / "plain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with open(tmp_path / "mapped.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["q", "decomp"])
        writer.writerows([r["question"], "\n".join(r["sub_questions"])] for r in records)
    exclude = {records[0]["question"], records[1]["question"]}
    expected = few_shot_examples(3, tmp_path / "plain.jsonl", exclude)
    assert len(expected) == 3 and not {q for q, _ in expected} & exclude
    assert few_shot_examples(3, tmp_path / "mapped.csv", exclude, fields=Fields.of("q", "decomp")) == expected
    with pytest.raises(DataError, match="--question-field q"):  # the names must be given: the CSV has no "question"
        few_shot_examples(3, tmp_path / "mapped.csv", exclude)
