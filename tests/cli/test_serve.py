"""`qdtool serve` as users run it: a real server in a subprocess, the real `openai` client and plain HTTP (httpx).

One server (a tiny model, an API key from QDTOOL_API_KEY) serves most tests; the SIGTERM test starts
its own, with decoding slowed down so that a request is surely in flight when the signal comes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from qdtool.cli.app import app

from run_support import runner

KEY = "test-key"
ARISTOTLE = "Was Aristotle alive when the laptop was invented?"
LONG = "why " * 100  # 315 prompt tokens with the tiny tokenizer, over --max-input-tokens 200
# Decoding settings of the test server, and of the in-process decomposition its answers must equal.
MAX_NEW_TOKENS, MAX_INPUT_TOKENS = 12, 200

# `qdtool serve` whose every decoding batch first sleeps 3 s (run as `python -c SLOW_SERVE serve ...`).
SLOW_SERVE = """
import sys, time
from qdtool.core import generation
real = generation.decompose
def slow(*args, **kwargs):
    time.sleep(3)
    return real(*args, **kwargs)
generation.decompose = slow
from qdtool.cli.app import main
main()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(command: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """Start a server; return it and its URL once /health answers."""
    port = _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # seconds: imports take a few seconds alone, minutes on a loaded machine
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"no /health within 600 s:\n{log.read_text()}")


def _serve_command(model_dir: Path, *extra: str, python: list[str] | None = None) -> list[str]:
    # A long drain: on a loaded machine the request in flight may take more than the default 30 s.
    return [*(python or [sys.executable, "-m", "qdtool"]), "serve", str(model_dir), "--device", "cpu", "--model-name", "tiny",
            "--drain-seconds", "300", "--max-new-tokens", str(MAX_NEW_TOKENS), "--max-input-tokens", str(MAX_INPUT_TOKENS), *extra]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    command = _serve_command(tiny_model_dir, "--max-questions", "8", "--max-body-bytes", "8192", "--max-wait-ms", "300")
    proc, url = _start(command, {"QDTOOL_API_KEY": KEY}, log)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()  # every refusal below was an answer, never a crash


@pytest.fixture(scope="module")
def expected(tiny_model_dir):
    """What the library itself answers for a question, with the server's settings (the server must answer the same)."""
    from qdtool.core.generation import GenerationSettings, decompose, load_decomposer
    from qdtool.core.serving.chat import reply_text

    decomposer = load_decomposer(str(tiny_model_dir), device="cpu")
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, max_input_tokens=MAX_INPUT_TOKENS)
    return lambda question: reply_text(decompose(decomposer, [{"question": question}], settings)[0])


