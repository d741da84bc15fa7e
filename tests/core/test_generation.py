"""core/generation.py: batching keeps order and fields; good and bad outputs are both handled."""

from __future__ import annotations

import json

import pytest
import torch

from qdtool.core.generation import Decomposer, GenerationSettings, decompose, read_questions
from qdtool.errors import DataError, UsageError


class ScriptedModel(torch.nn.Module):
    """Answers each prompt with a scripted text, like generate() would (left-padded batch in, ids out)."""

    def __init__(self, tokenizer, answers: dict[str, str]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.answers = tokenizer, answers
        self.batches: list[int] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, num_return_sequences, eos_token_id, pad_token_id, **kwargs):
        self.batches.append(input_ids.shape[0])
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            answer = next(a for q, a in self.answers.items() if q in prompt)
            out = self.tokenizer(answer, add_special_tokens=False)["input_ids"][:max_new_tokens] + [self.tokenizer.eos_token_id]
            rows.append(ids.tolist() + out)
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])


ANSWERS = {
    "Aristotle": "1. When did Aristotle die?\n2. When was the laptop invented?\n3. Is #2 before #1?",
    "llama": "I do not know what you mean.",
    "세종": "1. 세종대왕은 몇 년에 태어났는가?\n2. 조선은 몇 년에 건국되었는가?\n3. #1에서 #2를 뺀 값은 100보다 큰가?",
}


def test_batched_decomposition_keeps_order_fields_and_flags_bad_output(tiny_tokenizer):
    tiny_tokenizer.padding_side = "left"
    model = ScriptedModel(tiny_tokenizer, ANSWERS)
    rows = [
        {"id": "a", "question": "Could a llama birth twice during the War in Vietnam?"},
        {"id": "b", "question": "Was Aristotle alive when the laptop was invented?", "source": "sqa"},
        {"id": "c", "question": "세종대왕이 태어났을 때 조선은 건국된 지 100년이 넘었는가?"},
    ]
    seen = []
    results = decompose(Decomposer(model, tiny_tokenizer), rows, GenerationSettings(batch_size=2, max_new_tokens=200),
                        progress=lambda done, total: seen.append((done, total)))
    assert [r.extra["id"] for r in results] == ["a", "b", "c"]
    assert results[1].sub_questions == ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"]
    assert results[1].parse_ok and results[1].extra["source"] == "sqa"
    assert results[2].sub_questions[2] == "#1에서 #2를 뺀 값은 100보다 큰가?"
    assert not results[0].parse_ok and results[0].sub_questions == [] and results[0].raw == "I do not know what you mean."
    assert model.batches == [2, 1] and seen == [(2, 3), (3, 3)]
    row = results[0].to_dict()
    assert row == {"id": "a", "question": rows[0]["question"], "sub_questions": [], "raw": "I do not know what you mean.", "parse_ok": False}


def test_streaming_a_single_question(tiny_tokenizer):
    tiny_tokenizer.padding_side = "left"
    from qdtool.core.generation import _streamer

    pieces = []
    streamer = _streamer(tiny_tokenizer, pieces.append)
    streamer.put(torch.tensor([[2, 5, 6]]))  # the prompt: not shown
    for token in tiny_tokenizer("1. When did Aristotle die?", add_special_tokens=False)["input_ids"]:
        streamer.put(torch.tensor([token]))
    assert "".join(pieces) == "1. When did Aristotle die?"


