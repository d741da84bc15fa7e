"""core/synth with a local teacher: our decompose engine, few-shot prompts by language, num_return_sequences as the samples."""

from __future__ import annotations

import json

import torch

from qdtool.core.generation import Decomposer, GenerationSettings
from qdtool.core.prompts import INSTRUCTIONS, PLAIN_TEMPLATE
from qdtool.core.synth import SynthSettings, dropped_path, synth
from qdtool.core.synth import run as synth_run
from qdtool.core.synth.teachers import LocalTeacher

SKY, KOREAN, OWL = "Is the sky blue at noon?", "한강은 낙동강보다 긴가?", "Do owls sleep during the day?"
SAMPLES = {  # the samples each question gets, in order (as num_return_sequences rows)
    SKY: ["1. What colour is the sky at noon?\n2. Is #1 blue?", "1. What colour is the sky at noon?\n2. Is #1 blue?"],
    KOREAN: ["1. 한강의 길이는?\n2. 낙동강의 길이는?\n3. #1이 #2보다 큰가?",
             "1. 한강의 길이는 몇 km인가?\n2. 낙동강의 길이는?\n3. #1이 #2보다 큰가?"],
    OWL: ["Owls are nocturnal.", "1. What is #2?"],
}
EXAMPLES = [
    {"question": "Is Everest higher than K2?", "sub_questions": ["How high is Everest?", "How high is K2?", "Is #1 higher than #2?"]},
    {"question": "서울은 부산보다 큰가?", "sub_questions": ["서울의 면적은?", "부산의 면적은?", "#1이 #2보다 큰가?"]},
]


class SamplingModel(torch.nn.Module):
    """generate() that gives each prompt's question (after its last '### Question:') its scripted samples; keeps the prompts."""

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.prompts, self.calls = tokenizer, [], []

    def generate(self, input_ids, attention_mask, max_new_tokens, num_return_sequences, pad_token_id, **kwargs):
        self.calls.append((input_ids.shape[0], num_return_sequences, kwargs.get("do_sample")))
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompt = self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            self.prompts.append(prompt)
            question = prompt.rsplit("### Question:\n", 1)[1].split("\n", 1)[0]
            for answer in SAMPLES[question][:num_return_sequences]:
                rows.append(ids.tolist() + self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])


def test_a_local_teacher_samples_with_the_engine_and_prompts_by_language(tiny_tokenizer, tmp_path, monkeypatch):
    tiny_tokenizer.padding_side = "left"
    model = SamplingModel(tiny_tokenizer)
    settings = SynthSettings(teacher="scripted-model", shots=1, samples=2, temperature=0.8, max_new_tokens=60)
    generation = GenerationSettings(max_new_tokens=60, temperature=0.8, num_return_sequences=2, max_sub_questions=settings.max_steps)
    teacher = LocalTeacher(Decomposer(model, tiny_tokenizer), generation, "scripted-model")
    monkeypatch.setattr(synth_run, "open_teacher", lambda settings, status=None: teacher)
    out = tmp_path / "s.jsonl"
    report = synth([{"question": SKY}, {"question": KOREAN, "id": "ko-1"}, {"question": OWL}], out, settings, examples=EXAMPLES)

    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in kept] == [SKY, KOREAN]  # grouped by demonstrations: English first, then Korean
    assert kept[0]["sub_questions"] == ["What colour is the sky at noon?", "Is #1 blue?"] and kept[0]["synth"]["agreement"] == 1.0
    assert kept[1]["id"] == "ko-1" and kept[1]["synth"]["teacher"] == "scripted-model" and kept[1]["synth"]["teacher_model"] is None
    assert 0 < kept[1]["synth"]["agreement"] < 1 and kept[1]["synth"]["valid"] == 2
    dropped = [json.loads(line) for line in dropped_path(out).read_text(encoding="utf-8").splitlines()]
    assert [(r["question"], r["reason"]) for r in dropped] == [(OWL, "no_valid_candidate")]
    assert (report.kept, report.dropped, report.requests) == (2, 1, 3)
    assert all(n == 2 and sampled for _, n, sampled in model.calls)  # the samples are num_return_sequences, sampled

    korean = next(p for p in model.prompts if KOREAN in p)
    demo = PLAIN_TEMPLATE.format(instruction=INSTRUCTIONS["ko"], question=EXAMPLES[1]["question"])
    assert korean.startswith(demo) and korean.endswith(PLAIN_TEMPLATE.format(instruction=INSTRUCTIONS["ko"], question=KOREAN))
    english = next(p for p in model.prompts if SKY in p)
    assert EXAMPLES[0]["question"] in english and "서울" not in english and INSTRUCTIONS["en"] in english
    assert teacher.decomposer.prompt_options.shots == ()  # the run's own prompt settings are back


def test_the_seed_reaches_the_local_teachers_sampling(tiny_tokenizer, monkeypatch):
    from qdtool.core import generation
    from qdtool.core.synth.teachers import open_teacher

    monkeypatch.setattr(generation, "load_decomposer", lambda *a, **k: Decomposer(SamplingModel(tiny_tokenizer), tiny_tokenizer))
    teacher = open_teacher(SynthSettings(teacher="scripted-model", samples=3, seed=11))
    assert (teacher.generation.seed, teacher.generation.num_return_sequences, teacher.generation.temperature) == (11, 3, 0.7)
    assert open_teacher(SynthSettings(teacher="scripted-model")).generation.seed is None


def test_a_local_prompt_over_the_limit_is_dropped_not_fatal(tiny_tokenizer, tmp_path, monkeypatch):
    tiny_tokenizer.padding_side = "left"
    model = SamplingModel(tiny_tokenizer)
    long = "Why " * 150 + "is the sky blue at noon?"
    monkeypatch.setitem(SAMPLES, long, SAMPLES[SKY])
    settings = SynthSettings(teacher="scripted-model", shots=1, samples=2)
    generation = GenerationSettings(max_new_tokens=60, temperature=0.7, num_return_sequences=2, max_input_tokens=300)
    monkeypatch.setattr(synth_run, "open_teacher", lambda settings, status=None: LocalTeacher(Decomposer(model, tiny_tokenizer),
                                                                                              generation, "scripted-model"))
    out = tmp_path / "s.jsonl"
    report = synth([{"question": long}, {"question": SKY}], out, settings, examples=EXAMPLES)
    dropped = json.loads(dropped_path(out).read_text(encoding="utf-8"))
    assert dropped["reason"] == "prompt_too_long" and "over 300 (--max-input-tokens 300)" in dropped["detail"]
    assert report.kept == 1 and json.loads(out.read_text(encoding="utf-8"))["question"] == SKY
