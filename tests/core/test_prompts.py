"""core/prompts.py: one renderer, exact label spans, and a forgiving output parser."""

from __future__ import annotations

import pytest

from qdtool.core.prompts import (
    IGNORE_INDEX,
    INSTRUCTIONS,
    PLAIN_TEMPLATE,
    PromptOptions,
    cut_steps,
    detect_language,
    encode_prompt,
    encode_sample,
    first_repeat,
    format_answer,
    parse_sub_questions,
    render_prompt,
)
from qdtool.errors import ConfigError

Q = "Was Aristotle alive when the laptop was invented?"
STEPS = ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"]


def test_plain_template_is_the_seed_format():
    prompt = render_prompt(Q)
    assert prompt == (
        "### Instruction:\n" + INSTRUCTIONS["en"] + "\n\n### Question:\n" + Q + "\n\n### Sub-questions:\n"
    )
    assert PLAIN_TEMPLATE.startswith("### Instruction:\n{instruction}")


def test_korean_question_gets_the_seed_korean_instruction():
    question = "세종대왕이 태어났을 때 조선은 건국된 지 100년이 넘었는가?"
    assert detect_language(question) == "ko" and detect_language(Q) == "en"
    assert "복잡한 질문을 단순한 여러 개의 하위 질문으로 분해하세요." in render_prompt(question)
    assert INSTRUCTIONS["en"] in render_prompt(question, options=PromptOptions(language="en"))
    assert "Split it." in render_prompt(question, options=PromptOptions(instruction="Split it."))


def test_chat_template_used_when_present(tiny_chat_tokenizer, tiny_tokenizer):
    prompt = render_prompt(Q, tiny_chat_tokenizer)
    assert prompt == f"<bos><start_of_turn>user\n{INSTRUCTIONS['en']}\n\n{Q}<end_of_turn>\n<start_of_turn>model\n"
    assert render_prompt(Q, tiny_chat_tokenizer, PromptOptions(template="plain")).startswith("### Instruction:")
    with pytest.raises(ConfigError, match="no chat template"):
        render_prompt(Q, tiny_tokenizer, PromptOptions(template="chat"))
    with pytest.raises(ConfigError, match="no chat template"):
        encode_prompt(tiny_tokenizer, Q, PromptOptions(template="chat"))


def test_answer_format():
    assert format_answer(STEPS) == "1. When did Aristotle die?\n2. When was the laptop invented?\n3. Is #2 before #1?"


@pytest.mark.parametrize("chat", [False, True])
def test_labels_are_exactly_the_answer_and_eos(tiny_tokenizer, tiny_chat_tokenizer, chat):
    tok = tiny_chat_tokenizer if chat else tiny_tokenizer
    sample = encode_sample(tok, Q, STEPS)
    prompt_ids = tok(render_prompt(Q, tok), add_special_tokens=not chat)["input_ids"]
    answer_ids = tok(format_answer(STEPS), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert sample.input_ids == prompt_ids + answer_ids
    assert sample.labels == [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    assert sample.prompt_len == len(prompt_ids)
    # exactly one BOS at the start, in both paths
    assert sample.input_ids[0] == tok.bos_token_id and sample.input_ids.count(tok.bos_token_id) == 1
    supervised = [t for t in sample.labels if t != IGNORE_INDEX]
    assert tok.decode(supervised[:-1]) == format_answer(STEPS)
    assert supervised[-1] == tok.eos_token_id
    assert encode_prompt(tok, Q) == prompt_ids  # the prompt decompose feeds is the one training learned after


@pytest.mark.parametrize(("template", "bos_from"), [("plain", "tokenizer"), ("chat", "template")])
def test_encode_prompt_has_one_bos_whoever_writes_it(tiny_chat_tokenizer, template, bos_from):
    """The plain prompt gets its BOS from the tokenizer, a chat prompt from its template: one either way."""
    options = PromptOptions(template=template)
    ids = encode_prompt(tiny_chat_tokenizer, Q, options)
    text = render_prompt(Q, tiny_chat_tokenizer, options)
    assert text.startswith("<bos>") == (bos_from == "template")
    assert ids[0] == tiny_chat_tokenizer.bos_token_id and ids.count(tiny_chat_tokenizer.bos_token_id) == 1
    assert tiny_chat_tokenizer.decode(ids[1:]) == text.removeprefix("<bos>")


def test_prompt_options_carry_a_run_config_and_few_shot_examples(tiny_tokenizer):
    from qdtool.config import TrainConfig

    options = TrainConfig(template="plain", language="ko", instruction=None).prompt_options()
    assert options == PromptOptions("plain", "ko", None)
    with pytest.raises(AttributeError):
        options.language = "en"  # frozen: one run's settings cannot drift
    shots = PromptOptions(shots=[("Is water wet?", ["What is water?", "Is #1 wet?"])])
    prompt = render_prompt(Q, tiny_tokenizer, shots)
    demo = PLAIN_TEMPLATE.format(instruction=INSTRUCTIONS["en"], question="Is water wet?") + "1. What is water?\n2. Is #1 wet?\n\n"
    assert prompt.startswith(demo)
    assert prompt.endswith(render_prompt(Q, tiny_tokenizer))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1. A?\n2. B #1?\n", ["A?", "B #1?"]),
        ("1) A?\n 2)  B?", ["A?", "B?"]),
        ("- A?\n* B?\n• C?", ["A?", "B?", "C?"]),
        ("Step 1: A?\nStep 2: B?", ["A?", "B?"]),
        ("1. A?\n2. B?<eos>3. junk", ["A?", "B?"]),
        ("1. A?\n\n### Question:\nnext", ["A?"]),
        ("Sure! Here they are:\n1. A?\n2. B?\nHope this helps.", ["A?", "B?"]),
        ("Just a sentence without any list.", []),
        ("1. 세종은 언제 태어났는가?\n2. #1은 조선 건국 후 몇 년인가?", ["세종은 언제 태어났는가?", "#1은 조선 건국 후 몇 년인가?"]),
        ("", []),
        ("   \n\n", []),
        ("1.\n2.", []),
    ],
)
def test_parse_sub_questions(text, expected):
    parsed = parse_sub_questions(text, stop_markers=["<eos>"])
    assert parsed.sub_questions == expected
    assert parsed.parse_ok == bool(expected)
    assert parsed.raw == text


def test_parse_inverts_format_answer():
    assert parse_sub_questions(format_answer(STEPS)).sub_questions == STEPS


def test_a_repeated_step_and_what_follows_it_are_cut():
    """Compared as metrics.normalize_step makes them: case, spacing and a final `?` do not make a step new."""
    looping = ["When did Aristotle die?", "When was the laptop invented?", "when was the  laptop invented", "Is #2 before #1?"]
    assert first_repeat(looping) == 2 and first_repeat(STEPS) is None
    assert cut_steps(looping, stop_at_repeat=True) == looping[:2]
    assert cut_steps(looping) == looping  # off: kept as generated
    assert cut_steps(STEPS, max_steps=2) == STEPS[:2] and cut_steps(STEPS, max_steps=3) == STEPS and cut_steps(STEPS, 0) == STEPS
    assert cut_steps(looping, max_steps=1, stop_at_repeat=True) == looping[:1]