def _openai(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def _post(url: str, path: str, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}{path}", headers=headers, timeout=60, trust_env=False, **kwargs)


def test_the_openai_client_lists_the_model_and_gets_the_decomposition(server, expected):
    client = _openai(server)
    assert [m.id for m in client.models.list()] == ["tiny"] and client.models.retrieve("tiny").owned_by == "qdtool"
    reply = client.chat.completions.create(model="tiny", temperature=0, messages=[
        {"role": "system", "content": "You split questions."}, {"role": "user", "content": ARISTOTLE}])
    assert reply.choices[0].message.content == expected(ARISTOTLE) and reply.choices[0].finish_reason == "stop"
    assert reply.model == "tiny" and reply.usage.prompt_tokens > 0


def test_the_openai_client_streams_the_same_reply(server, expected):
    stream = _openai(server).chat.completions.create(model="tiny", stream=True, messages=[{"role": "user", "content": ARISTOTLE}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected(ARISTOTLE)
    assert chunks[-1].choices[0].finish_reason == "stop"
    with httpx.stream("POST", f"{server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, trust_env=False,
                      json={"messages": [{"role": "user", "content": ARISTOTLE}], "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_decompose_over_plain_http_one_question_or_many(server, expected):
    one = _post(server, "/v1/decompose", json={"question": ARISTOTLE})
    assert one.status_code == 200 and list(one.json()["results"][0]) == ["question", "sub_questions", "parse_ok"]
    questions = ["Is the sky blue?", ARISTOTLE, "세종대왕은 언제 태어났는가?"]
    many = _post(server, "/v1/decompose", json={"questions": questions}).json()["results"]
    assert [r["question"] for r in many] == questions
    assert all(isinstance(r["sub_questions"], list) and isinstance(r["parse_ok"], bool) for r in many)


def test_a_key_is_required_and_health_needs_none(server):
    assert _post(server, "/v1/decompose", key=None, json={"question": ARISTOTLE}).json()["error"]["code"] == "missing_api_key"
    wrong = _post(server, "/v1/decompose", key="nope", json={"question": ARISTOTLE})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        _openai(server, key="nope").chat.completions.create(model="tiny", messages=[{"role": "user", "content": ARISTOTLE}])
    assert httpx.get(f"{server}/health", trust_env=False).json()["status"] == "ok"


@pytest.mark.parametrize(("request_args", "status", "words"), [
    ({"content": "x" * 9000}, 413, "over 8,192 bytes"),
    ({"content": '{"questions": ["a?", '}, 400, "not valid JSON"),
    ({"json": {"questions": "a?"}}, 400, "valid array"),
    ({"json": {"question": "a?", "model": "tiny"}}, 400, "unknown field 'model'"),
    ({"json": {"questions": ["a?"] * 9}}, 400, "has 9 questions; send 1 to 8"),
    ({"json": {"questions": ["a?", LONG]}}, 400, "questions[1] is 315 prompt tokens. A prompt may take at most 200 tokens"),
])
def test_a_bad_request_gets_a_4xx_json_error_and_the_server_lives_on(server, request_args, status, words):
    response = _post(server, "/v1/decompose", **request_args)
    assert response.status_code == status and words in response.json()["error"]["message"], response.text
    assert _post(server, "/v1/decompose", json={"question": ARISTOTLE}).status_code == 200


def test_concurrent_requests_share_a_batch_and_an_oversize_one_fails_alone(server):
    bodies = [{"question": f"Is the sky blue, number {i}?"} for i in range(4)] + [{"questions": ["Is it?", LONG]}]
    responses: list[httpx.Response | None] = [None] * len(bodies)

    def send(i: int) -> None:
        responses[i] = _post(server, "/v1/decompose", json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [200] * 4 + [400]
    assert max(int(r.headers["X-Qdtool-Batch-Size"]) for r in responses[:4]) >= 2  # decoded together, not one by one
    assert httpx.get(f"{server}/health", trust_env=False).json()["largest_batch"] >= 2


@pytest.fixture(scope="module")
def slow_server(tiny_model_dir, tmp_path_factory):
    """A server without a key whose every batch takes 3 s more; the SIGTERM test stops it."""
    log = tmp_path_factory.mktemp("slow") / "server.log"
    proc, url = _start(_serve_command(tiny_model_dir, python=[sys.executable, "-c", SLOW_SERVE]), {"QDTOOL_API_KEY": ""}, log)
    yield proc, url, log
    if proc.poll() is None:
        proc.kill()


def _in_flight(url: str, question: str) -> tuple[threading.Thread, list[httpx.Response]]:
    """Send a question from a thread and return once its (3-s) batch is decoding."""
    answered: list[httpx.Response] = []
    request = threading.Thread(target=lambda: answered.append(_post(url, "/v1/decompose", key=None, json={"question": question})))
    request.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health", trust_env=False).json()["decoding"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return request, answered


def test_a_client_that_hangs_up_has_its_queued_questions_dropped(slow_server):
    proc, url, log = slow_server
    request, answered = _in_flight(url, ARISTOTLE)
    with pytest.raises(httpx.ReadTimeout):  # queued behind the batch decoding now; this client stops waiting
        httpx.post(f"{url}/v1/decompose", json={"questions": ["Is the sky blue?", "Who are you?"]}, timeout=0.5, trust_env=False)
    request.join(timeout=60)
    time.sleep(0.5)
    health = httpx.get(f"{url}/health", trust_env=False).json()
    assert answered[0].status_code == 200 and (health["questions"], health["batches"], health["queued"]) == (1, 1, 0), health


def test_sigterm_answers_the_request_in_flight_refuses_new_ones_and_exits_0(slow_server):
    proc, url, log = slow_server
    request, answered = _in_flight(url, ARISTOTLE)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):  # no longer listening, while the request above is still decoding
        httpx.get(f"{url}/health", trust_env=False)
    request.join(timeout=60)
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert answered and answered[0].status_code == 200, log.read_text()
    assert answered[0].json()["results"][0]["question"] == ARISTOTLE
    text = log.read_text()
    assert "Waiting for connections to close" in text and "Traceback" not in text and "never retrieved" not in text, text


def test_a_port_in_use_is_a_usage_error_before_the_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", str(tmp_path / "no-model-here"), "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output and "another --port" in result.output


def test_help_shows_examples_and_the_key_variable():
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "Examples:" in result.output and "QDTOOL_API_KEY" in result.output
    assert "curl -s localhost:8000/v1/decompose" in result.output


def test_consensus_reaches_the_servers_decoding_and_one_sample_is_refused(monkeypatch, tmp_path):
    from qdtool.core import generation, serving
    from qdtool.core.generation import GenerationSettings

    seen = []

    def create_app(decomposer, settings):
        seen.append(settings.generation)
        raise KeyboardInterrupt  # stop before uvicorn starts

    monkeypatch.setattr(generation, "load_decomposer", lambda *a, **k: object())
    monkeypatch.setattr(serving, "create_app", create_app)
    runner.invoke(app, ["serve", "embedded", "--port", "0", "--consensus", "3"])
    assert seen == [GenerationSettings(temperature=0.7, num_return_sequences=3, consensus=True)]
    result = runner.invoke(app, ["serve", str(tmp_path / "no-model-here"), "--port", "0", "--consensus", "1"])
    assert result.exit_code == 2 and "--consensus needs two or more samples" in result.output and len(seen) == 1
