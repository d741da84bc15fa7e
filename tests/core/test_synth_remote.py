"""core/synth against a real HTTP teacher: a scripted OpenAI-compatible server in a subprocess on 127.0.0.1
(synth_fake_teacher.py) that answers 500s, 429s with Retry-After, hangs past the timeout, malformed text and refusals."""

from __future__ import annotations

import json
import socket

import pytest
import synth_fake_teacher as fake

from qdtool.core.prompts import HANGUL, INSTRUCTIONS
from qdtool.core.synth import SynthSettings, TeacherError, dropped_path, synth

SKY, WHALE, LAPTOP = "Is the sky blue at noon?", "Is a whale bigger than a shark?", "Was Aristotle alive when the laptop was invented?"
OWL, PARIS, KOREAN = "Do owls sleep during the day?", "Is Paris in France?", "한강은 낙동강보다 긴가?"
MIXED, DOWN, REFUSED = "Is gold heavier than silver?", "Is the moon made of cheese?", "Is this question far too long?"
STEPS = {
    SKY: ["What colour is the sky at noon?", "Is #1 blue?"],
    WHALE: ["How big is a whale?", "How big is a shark?", "Is #1 bigger than #2?"],
    LAPTOP: ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"],
    KOREAN: ["한강의 길이는 몇 km인가?", "낙동강의 길이는 몇 km인가?", "#1이 #2보다 큰가?"],
}


def _numbered(steps: list[str]) -> str:
    return "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))


SCRIPT = {
    SKY: [{"status": 500}, {"texts": [_numbered(STEPS[SKY])]}],
    WHALE: [{"status": 429, "retry_after": 1}, {"texts": [_numbered(STEPS[WHALE])]}],
    LAPTOP: [{"hang": 4}, {"texts": [_numbered(STEPS[LAPTOP])]}],
    KOREAN: [{"texts": [_numbered(STEPS[KOREAN])]}],
    OWL: [{"texts": ["I cannot help with that.", "Owls are nocturnal birds."]}],  # no numbered steps at all
    PARIS: [{"texts": ["1. Is Paris in France?\n2. Is #1 true?", "1. What is #2?\n2. Where is Paris?"]}],  # every rule broken
    MIXED: [{"texts": ["1. How heavy is gold?\n2. How heavy is silver?\n3. Is #1 more than #2?", "Gold is heavier."]}],
    DOWN: [{"status": 500}],  # always
    REFUSED: [{"status": 400, "message": "the prompt is too long for this model"}],
}
EXAMPLES = [
    {"question": "Is Everest higher than K2?", "sub_questions": ["How high is Everest?", "How high is K2?", "Is #1 higher than #2?"]},
    {"question": "Is a cat faster than a dog?", "sub_questions": ["How fast is a cat?", "How fast is a dog?", "Is #1 more than #2?"]},
    {"question": "서울은 부산보다 큰가?", "sub_questions": ["서울의 면적은?", "부산의 면적은?", "#1이 #2보다 큰가?"]},
    {"question": "백두산은 한라산보다 높은가?", "sub_questions": ["백두산의 높이는?", "한라산의 높이는?", "#1이 #2보다 큰가?"]},
]
KEY = "sk-test-9f8e7d"


@pytest.fixture
def teacher(tmp_path):
    proc, url, log = fake.start(tmp_path, SCRIPT, "--key", KEY)
    yield url, log
    proc.kill()
    proc.wait()


