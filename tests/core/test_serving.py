"""core/serving: the batcher (batches, token cap, failures alone, clients that leave) and the app in-process.

The app runs on a scripted model (answers by question, as generate() would) through Starlette's
TestClient; tests/cli/test_serve.py runs the real server in a subprocess with real clients.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from contextlib import contextmanager

import pytest
import torch
from fastapi.testclient import TestClient

from qdtool.core import generation
from qdtool.core.generation import Decomposer, GenerationSettings
from qdtool.core.prompts import encode_prompt
from qdtool.core.serving import BATCH_HEADER, ServeSettings, create_app, default_model_name
from qdtool.core.serving.batcher import Batcher, Overloaded, Stopped
from qdtool.core.serving.requests import ApiError
from qdtool.core.serving.service import _answers

ARISTOTLE = "Was Aristotle alive when the laptop was invented?"
STEPS = ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"]
ANSWERS = {"Aristotle": "\n".join(f"{i}. {s}" for i, s in enumerate(STEPS, 1)), "sky": "1. What colour is the sky?"}
LONG = "why " * 100  # 315 prompt tokens with the tiny tokenizer, over the 200 allowed here


class ScriptedModel(torch.nn.Module):
    """generate() that answers each prompt of a left-padded batch with its scripted text (num_return_sequences
    times); records the batch sizes in sequences."""

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.batches = tokenizer, []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, num_return_sequences=1, **kwargs):
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
        self.batches.append(input_ids.shape[0])
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompt = self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            answer = next((a for key, a in ANSWERS.items() if key in prompt), "I do not know.")
            rows.append(ids.tolist() + self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])


@pytest.fixture
def decomposer(tiny_tokenizer) -> Decomposer:
    tiny_tokenizer.padding_side = "left"
    return Decomposer(ScriptedModel(tiny_tokenizer), tiny_tokenizer)


@contextmanager
def serving(decomposer: Decomposer, run=None, generation=None, **options):
    generation = generation or GenerationSettings(max_new_tokens=64, max_input_tokens=200)
    settings = ServeSettings(model_name="tiny", generation=generation, **options)
    with TestClient(create_app(decomposer, settings, run=run)) as client:
        yield client


def test_decompose_answers_one_question_or_many_in_order(decomposer):
    with serving(decomposer) as client:
        one = client.post("/v1/decompose", json={"question": ARISTOTLE})
        many = client.post("/v1/decompose", json={"questions": ["Is the sky blue?", "Who are you?", ARISTOTLE]})
    assert one.status_code == 200 and one.json() == {"results": [{"question": ARISTOTLE, "sub_questions": STEPS, "parse_ok": True}]}
    results = many.json()["results"]
    assert [r["question"] for r in results] == ["Is the sky blue?", "Who are you?", ARISTOTLE]
    assert [r["parse_ok"] for r in results] == [True, False, True] and results[0]["sub_questions"] == ["What colour is the sky?"]
    assert many.headers[BATCH_HEADER] == "3" and decomposer.model.batches == [1, 3]


def test_chat_completion_replies_with_the_steps_of_the_last_user_message(decomposer, tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is the sky blue?"},
                {"role": "assistant", "content": "1. What colour is the sky?"},
                {"role": "user", "content": [{"type": "text", "text": ARISTOTLE}]}]
    with serving(decomposer) as client:  # OpenAI's optional fields are accepted and ignored, whatever they say
        reply = client.post("/v1/chat/completions", json={"model": "any", "messages": messages, "temperature": 0.7, "max_tokens": 5,
                                                          "top_p": 0.9, "stop": ["\n"], "user": "u1", "n": 1, "seed": 3}).json()
    assert reply["object"] == "chat.completion" and reply["model"] == "tiny" and reply["id"].startswith("chatcmpl-")
    assert reply["choices"] == [{"index": 0, "message": {"role": "assistant", "content": ANSWERS["Aristotle"]},
                                 "logprobs": None, "finish_reason": "stop"}]
    prompt = len(encode_prompt(tiny_tokenizer, ARISTOTLE))
    completion = len(tiny_tokenizer.encode(ANSWERS["Aristotle"], add_special_tokens=False))
    assert reply["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def test_a_streamed_chat_sends_the_reply_line_by_line_then_done(decomposer):
    body = {"messages": [{"role": "user", "content": ARISTOTLE}], "stream": True, "stream_options": {"include_usage": True}}
    with serving(decomposer) as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[-1] == {}
    assert [d["content"] for d in deltas[1:-1]] == [f"{i}. {s}\n" for i, s in enumerate(STEPS[:2], 1)] + [f"3. {STEPS[2]}"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


REFUSALS = [  # (method, path, request arguments, status, code, words in the message)
    ("POST", "/v1/decompose", {"content": '{"question": '}, 400, None, "not valid JSON"),
    ("POST", "/v1/decompose", {"content": b'{"question": "\xff"}'}, 400, None, "not valid JSON"),
    ("POST", "/v1/decompose", {"content": ""}, 400, None, "not valid JSON"),
    ("POST", "/v1/decompose", {"json": [ARISTOTLE]}, 400, None, "must be a JSON object (got an array)"),
    ("POST", "/v1/decompose", {"json": {"questions": ARISTOTLE}}, 400, None, "'questions': input should be a valid array (got a string)"),
    ("POST", "/v1/decompose", {"json": {"questions": [ARISTOTLE, 7]}}, 400, None, "'questions.1': input should be a valid string"),
    ("POST", "/v1/decompose", {"json": {"question": ARISTOTLE, "max_new_tokens": 9}}, 400, None, "unknown field 'max_new_tokens'"),
    ("POST", "/v1/decompose", {"json": {"question": "a?", "questions": ["b?"]}}, 400, None, 'either "question"'),
    ("POST", "/v1/decompose", {"json": {}}, 400, None, 'either "question"'),
    ("POST", "/v1/decompose", {"json": {"questions": []}}, 400, "no_questions", "send 1 to 3"),
    ("POST", "/v1/decompose", {"json": {"questions": ["a?"] * 4}}, 400, "too_many_questions", "has 4 questions; send 1 to 3"),
    ("POST", "/v1/decompose", {"json": {"question": "  "}}, 400, "invalid_question", "question is empty; nothing was decoded."),
    ("POST", "/v1/decompose", {"json": {"question": LONG}}, 400, "invalid_question", "question is 315 prompt tokens. A prompt may take"),
    ("POST", "/v1/decompose", {"json": {"question": "x" * 3000}}, 413, "body_too_large", "over 2,048 bytes"),
    ("POST", "/v1/decompose", {"content": iter([b"{" + b" " * 1500, b" " * 1500 + b"}"])}, 413, "body_too_large", "--max-body-bytes"),
    ("POST", "/v1/chat/completions", {"json": {"messages": []}}, 400, None, "'messages': list should have at least 1 item"),
    ("POST", "/v1/chat/completions", {"json": {"messages": [{"role": "system", "content": "hi"}]}}, 400, None, "no message with role"),
    ("POST", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "q?"}], "n": 2}}, 400, None, "n is 2"),
    ("POST", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "q?"}], "stream": "yes"}}, 400, None,
     "'stream': input should be a valid boolean"),
    ("POST", "/v1/chat/completions", {"json": {"messages": [{"role": "user"}]}}, 400, "invalid_question", "last user message is empty"),
    ("GET", "/v1/models/other", {}, 404, "model_not_found", "no model 'other' here; this server has 'tiny'"),
    ("GET", "/v1/nothing", {}, 404, "not_found", "GET /v1/nothing: Not Found"),
    ("GET", "/v1/decompose", {}, 405, "method_not_allowed", "Method Not Allowed"),
]


def test_every_refusal_is_a_4xx_openai_error_and_nothing_is_decoded(decomposer):
    with serving(decomposer, max_questions=3, max_body_bytes=2048) as client:
        for method, path, kwargs, status, code, words in REFUSALS:
            response = client.request(method, path, **kwargs)
            error = response.json()["error"]
            assert (response.status_code, error["code"]) == (status, code), (path, kwargs, error)
            assert words in error["message"] and error["type"] == "invalid_request_error", error
        assert client.get("/health").json()["status"] == "ok"
    assert decomposer.model.batches == []


def test_the_api_key_is_required_on_v1_and_compared_exactly(decomposer):
    body = {"question": ARISTOTLE}
    with serving(decomposer, api_key="s3cret") as client:
        answers = {name: client.post("/v1/decompose", json=body, headers=headers) for name, headers in {
            "none": {}, "basic": {"Authorization": "Basic s3cret"}, "wrong": {"Authorization": "Bearer s3cre"},
            "longer": {"Authorization": "Bearer s3cret2"}, "right": {"Authorization": "Bearer s3cret"}}.items()}
        models = client.get("/v1/models")
        health = client.get("/health")
    codes = {name: (r.status_code, r.status_code == 401 and r.json()["error"]["code"]) for name, r in answers.items()}
    assert codes == {"none": (401, "missing_api_key"), "basic": (401, "missing_api_key"), "wrong": (401, "invalid_api_key"),
                     "longer": (401, "invalid_api_key"), "right": (200, False)}
    assert answers["none"].headers["www-authenticate"] == "Bearer" and answers["none"].json()["error"]["type"] == "authentication_error"
    assert models.status_code == 401 and health.status_code == 200


def _concurrently(client: TestClient, bodies: list[dict]) -> list:
    responses = [None] * len(bodies)

    def send(i: int) -> None:
        responses[i] = client.post("/v1/decompose", json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def test_requests_that_arrive_together_share_one_batch(decomposer):
    with serving(decomposer, max_wait_ms=500) as client:
        responses = _concurrently(client, [{"question": f"Is the sky blue, number {i}?"} for i in range(4)])
        health = client.get("/health").json()
    assert [r.status_code for r in responses] == [200] * 4
    assert [r.headers[BATCH_HEADER] for r in responses] == ["4"] * 4 and decomposer.model.batches == [4]
    assert (health["batches"], health["questions"], health["largest_batch"]) == (1, 4, 4)


def test_with_consensus_a_batch_holds_max_batch_sequences_not_questions(decomposer):
    consensus = GenerationSettings(max_new_tokens=64, max_input_tokens=200, temperature=0.7, num_return_sequences=3, consensus=True)
    with serving(decomposer, generation=consensus, max_wait_ms=500, max_batch=6) as client:
        responses = _concurrently(client, [{"question": f"Is the sky blue, number {i}?"} for i in range(4)])
    assert [r.status_code for r in responses] == [200] * 4
    assert decomposer.model.batches == [6, 6]  # 2 questions x 3 samples, twice
    assert [r.headers[BATCH_HEADER] for r in responses] == ["2"] * 4
    assert responses[0].json()["results"][0]["sub_questions"] == ["What colour is the sky?"]


def test_a_question_over_the_limit_gets_its_own_400_and_its_batch_mates_are_answered(decomposer):
    with serving(decomposer, max_wait_ms=500) as client:
        responses = _concurrently(client, [{"question": ARISTOTLE}, {"questions": ["Is the sky blue?", LONG]}, {"question": "Is the sky?"}])
    assert [r.status_code for r in responses] == [200, 400, 200]
    assert responses[1].json()["error"]["message"].startswith("questions[1] is 315 prompt tokens")
    assert decomposer.model.batches == [2]  # the refused request's good question was not decoded either


def test_a_question_that_fails_decoding_fails_alone(decomposer):
    def run_failing(rows):  # as if generate() raised on this one question, in a batch or alone
        if any("boom" in row["question"] for row in rows):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return generation.decompose(decomposer, rows, GenerationSettings(max_new_tokens=64, batch_size=16))

    with serving(decomposer, run=run_failing, max_wait_ms=500) as client:
        responses = _concurrently(client, [{"question": ARISTOTLE}, {"question": "boom?"}, {"question": "Is the sky blue?"}])
        health = client.get("/health").json()
    assert [r.status_code for r in responses] == [200, 500, 200]
    assert responses[0].json()["results"][0]["sub_questions"] == STEPS
    assert responses[1].json()["error"] == {"message": "decoding failed: RuntimeError: CUDA error: device-side assert triggered",
                                            "type": "server_error", "param": None, "code": "decoding_failed"}
    assert sorted(decomposer.model.batches) == [1, 1] and (health["failed"], health["batches"]) == (1, 4)  # 1 batch, then 3 alone


def _batcher_run(rows_seen: list[list[str]], **options) -> Batcher:
    def run(rows):
        rows_seen.append([row["question"] for row in rows])
        return [row["question"].upper() for row in rows]

    return Batcher(run, **options)


@pytest.mark.parametrize(("tokens", "options", "batches"), [
    ([10] * 5, {"max_batch": 2}, [["q0", "q1"], ["q2", "q3"], ["q4"]]),
    ([100, 100, 300, 50], {"max_batch_tokens": 400}, [["q0", "q1"], ["q2"], ["q3"]]),  # 300 x 3 > 400; 300 alone is fine
    ([500], {"max_batch_tokens": 400}, [["q0"]]),  # a question alone always forms a batch
    ([10] * 5, {"max_batch": 8, "samples": 4}, [["q0", "q1"], ["q2", "q3"], ["q4"]]),  # --consensus 4: 4 sequences a question
    ([100, 100, 100], {"max_batch_tokens": 800, "samples": 4}, [["q0", "q1"], ["q2"]]),  # 100 x 3 questions x 4 > 800
    ([10] * 2, {"max_batch": 2, "samples": 5}, [["q0"], ["q1"]]),  # more samples than --max-batch: one question a batch
])
def test_batches_are_capped_by_sequences_and_padded_tokens(tokens, options, batches):
    async def scenario() -> list[str]:
        seen: list[list[str]] = []
        batcher = _batcher_run(seen, max_wait_s=0.05, **options)
        await batcher.start()
        futures = batcher.submit([{"question": f"q{i}"} for i in range(len(tokens))], tokens)
        outcomes = await asyncio.gather(*futures)
        await batcher.stop()
        assert seen == batches
        return [o.result for o in outcomes]

    assert asyncio.run(scenario()) == [f"Q{i}" for i in range(len(tokens))]


def test_a_question_whose_client_left_is_not_decoded_and_a_full_queue_refuses():
    async def scenario() -> None:
        seen: list[list[str]] = []
        batcher = _batcher_run(seen, max_wait_s=0.05, max_queue=3)
        await batcher.start()
        left, stays = batcher.submit([{"question": "left"}, {"question": "stays"}], [5, 5])
        with pytest.raises(Overloaded, match="2 questions are waiting"):
            batcher.submit([{"question": "a"}, {"question": "b"}], [5, 5])  # all or none
        left.cancel()
        assert (await stays).result == "STAYS" and seen == [["stays"]]
        await batcher.stop()
        with pytest.raises(Stopped):
            batcher.submit([{"question": "late"}], [5])

    asyncio.run(scenario())


def test_a_client_that_disconnects_is_answered_499_and_its_questions_are_dropped():
    class Gone:
        async def receive(self) -> dict:
            return {"type": "http.disconnect"}

    async def scenario() -> list:
        loop, complaints = asyncio.get_running_loop(), []
        loop.set_exception_handler(lambda loop, context: complaints.append(context["message"]))
        futures = [loop.create_future(), loop.create_future()]
        with pytest.raises(ApiError) as refused:
            await _answers(Gone(), futures)
        assert refused.value.status == 499 and all(f.cancelled() for f in futures)
        del refused  # its traceback holds the gather
        await asyncio.sleep(0.01)
        gc.collect()  # an outcome nobody read is reported when its future is collected
        return complaints

    assert asyncio.run(scenario()) == []


def test_the_default_model_name_is_the_directory_a_model_lives_in(tmp_path):
    (tmp_path / "my-run" / "merged").mkdir(parents=True)
    assert default_model_name(str(tmp_path / "my-run" / "merged")) == "my-run/merged"
    assert default_model_name(str(tmp_path / "my-run")) == "my-run"
    assert default_model_name("embedded") == "embedded" and default_model_name("org/model") == "org/model"
