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
        for ids, mask in zip(input_ids, attention_mask, strict=True):
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
    assert row == {"id": "a", "question": rows[0]["question"], "sub_questions": [], "raw": "I do not know what you mean.",
                   "parse_ok": False}


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


class RecordingModel(ScriptedModel):
    """A ScriptedModel that keeps the prompt ids of every row it is given (padding removed)."""

    def __init__(self, tokenizer, answers: dict[str, str]) -> None:
        super().__init__(tokenizer, answers)
        self.prompts: list[list[int]] = []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.prompts += [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
        return super().generate(input_ids, attention_mask, **kwargs)


@pytest.mark.parametrize("chat", [False, True])
def test_decompose_feeds_the_prompt_ids_training_learned_after(tiny_tokenizer, tiny_chat_tokenizer, chat):
    from qdtool.core.prompts import PromptOptions, encode_prompt

    tokenizer = tiny_chat_tokenizer if chat else tiny_tokenizer
    tokenizer.padding_side = "left"
    options = PromptOptions(language="ko", instruction=None)
    model = RecordingModel(tokenizer, ANSWERS)
    questions = ["Was Aristotle alive when the laptop was invented?", "Could a llama birth twice during the War in Vietnam?"]
    decompose(Decomposer(model, tokenizer, options), [{"question": q} for q in questions], GenerationSettings(batch_size=2))
    assert sorted(model.prompts) == sorted(encode_prompt(tokenizer, q, options) for q in questions)
    assert all(ids.count(tokenizer.bos_token_id) == 1 for ids in model.prompts)


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, tmp_path_factory):
    """A run dir as `train` leaves it (run_config.yaml + adapter/), with a non-zero adapter and its own prompt settings."""
    from qdtool.config import TrainConfig, dump_config
    from qdtool.core.lora import add_lora
    from qdtool.core.modeling import load_tokenizer

    from conftest import build_tiny_model

    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(model=str(tiny_model_dir), template="plain", language="ko", instruction="Split it.", lora_r=4)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = add_lora(build_tiny_model(len(tokenizer)), config)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    (run / "run_config.yaml").write_text(dump_config(config), encoding="utf-8")
    return run


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_dir_loads_base_plus_adapter_with_its_prompt_settings(adapter_run, monkeypatch, precision):
    """fp32 folds the adapter into the weights; bf16 (a CPU with native bf16) keeps it separate."""
    from peft import PeftModel

    from qdtool.core import hardware
    from qdtool.core.generation import load_decomposer
    from qdtool.core.prompts import PromptOptions

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: precision == "bf16")
    decomposer = load_decomposer(str(adapter_run), device="auto")
    assert decomposer.prompt_options == PromptOptions("plain", "ko", "Split it.")
    assert decomposer.prompt("Q?").startswith("### Instruction:\nSplit it.\n")
    assert isinstance(decomposer.model, PeftModel) is (precision == "bf16")
    base = {p.dtype for n, p in decomposer.model.named_parameters() if "lora_" not in n}
    assert base == {torch.float32 if precision == "fp32" else torch.bfloat16}
    assert decomposer.tokenizer.padding_side == "left" and not decomposer.model.training


def test_load_decomposer_refuses_a_device_it_cannot_use(tiny_model_dir, monkeypatch):
    from qdtool.core.generation import load_decomposer

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(UsageError, match=r"--device must be auto, cpu or cuda \(got gpu\)"):
        load_decomposer(str(tiny_model_dir), device="gpu")
    with pytest.raises(UsageError, match="--device cuda: no CUDA GPU is visible"):
        load_decomposer(str(tiny_model_dir), device="cuda")