def _settings(url: str, **changes) -> SynthSettings:
    return SynthSettings(**{"teacher": url, "api_key": KEY, "shots": 2, "samples": 2, "temperature": 0.7, "workers": 3,
                            "timeout": 1.0, "retries": 2, "backoff_s": 0.05, **changes})


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_retries_malformed_and_refused_answers_and_the_final_files(teacher, tmp_path):
    url, log = teacher
    out = tmp_path / "synth.jsonl"
    questions = [{"question": q, "id": i} for i, q in enumerate(SCRIPT)]
    report = synth(questions, out, _settings(url), examples=EXAMPLES)

    kept = {r["question"]: r for r in _rows(out)}
    assert {q: r["sub_questions"] for q, r in kept.items()} == STEPS
    assert kept[SKY]["id"] == 0 and kept[SKY]["synth"] == {
        "teacher": url, "teacher_model": "fake-teacher", "prompt_hash": kept[SKY]["synth"]["prompt_hash"], "shots": 2,
        "temperature": 0.7, "samples": 2, "valid": 2, "agreement": 1.0}
    assert kept[SKY]["synth"]["prompt_hash"] == kept[WHALE]["synth"]["prompt_hash"] != kept[KOREAN]["synth"]["prompt_hash"]
    dropped = {r["question"]: r for r in _rows(dropped_path(out))}
    assert {q: r["reason"] for q, r in dropped.items()} == {
        OWL: "no_valid_candidate", PARIS: "no_valid_candidate", MIXED: "single_valid", REFUSED: "teacher_refused"}
    paris = [c["problems"] for c in dropped[PARIS]["synth"]["candidates"]]
    assert paris == [["step 1 is identical to the question"],
                     ["step 1 refers to #2, but the first step has no earlier answer to refer to"]]
    assert "too long for this model" in dropped[REFUSED]["detail"]
    assert (report.kept, report.dropped, report.failed, report.asked) == (4, 4, 1, 9)  # DOWN: failed, written nowhere
    assert report.failures == [f"question {list(SCRIPT).index(DOWN) + 1}: HTTP 500, 3 attempt(s)"]

    sent = fake.requests(log)
    per_question = {q: [r for r in sent if r["question"] == q] for q in SCRIPT}
    assert {q: len(r) for q, r in per_question.items()} == {SKY: 2, WHALE: 2, LAPTOP: 2, KOREAN: 1, OWL: 1, PARIS: 1, MIXED: 1,
                                                            DOWN: 3, REFUSED: 1}
    assert (report.requests, report.retries) == (14, 5)
    whale = per_question[WHALE]
    assert whale[1]["t"] - whale[0]["t"] >= 1.0  # Retry-After: 1 was honoured (the backoff alone is 0.05 s)
    laptop = per_question[LAPTOP]
    assert 1.0 <= laptop[1]["t"] - laptop[0]["t"] < 3.5  # the hung request was given up after --timeout 1
    assert all(r["keyed"] and r["model"] == "fake-teacher" and r["n"] == 2 for r in sent)
    assert KEY not in out.read_text() + dropped_path(out).read_text()


def test_a_korean_question_is_asked_with_the_korean_instruction_and_demonstrations(teacher, tmp_path):
    url, log = teacher
    synth([{"question": KOREAN}, {"question": SKY}], tmp_path / "s.jsonl", _settings(url), examples=EXAMPLES)
    sent = {r["question"]: r["messages"] for r in fake.requests(log)}
    korean = sent[KOREAN]
    assert korean[0] == {"role": "system", "content": INSTRUCTIONS["ko"]}
    assert sorted(m["content"] for m in korean[1:-1:2]) == sorted([EXAMPLES[2]["question"], EXAMPLES[3]["question"]])
    assert len(korean) == 6 and all(HANGUL.search(m["content"]) for m in korean)
    assert korean[2]["content"].startswith("1. ") and korean[-1] == {"role": "user", "content": KOREAN}
    english = sent[SKY]
    assert english[0]["content"] == INSTRUCTIONS["en"] and not any(HANGUL.search(m["content"]) for m in english)


def test_a_rerun_asks_only_the_failed_question_and_retry_dropped_asks_the_dropped(teacher, tmp_path):
    url, log = teacher
    out = tmp_path / "synth.jsonl"
    questions = [{"question": q} for q in (SKY, OWL, DOWN)]
    synth(questions, out, _settings(url), examples=EXAMPLES)
    before, kept = len(fake.requests(log)), out.read_text(encoding="utf-8")
    report = synth(questions, out, _settings(url), examples=EXAMPLES)
    assert (report.already_done, report.asked, report.failed) == (2, 1, 1)
    assert {r["question"] for r in fake.requests(log)[before:]} == {DOWN} and out.read_text(encoding="utf-8") == kept
    again = synth(questions, out, _settings(url, retry_dropped=True), examples=EXAMPLES)
    assert (again.retried_dropped, again.asked, again.dropped) == (1, 2, 1)
    assert [r["question"] for r in _rows(dropped_path(out))] == [OWL]  # asked again and dropped again: once in the file


