"""`qdtool synth` as users run it: help, clear errors, --dry-run, a kill -9 and the same command again,
and `qdtool serve embedded` as a real teacher on loopback."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qdtool.cli.app import app
from qdtool.core.prompts import parse_sub_questions

from run_support import runner

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("synth_fake_teacher", REPO / "tests" / "core" / "synth_fake_teacher.py")
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)

QUESTIONS = [f"Is number {i} bigger than number {i + 1}?" for i in range(12)]
ANSWER = "1. How big is the first number?\n2. How big is the second number?\n3. Is #1 bigger than #2?"


def _write_questions(tmp_path: Path, questions: list[str] = QUESTIONS) -> Path:
    path = tmp_path / "questions.txt"
    path.write_text("".join(q + "\n" for q in questions), encoding="utf-8")
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_help_shows_examples():
    result = runner.invoke(app, ["synth", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "Examples:" in result.output
    assert "qdtool synth examples/questions.txt --teacher embedded --samples 2 --limit 3 --out runs/synth.jsonl" in result.output
    assert "--api-key-env OPENAI_API_KEY" in result.output and "FILE.dropped.jsonl" in result.output


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--samples", "0"], 2, "--samples must be at least 1 (got 0)"),
    (["--samples", "3", "--temperature", "0"], 2, "--samples 3 needs sampling"),
    (["--min-agreement", "0.5", "--samples", "1"], 2, "--min-agreement needs --samples 2 or more"),
    (["--api-key-env", "QDTOOL_TEST_NO_SUCH_KEY"], 2, "the environment variable QDTOOL_TEST_NO_SUCH_KEY is not set"),
])
def test_bad_options_are_refused_before_anything_is_read(tmp_path, args, code, words):
    result = runner.invoke(app, ["synth", str(tmp_path / "missing.txt"), "--teacher", "http://127.0.0.1:1/v1",
                                 "--out", str(tmp_path / "s.jsonl"), *args], env={"COLUMNS": "300"})
    assert result.exit_code == code and words in result.output, result.output


def test_an_empty_questions_file_and_out_equal_to_the_input_are_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    result = runner.invoke(app, ["synth", str(empty), "--teacher", "embedded", "--out", str(tmp_path / "s.jsonl")], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "empty.txt: file is empty; expected JSON questions" in result.output
    questions = _write_questions(tmp_path)
    result = runner.invoke(app, ["synth", str(questions), "--teacher", "embedded", "--out", str(questions)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "is the questions file itself" in result.output


def test_an_unreachable_teacher_says_the_url_and_what_to_check(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = runner.invoke(app, ["synth", str(_write_questions(tmp_path)), "--teacher", f"http://127.0.0.1:{port}/v1",
                                 "--out", str(tmp_path / "s.jsonl")], env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    assert f"cannot reach the teacher at http://127.0.0.1:{port}/v1" in result.output
    assert "check the URL" in result.output and "that the server is running" in result.output


def test_dry_run_prints_the_counts_and_sends_nothing(tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text(json.dumps({"question": QUESTIONS[0], "sub_questions": ["a?", "b?"]}) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["synth", str(_write_questions(tmp_path)), "--teacher", "http://127.0.0.1:1/v1", "--out", str(out),
                                 "--samples", "4", "--max-new-tokens", "50", "--dry-run"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "dry run: nothing sent; 12 question(s), 1 already in" in result.output and "11 to ask" in result.output
    assert "requests: 11 with n=4 (44 if the server does not support n)" in result.output
    assert "at most 2,200 (--max-new-tokens 50)" in result.output  # 11 x 4 x 50


def test_question_field_is_passed_only_when_given(tmp_path, monkeypatch):
    from qdtool.core import generation

    seen = []

    def fake_read(path, text=None, **kwargs):
        seen.append(kwargs)
        return [{"question": "Is it?"}]

    monkeypatch.setattr(generation, "read_questions", fake_read)
    base = ["synth", "q.csv", "--teacher", "http://127.0.0.1:1/v1", "--out", str(tmp_path / "s.jsonl"), "--dry-run"]
    assert runner.invoke(app, base).exit_code == 0
    assert runner.invoke(app, [*base, "--question-field", "prompt"]).exit_code == 0
    assert seen == [{}, {"question_field": "prompt"}]


def _synth_command(questions: Path, out: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "qdtool", "synth", str(questions), "--teacher", url, "--out", str(out), "--samples", "2",
            "--shots", "1", "--workers", "2", "--retries", "1", "--timeout", "30"]


def test_kill_9_mid_run_then_the_same_command_finishes_every_question_exactly_once(tmp_path):
    proc, url, log = fake.start(tmp_path, {"*": [{"texts": [ANSWER]}]}, "--delay", "0.4")
    try:
        questions, out = _write_questions(tmp_path), tmp_path / "synth.jsonl"
        command = _synth_command(questions, out, url)
        first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while len(_lines(out)) < 3:
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        before = {r["question"] for r in _lines(out)}
        assert 3 <= len(before) < len(QUESTIONS)  # stopped mid-run
        with out.open("a", encoding="utf-8") as f:  # what a kill in the middle of a write leaves
            f.write('{"question": "' + QUESTIONS[-1] + '", "sub_questions": ["How big')
        asked_before = len(fake.requests(log))

        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"repaired {out}" in second.stderr and f"skipped {len(before)} question(s)" in second.stderr
        records = _lines(out)  # every line parses: the torn one is gone
        assert sorted(r["question"] for r in records) == sorted(QUESTIONS)  # each exactly once
        assert all(r["sub_questions"] == parse_sub_questions(ANSWER).sub_questions for r in records)
        assert not before & {r["question"] for r in fake.requests(log)[asked_before:]}  # finished ones were not asked again
        assert out.read_bytes().endswith(b"\n")
    finally:
        proc.kill()


def test_a_full_run_reports_kept_dropped_and_provenance(tmp_path):
    script = {"*": [{"texts": [ANSWER]}], QUESTIONS[1]: [{"texts": ["no list", "still no list"]}]}
    proc, url, log = fake.start(tmp_path, script, "--key", "k-123")
    try:
        out = tmp_path / "s.jsonl"
        result = runner.invoke(app, ["synth", str(_write_questions(tmp_path, QUESTIONS[:3])), "--teacher", url, "--out", str(out),
                                     "--api-key-env", "QDTOOL_TEST_KEY", "--samples", "2"],
                               env={"COLUMNS": "300", "QDTOOL_TEST_KEY": "k-123"})
    finally:
        proc.kill()
    assert result.exit_code == 0, result.output
    assert "asked 3 question(s): kept 2 in" in result.output and "dropped 1 (1 no_valid_candidate)" in result.output
    assert "synth: 3/3 questions, kept 2, dropped 1, failed 0" in result.output  # the progress line off a terminal
    assert "k-123" not in result.output
    records = _lines(out)
    assert [r["synth"]["teacher_model"] for r in records] == ["fake-teacher"] * 2 and records[0]["synth"]["teacher"] == url
    again = runner.invoke(app, ["synth", str(tmp_path / "questions.txt"), "--teacher", url, "--out", str(out)])
    assert again.exit_code == 0 and "skipped 3 question(s)" in again.output and "nothing to do" in again.output
    checked = runner.invoke(app, ["validate-data", str(out), "--strict"], env={"COLUMNS": "300"})  # extra fields are fine for training
    assert checked.exit_code == 0, checked.output  # --strict: not even a warning


def test_ctrl_c_exits_at_once_without_waiting_for_the_requests_in_flight(tmp_path):
    proc, url, log = fake.start(tmp_path, {"*": [{"texts": [ANSWER]}]}, "--delay", "30")
    try:
        command = _synth_command(_write_questions(tmp_path), tmp_path / "s.jsonl", url)
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while len(fake.requests(log)) < 2:  # both workers are waiting for their (30-s) replies
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        began = time.monotonic()
        assert run.wait(timeout=20) == 130
        assert time.monotonic() - began < 10  # not the 30 s the requests in flight would take
        assert "interrupted; the records finished so far are in" in run.stdout.read()
    finally:
        proc.kill()


@pytest.mark.embedded
def test_qdtool_serve_embedded_as_the_teacher(use_embedded_cache, tmp_path):
    """`qdtool serve embedded` on loopback is an OpenAI-compatible teacher: it takes n=1 only, and answers greedily."""
    from qdtool.core.serving import default_model_name

    questions = _write_questions(tmp_path, ["Was Aristotle alive when the laptop was invented?", "Is the Amazon longer than the Nile?",
                                            "서울에서 부산까지 KTX로 가는 것이 비행기보다 빠른가?"])
    port = fake_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        server = subprocess.Popen([sys.executable, "-m", "qdtool", "serve", "embedded", "--device", "cpu", "--port", str(port),
                                   "--max-new-tokens", "48"], stdout=sink, stderr=subprocess.STDOUT,
                                  env={**os.environ, "QDTOOL_API_KEY": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(server, url, log)
        out = tmp_path / "synth.jsonl"
        result = runner.invoke(app, ["synth", str(questions), "--teacher", f"{url}/v1", "--out", str(out), "--samples", "2",
                                     "--shots", "2", "--max-new-tokens", "48", "--timeout", "300"], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        greedy = httpx.post(f"{url}/v1/decompose", json={"questions": questions.read_text(encoding="utf-8").splitlines()},
                            timeout=300, trust_env=False).json()["results"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    kept = {r["question"]: r for r in _lines(out)}
    dropped = {r["question"]: r for r in _lines(tmp_path / "synth.dropped.jsonl")}
    assert sorted([*kept, *dropped]) == sorted(r["question"] for r in greedy)  # every question once, in one file or the other
    for answer in greedy:
        if answer["question"] in kept:  # the server ignores the demonstrations and sampling: both samples are its greedy answer
            record = kept[answer["question"]]
            assert record["sub_questions"] == answer["sub_questions"]
            assert record["synth"]["agreement"] == 1.0 and record["synth"]["valid"] == 2
            assert record["synth"]["teacher_model"] == default_model_name("embedded")
        else:
            assert dropped[answer["question"]]["reason"] == "no_valid_candidate"


def fake_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 600  # the first use converts the embedded GGUF (about a minute)
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    raise AssertionError(f"no /health within 600 s:\n{log.read_text()}")