class ForcedModel(torch.nn.Module):
    """A tiny real model whose greedy output is scripted per prompt (a logits processor forces each
    token), so that transformers' own generate() runs with qdtool's stopping criteria and guards."""

    def __init__(self, tokenizer, answers: dict[str, str]) -> None:
        from conftest import build_tiny_model

        super().__init__()
        self.inner = build_tiny_model(len(tokenizer))
        self.tokenizer, self.answers = tokenizer, answers
        self.generation_config = self.inner.generation_config
        self.outputs: list[dict[str, list[int]]] = []  # per call: each question's generated ids, padding included

    def generate(self, input_ids, attention_mask, logits_processor=None, **kwargs):
        from transformers import LogitsProcessorList

        prompts = [self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True) for ids, mask in zip(input_ids, attention_mask,
                                                                                                            strict=True)]
        keys = [next(q for q in self.answers if q in prompt) for prompt in prompts]
        scripts = [self.tokenizer(self.answers[k], add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id] for k in keys]
        width, eos = input_ids.shape[1], self.tokenizer.eos_token_id

        def force(ids, scores):
            t = ids.shape[1] - width
            forced = torch.full_like(scores, float("-inf"))
            for row, script in enumerate(scripts):
                forced[row, script[t] if t < len(script) else eos] = 0.0
            return forced

        processors = LogitsProcessorList([*(logits_processor or []), force])
        output = self.inner.generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=processors, **kwargs)
        self.outputs.append({k: row[width:].tolist() for k, row in zip(keys, output, strict=True)})
        return output


LOOPING = {
    "Aristotle": "1. When did Aristotle die?\n2. When was the laptop invented?\n3. when was the laptop  invented\n"
                 "4. When did Aristotle die?\n5. When was the laptop invented?\n6. Is #2 before #1?",
    "llama": "1. How long is a llama pregnant?\n2. How long did the War in Vietnam last?\n3. What is twice #1?\n"
             "4. Is #2 longer than #3?\n5. What is a llama?\n6. What is a war?",
}
QUESTIONS = [{"question": "Was Aristotle alive when the laptop was invented?"},
             {"question": "Could a llama birth twice during the War in Vietnam?"}]


def _answer_text(model, tokenizer, key: str) -> str:
    return tokenizer.decode(model.outputs[-1][key], skip_special_tokens=False)


def test_a_repeated_step_stops_its_row_only_and_is_dropped(tiny_tokenizer):
    """--stop-at-repeat (off by default: it cost SARI on val)."""
    tiny_tokenizer.padding_side = "left"
    model = ForcedModel(tiny_tokenizer, LOOPING)
    settings = GenerationSettings(max_new_tokens=120, batch_size=2, stop_at_repeat=True)
    results = decompose(Decomposer(model, tiny_tokenizer), QUESTIONS, settings)
    assert results[0].sub_questions == ["When did Aristotle die?", "When was the laptop invented?"]
    assert results[0].raw.endswith("2. When was the laptop invented?\n3. when was the laptop  invented")  # stopped right there
    assert results[1].sub_questions == [step.split(". ", 1)[1] for step in LOOPING["llama"].splitlines()]  # its batch-mate went on
    pad, eos = tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id
    done = model.outputs[-1]["Aristotle"]
    generated = len(tiny_tokenizer(LOOPING["Aristotle"].split("\n4.")[0] + "\n", add_special_tokens=False)["input_ids"])
    assert set(done[generated:]) == {pad} and len(done) > generated  # padded while the llama row finished
    assert model.outputs[-1]["llama"][-1] == eos


def test_the_step_cap_stops_generation_and_cuts_the_steps(tiny_tokenizer):
    tiny_tokenizer.padding_side = "left"
    model = ForcedModel(tiny_tokenizer, LOOPING)
    decomposer = Decomposer(model, tiny_tokenizer, longest_trained=4)  # a run trained on at most 4 steps
    results = decompose(decomposer, QUESTIONS[1:], GenerationSettings(max_new_tokens=120))
    assert results[0].sub_questions == [step.split(". ", 1)[1] for step in LOOPING["llama"].splitlines()[:4]]
    assert "5." not in _answer_text(model, tiny_tokenizer, "llama")  # generation stopped after the 4th step's newline
    assert decompose(decomposer, QUESTIONS[1:], GenerationSettings(max_new_tokens=120, max_sub_questions=2))[0].sub_questions == \
        results[0].sub_questions[:2]
    assert "3." not in _answer_text(model, tiny_tokenizer, "llama")
    assert Decomposer(model, tiny_tokenizer).step_cap(GenerationSettings()) == 8  # nothing recorded: the fixed default


def test_without_guards_the_output_runs_on_as_generated(tiny_tokenizer):
    tiny_tokenizer.padding_side = "left"
    model = ForcedModel(tiny_tokenizer, LOOPING)
    settings = GenerationSettings(max_new_tokens=120, batch_size=2, max_sub_questions=0, stop_at_repeat=False)
    results = decompose(Decomposer(model, tiny_tokenizer, longest_trained=2), QUESTIONS, settings)
    assert [len(r.sub_questions) for r in results] == [6, 6]
    assert all(ids[-1] == tiny_tokenizer.eos_token_id for ids in model.outputs[-1].values())