def test_a_server_without_n_gets_one_request_per_sample(tmp_path):
    proc, url, log = fake.start(tmp_path, {"*": [{"texts": [_numbered(STEPS[SKY])]}]}, "--no-n")
    try:
        report = synth([{"question": SKY}, {"question": WHALE}], tmp_path / "s.jsonl", _settings(url, api_key=None, samples=3, workers=1),
                       examples=EXAMPLES)
    finally:
        proc.kill()
    sent = fake.requests(log)
    assert [(r["question"], r["n"]) for r in sent] == [(SKY, 3)] + [(SKY, 1)] * 3 + [(WHALE, 1)] * 3  # n learnt once
    assert report.kept == 2 and report.requests == 7


def test_a_seed_gives_each_request_its_own_seed_the_same_on_a_rerun(tmp_path):
    proc, url, log = fake.start(tmp_path, {"*": [{"texts": [_numbered(STEPS[SKY])]}]}, "--no-n")
    try:
        for name, seed, workers in (("a", 7, 1), ("b", 7, 3), ("c", None, 1)):
            synth([{"question": SKY}, {"question": WHALE}], tmp_path / f"{name}.jsonl",
                  _settings(url, api_key=None, samples=3, workers=workers, seed=seed), examples=EXAMPLES)
    finally:
        proc.kill()
    sent = [r for r in fake.requests(log) if r["n"] == 1]  # each run tries n=3 first; then one request per sample
    assert len(sent) == 3 * 6
    first, second, unseeded = sent[:6], sent[6:12], sent[12:]
    seeds = {(r["question"], r["seed"]) for r in first}
    assert len(seeds) == 6 and all(isinstance(s, int) and 0 <= s < 2**31 for _, s in seeds)  # one per question and sample
    assert {(r["question"], r["seed"]) for r in second} == seeds  # 3 workers, another order: the same seeds
    assert all(r["seed"] is None for r in unseeded)
    assert [json.loads(line)["synth"]["seed"] for line in (tmp_path / "a.jsonl").read_text().splitlines()] == [7, 7]
    assert all("seed" not in json.loads(line)["synth"] for line in (tmp_path / "c.jsonl").read_text().splitlines())


def test_a_wrong_key_and_an_unreachable_teacher_stop_before_any_question(teacher, tmp_path):
    url, log = teacher
    with pytest.raises(TeacherError, match=r"refused the request \(HTTP 401\): check the API key \(--api-key-env NAME"):
        synth([{"question": SKY}], tmp_path / "s.jsonl", _settings(url, api_key="wrong"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TeacherError, match=rf"cannot reach the teacher at http://127.0.0.1:{port}/v1 .*check the URL"):
        synth([{"question": SKY}], tmp_path / "s.jsonl", _settings(f"http://127.0.0.1:{port}/v1"))
    assert not (tmp_path / "s.jsonl").exists() and fake.requests(log) == []


def test_a_refused_setting_stops_the_run_instead_of_dropping_every_question(tmp_path):
    script = {"*": [{"status": 400, "param": "temperature", "message": "temperature must be 1 for this model"}]}
    proc, url, log = fake.start(tmp_path, script)
    out = tmp_path / "s.jsonl"
    try:
        with pytest.raises(TeacherError, match=r"refused temperature \(HTTP 400: temperature must be 1 .*\); change --temperature"):
            synth([{"question": SKY}, {"question": WHALE}], out, _settings(url, api_key=None, workers=1))
    finally:
        proc.kill()
    assert not out.exists() and not dropped_path(out).exists()  # nothing recorded as dropped: a fixed command asks them all


def test_the_model_name_comes_from_the_server_or_must_be_given(teacher, tmp_path):
    url, log = teacher
    report = synth([{"question": SKY}], tmp_path / "s.jsonl", _settings(url), examples=EXAMPLES)
    assert report.teacher_model == "fake-teacher"  # the only model in GET /models
    no_v1 = url.removesuffix("/v1") + "/nothing-here"
    with pytest.raises(TeacherError, match=r"pass --teacher-model NAME: .*/nothing-here/models lists no models \(HTTP 404; is --teacher"):
        synth([{"question": WHALE}], tmp_path / "t.jsonl", _settings(no_v1))