def test_read_questions(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"id": 1, "question": "A?"}\n\n{"question": "B?", "x": [1]}\n')
    assert read_questions(tmp_path / "q.jsonl") == [{"id": 1, "question": "A?"}, {"question": "B?", "x": [1]}]
    (tmp_path / "q.json").write_text(json.dumps([{"question": "A?"}]))
    assert read_questions(tmp_path / "q.json") == [{"question": "A?"}]
    (tmp_path / "q.txt").write_text("A?\n  \nB?\n")
    assert read_questions(tmp_path / "q.txt") == [{"question": "A?"}, {"question": "B?"}]
    assert read_questions("-", "세종은 누구인가?\n") == [{"question": "세종은 누구인가?"}]
    with pytest.raises(UsageError, match="no such file"):
        read_questions(tmp_path / "none.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"question": "A?"}\n{"q": 1}\n')
    with pytest.raises(DataError, match="record 2 has no \"question\""):
        read_questions(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"question": "A?"\n')
    with pytest.raises(DataError, match="broken.jsonl:1:.*invalid JSON"):
        read_questions(tmp_path / "broken.jsonl")


def test_the_lm_head_always_gets_a_contiguous_input(tiny_model_dir):
    """generate() runs the head on hidden[:, -1:, :] (a strided view); with frozen weights torch
    would take a batched matmul that copies the weight per row (9.7 s instead of 17 ms for Gemma's
    head in bf16 on CPU). load_decomposer hands the head a contiguous copy: same logits."""
    from qdtool.core.generation import load_decomposer

    model = load_decomposer(str(tiny_model_dir), device="cpu").model
    head = model.get_output_embeddings()
    seen = []
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    hidden = torch.randn(3, 5, head.in_features, dtype=head.weight.dtype)
    view = hidden[:, -1:, :]
    assert not view.is_contiguous()
    with torch.no_grad():
        logits = head(view)
    assert seen == [True]
    torch.testing.assert_close(logits, hidden[:, -1:, :].contiguous() @ head.weight.T)
    prompts = torch.randint(3, 50, (3, 6))
    with torch.no_grad():  # and generation runs through it
        model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=2, do_sample=False)
    assert len(seen) >= 3 and all(seen)


def test_results_stream_out_in_input_order_before_the_rest_is_generated(tiny_tokenizer):
    """Rows come back in input order, window by window: a caller writing each one keeps them when stopped."""
    from qdtool.core.generation import decompose_stream

    tiny_tokenizer.padding_side = "left"
    questions = [f"Was Aristotle alive {'when ' * (i % 4)}in year {i}?" for i in range(10)]
    model = ScriptedModel(tiny_tokenizer, {"Aristotle": ANSWERS["Aristotle"]})
    stream = decompose_stream(Decomposer(model, tiny_tokenizer), [{"id": i, "question": q} for i, q in enumerate(questions)],
                              GenerationSettings(batch_size=2))
    first = next(stream)
    assert first.extra["id"] == 0 and first.parse_ok
    assert 1 <= len(model.batches) <= 4  # only the first window (4 batches of 2) ran, not all 5 batches
    rest = list(stream)
    assert [r.extra["id"] for r in rest] == list(range(1, 10))
    assert model.batches == [2, 2, 2, 2, 2]


def test_empty_and_overlong_questions_are_refused_before_anything_is_generated(tiny_tokenizer):
    tiny_tokenizer.padding_side = "left"
    model = ScriptedModel(tiny_tokenizer, ANSWERS)
    rows = [{"id": "a", "question": "Was Aristotle alive?"}, {"id": "b", "question": "   "},
            {"question": "Was Aristotle " + "very " * 200 + "old?"}]
    with pytest.raises(DataError) as info:
        decompose(Decomposer(model, tiny_tokenizer), rows, GenerationSettings(max_input_tokens=200), source="q.jsonl")
    message = str(info.value)
    assert message.startswith("q.jsonl: record 2 (id b): the question is empty; record 3: the prompt is ")
    assert "A prompt may take at most 200 tokens (--max-input-tokens 200); nothing was generated" in message
    assert model.batches == []
    with pytest.raises(DataError, match=r"^the prompt is \d+ tokens\. A prompt may take at most 200 tokens"):
        decompose(Decomposer(model, tiny_tokenizer), rows[2:], GenerationSettings(max_input_tokens=200))
    assert model.batches == []


def test_the_prompt_limit_is_the_models_context_less_the_answer(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from qdtool.core.generation import prompt_limit

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # max_position_embeddings 512
    assert prompt_limit(model, GenerationSettings(max_new_tokens=256, max_input_tokens=1024)) == (
        256, "the model's context of 512 tokens less --max-new-tokens 256")
    assert prompt_limit(model, GenerationSettings(max_new_tokens=64, max_input_tokens=100)) == (100, "--max-input-tokens 100")
    with pytest.raises(UsageError, match="--max-new-tokens 600 leaves no room for a prompt"):
        decompose(Decomposer(model, tiny_tokenizer), [{"question": "A?"}], GenerationSettings(max_new_tokens=600))


def test_incomplete_model_dirs_are_refused_before_loading(tiny_model_dir, tmp_path):
    """What an interrupted merge (before merges were atomic) left: weights, but no tokenizer or marker."""
    import shutil

    from qdtool.core.generation import load_decomposer
    from qdtool.errors import ModelError

    half = tmp_path / "merged"
    half.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, half / name)
    with pytest.raises(ModelError, match=r"has model weights but no tokenizer .*merge RUN_DIR --overwrite"):
        load_decomposer(str(half), device="cpu")
    shutil.rmtree(half)
    shutil.copytree(tiny_model_dir, half)
    (half / "run_config.yaml").write_text("model: embedded\n")
    with pytest.raises(ModelError, match=r"incomplete merge output \(no qdtool_merge.json"):
        load_decomposer(str(half), device="cpu")
    (half / "qdtool_merge.json").write_text("{}")
    assert load_decomposer(str(half), device="cpu").source == str(half)