def test_parsed_steps_are_cut_even_where_generation_did_not_stop(tiny_tokenizer):
    """A model whose generate() ignores the stopping criteria (ScriptedModel): the parse cuts the same way."""
    tiny_tokenizer.padding_side = "left"
    model = ScriptedModel(tiny_tokenizer, LOOPING)
    settings = GenerationSettings(max_new_tokens=200, max_sub_questions=5, stop_at_repeat=True)
    results = decompose(Decomposer(model, tiny_tokenizer), QUESTIONS, settings)
    assert [len(r.sub_questions) for r in results] == [2, 5]
    assert results[0].raw.endswith("6. Is #2 before #1?")  # the raw text stays whole


def test_a_line_that_restarts_the_template_stops_the_row(tiny_tokenizer):
    """A base model with the plain few-shot template goes on with the next `### Instruction:`: nothing after it is parsed."""
    tiny_tokenizer.padding_side = "left"
    answers = {"Aristotle": "1. When did Aristotle die?\n2. Is #1 after 1980?\n\n### Instruction:\nDecompose the question.\n"
                            "### Question:\nWas Aristotle alive?\n### Sub-questions:\n1. When"}
    model = ForcedModel(tiny_tokenizer, answers)
    results = decompose(Decomposer(model, tiny_tokenizer), QUESTIONS[:1], GenerationSettings(max_new_tokens=120))
    assert results[0].sub_questions == ["When did Aristotle die?", "Is #1 after 1980?"]
    assert "Decompose" not in _answer_text(model, tiny_tokenizer, "Aristotle")


def test_repetition_guards_count_the_answer_not_the_prompt(tiny_tokenizer):
    """transformers' own no-repeat n-gram and repetition penalty count the prompt too: a sub-question
    could then not repeat the question's words. Ours look after the prompt (`width`) only."""
    from qdtool.core.generation import _guards

    settings = GenerationSettings(no_repeat_ngram_size=2, repetition_penalty=2.0, max_sub_questions=0, stop_at_repeat=False)
    guards = _guards(Decomposer(None, tiny_tokenizer), settings, 0, width=3)
    assert "stopping_criteria" not in guards
    penalty, no_repeat = guards["logits_processor"]
    ids = torch.tensor([[7, 8, 9, 7, 5, 7]])  # prompt 7 8 9, answer 7 5 7
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 4.0, 1.0, -3.0, 2.0, 2.0]])
    penalised = penalty(ids, scores.clone())
    torch.testing.assert_close(penalised, torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0, -6.0, 2.0, 2.0]]))  # 8, 9: prompt only
    banned = no_repeat(ids, scores.clone())
    assert banned[0, 5] == float("-inf")  # 7 5 is in the answer: 5 may not follow 7 again
    assert banned[0, 8] == 2.0  # 7 8 is in the prompt only
    assert torch.isfinite(banned[0, [0, 1, 2, 3, 4, 6, 7, 8, 9]]).all()
    assert "logits_processor" not in _guards(Decomposer(None, tiny_tokenizer), GenerationSettings(), 8, width=3)  # off by default


def test_a_trained_run_records_its_longest_decomposition_and_decompose_caps_there(tiny_model_dir, tmp_path):
    """train writes it to run_summary.json, merge carries it to qdtool_merge.json, load_decomposer reads it back."""
    from qdtool.config import load_train_config
    from qdtool.core import training
    from qdtool.core.generation import load_decomposer
    from qdtool.core.merging import merge

    from conftest import EXAMPLES

    lines = (EXAMPLES / "strategyqa_train.jsonl").read_text(encoding="utf-8").splitlines()[:12]
    longest = {"question": "Was Aristotle alive when the laptop was invented?", "sub_questions": [f"Step {i}?" for i in range(6)]}
    (tmp_path / "train.jsonl").write_text("\n".join([*lines, json.dumps(longest)]) + "\n", encoding="utf-8")
    assert max(len(json.loads(line)["sub_questions"]) for line in lines) < 6
    run = tmp_path / "run"
    config = load_train_config(overrides=dict(model=str(tiny_model_dir), data=str(tmp_path / "train.jsonl"), output_dir=str(run),
                                              max_steps=1, batch_tokens=1024, max_seq_len=512, eval_steps=100, save_steps=100,
                                              report_to="none", eval_split=0.2))
    assert training.train(config).longest_decomposition == 6
    assert json.loads((run / "run_summary.json").read_text())["longest_decomposition"] == 6
    decomposer = load_decomposer(str(run), device="cpu")
    assert decomposer.longest_trained == 6 and decomposer.step_cap(GenerationSettings()) == 6
    assert decomposer.step_cap(GenerationSettings(max_sub_questions=0)) == 0  # the settings' own cap wins
    merge(run, dtype="fp32")
    assert json.loads((run / "merged" / "qdtool_merge.json").read_text())["longest_decomposition"] == 6
    assert load_decomposer(str(run / "merged"), device="cpu").longest_trained == 6
    assert load_decomposer(str(tiny_model_dir), device="cpu").longest_trained is None  # a base model: no record


class SampledModel(ScriptedModel):
    """Returns num_return_sequences scripted samples per prompt, grouped by prompt as generate() does."""

    def __init__(self, tokenizer, samples: dict[str, list[str]]) -> None:
        super().__init__(tokenizer, {})
        self.samples = samples

    def generate(self, input_ids, attention_mask, max_new_tokens, num_return_sequences, eos_token_id, pad_token_id, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompt = self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            texts = next(s for q, s in self.samples.items() if q in prompt)
            assert len(texts) == num_return_sequences
            for text in texts:
                rows.append(ids.tolist() + self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])


def test_consensus_returns_the_sample_the_others_agree_with_and_keeps_every_sample(tiny_tokenizer):
    from qdtool.core.consensus import check_candidate, choose

    tiny_tokenizer.padding_side = "left"
    texts = ["1. Who was Aristotle?\n2. What is a laptop?",
             "1. When did Aristotle die?\n2. When was the laptop invented?\n3. Is #2 before #1?",
             "1. When did Aristotle die?\n2. When did Aristotle die?",
             "1. When did Aristotle die?\n2. When was the first laptop invented?\n3. Is #2 before #1?"]
    model = SampledModel(tiny_tokenizer, {"Aristotle": texts, "llama": ["no steps"] * 4})
    rows = [{"id": "a", "question": "Was Aristotle alive when the laptop was invented?"},
            {"id": "b", "question": "Could a llama birth twice during the War in Vietnam?"}]
    settings = GenerationSettings(temperature=0.7, num_return_sequences=4, consensus=True, max_new_tokens=64)
    first, second = decompose(Decomposer(model, tiny_tokenizer), rows, settings)
    steps = [s["sub_questions"] for s in first.samples]
    expected = choose(rows[0]["question"], [check_candidate(rows[0]["question"], "", s) for s in steps])
    assert expected.index in (1, 3) and first.sub_questions == steps[expected.index] and len(first.samples) == 4
    assert first.consensus == {"chosen": expected.index + 1, "agreement": round(expected.agreement, 4), "valid": 3, "samples": 4}
    assert first.to_dict()["consensus"] == first.consensus
    assert not second.parse_ok and second.raw == "no steps" and second.consensus["valid"] == 0  # nothing valid: the first sample
    plain = decompose(Decomposer(model, tiny_tokenizer), rows[:1], GenerationSettings(temperature=0.7, num_return_sequences=4))
    assert plain[0].sub_questions == ["Who was Aristotle?", "What is a laptop?"] and plain[0].consensus is None
    assert "consensus" not in plain[0].to_dict()


def test_seeded_sampling_repeats(tiny_tokenizer):
    from conftest import build_tiny_model

    tiny_model = build_tiny_model(len(tiny_tokenizer)).eval()
    tiny_tokenizer.padding_side = "left"
    rows = [{"question": "Was Aristotle alive when the laptop was invented?"}, {"question": "Is a llama a mammal?"}]
    settings = GenerationSettings(temperature=1.0, num_return_sequences=3, consensus=True, max_new_tokens=12, seed=7)
    runs = [[r.to_dict() for r in decompose(Decomposer(tiny_model, tiny_tokenizer), rows, settings)] for _ in range(2)]
    assert runs[0] == runs[1]
    samples = [s["raw"] for row in runs[0] for s in row["samples"]]
    assert len(set(samples)) > 1  # it did sample: a random tiny model at temperature 1 does not repeat itself six times
