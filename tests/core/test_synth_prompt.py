"""core/synth/prompt and plan: demonstrations in the question's language, the chat messages, the hash, --dry-run's counts."""

from __future__ import annotations

import json

import pytest

from qdtool.core.data import read_dataset
from qdtool.core.prompts import HANGUL, INSTRUCTIONS, format_answer
from qdtool.core.synth import SynthSettings, build_messages, demo_pool, plan, prompt_hash, select_demos
from qdtool.core.synth.prompt import estimate_message_tokens, estimate_tokens

from conftest import EXAMPLES

EN = [{"question": f"Is thing {i} bigger than thing {i + 1}?", "sub_questions": [f"How big is thing {i}?", f"How big is thing {i + 1}?",
                                                                                "Is #1 bigger than #2?"]} for i in range(4)]
KO = [{"question": "한강은 낙동강보다 긴가?", "sub_questions": ["한강의 길이는?", "낙동강의 길이는?", "#1이 #2보다 큰가?"]},
      {"question": "서울은 부산보다 큰가?", "sub_questions": ["서울의 면적은?", "부산의 면적은?", "#1이 #2보다 큰가?"]}]


def test_a_korean_question_gets_the_korean_instruction_and_korean_demonstrations():
    pool = demo_pool(EN + KO)
    question = "에베레스트산은 한라산보다 높은가?"
    demos = select_demos(question, pool, 2)
    assert sorted(q for q, _ in demos) == sorted(r["question"] for r in KO)
    messages = build_messages(question, demos)
    assert messages[0] == {"role": "system", "content": INSTRUCTIONS["ko"]}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert all(HANGUL.search(m["content"]) for m in messages[1:])
    assert messages[2]["content"] == format_answer(dict(demos)[messages[1]["content"]])  # "1. ...\n2. ..." as training writes it
    assert messages[-1] == {"role": "user", "content": question}


def test_an_english_question_gets_english_demonstrations_and_others_fill_up_to_k():
    pool = demo_pool(EN + KO)
    demos = select_demos("Is a whale bigger than a shark?", pool, 5)
    assert [HANGUL.search(q) is not None for q, _ in demos] == [False] * 4 + [True]  # 4 English, then a Korean one
    assert build_messages("Is a whale bigger than a shark?", demos)[0]["content"] == INSTRUCTIONS["en"]
    ko_demos = select_demos("부산은 대구보다 큰가?", pool, 3)
    assert [HANGUL.search(q) is not None for q, _ in ko_demos] == [True, True, False]


def test_a_question_is_never_its_own_demonstration_and_k_0_gives_none():
    pool = demo_pool(EN)
    demos = select_demos(EN[0]["question"].upper(), pool, 4)  # the same question, written otherwise
    assert len(demos) == 3 and EN[0]["question"] not in [q for q, _ in demos]
    assert select_demos("Is it?", pool, 0) == [] and build_messages("Is it?", []) == [
        {"role": "system", "content": INSTRUCTIONS["en"]}, {"role": "user", "content": "Is it?"}]


def test_the_bundled_korean_examples_serve_korean_questions():
    pool = demo_pool(read_dataset(EXAMPLES / "ko_samples.jsonl") + read_dataset(EXAMPLES / "sample_train.json"))
    demos = select_demos("서울에서 부산까지 KTX로 가는 것이 비행기보다 빠른가?", pool, 3)
    assert len(demos) == 3 and all(HANGUL.search(q) and all(HANGUL.search(s) or "#" in s for s in steps) for q, steps in demos)


def test_the_prompt_hash_depends_on_the_instruction_and_demonstrations_not_the_question():
    pool = demo_pool(EN + KO)
    one, two = "Is a whale bigger than a shark?", "Is a cat faster than a dog?"
    same = prompt_hash(one, select_demos(one, pool, 2)) == prompt_hash(two, select_demos(two, pool, 2))
    assert same and prompt_hash(one, select_demos(one, pool, 2)).startswith("sha256:")
    assert prompt_hash(one, select_demos(one, pool, 2)) != prompt_hash(one, select_demos(one, pool, 1))
    assert prompt_hash(one, []) != prompt_hash(one, [], instruction="Split it.")
    assert prompt_hash(one, []) != prompt_hash("한강은 긴가?", [])  # the Korean instruction


def test_token_estimates():
    assert estimate_tokens("abcdefgh") == 2 and estimate_tokens("abcdefghi") == 3 and estimate_tokens("한강") == 2
    assert estimate_message_tokens([{"role": "user", "content": "abcd"}]) == 1 + 4 + 2


def test_dry_run_counts_requests_and_tokens_of_what_is_left(tmp_path):
    out = tmp_path / "synth.jsonl"
    out.write_text(json.dumps({"question": EN[0]["question"], "sub_questions": ["a?", "b?"]}) + "\n", encoding="utf-8")
    (tmp_path / "synth.dropped.jsonl").write_text(json.dumps({"question": EN[1]["question"], "reason": "low_agreement"}) + "\n")
    questions = [{"question": r["question"]} for r in EN] + [{"question": EN[2]["question"]}]  # a repeat is asked once
    settings = SynthSettings(teacher="http://127.0.0.1:1/v1", samples=4, shots=2, max_new_tokens=100)
    result = plan(questions, out, settings, examples=KO)
    assert (result.questions, result.already_done, result.to_ask) == (4, 2, 2)
    assert (result.requests, result.requests_without_n) == (2, 8)
    expected = sum(estimate_message_tokens(build_messages(q, select_demos(q, demo_pool(KO), 2))) for q in (EN[2]["question"],
                                                                                                          EN[3]["question"]))
    assert result.prompt_tokens == expected and result.prompt_tokens_without_n == 4 * expected
    assert result.completion_tokens_max == 2 * 4 * 100
    answer = round(sum(estimate_tokens(format_answer(r["sub_questions"])) for r in KO) / 2)
    assert result.completion_tokens_estimate == 2 * 4 * answer
    again = plan(questions, out, SynthSettings(teacher="embedded", samples=4, retry_dropped=True, limit=1), examples=KO)
    assert (again.to_ask, again.already_done, again.remote) == (1, 1, False)
    assert out.read_text(encoding="utf-8").count("\n") == 1  # nothing written


@pytest.mark.parametrize(("changes", "words"), [
    ({"samples": 0}, "--samples must be at least 1 (got 0)"),
    ({"samples": 3, "temperature": 0.0}, "--samples 3 needs sampling"),
    ({"samples": 1, "min_agreement": 0.5}, "--min-agreement needs --samples 2 or more"),
    ({"min_agreement": 1.5}, "--min-agreement is a mean SARI, between 0 and 1"),
    ({"teacher": "embedded", "teacher_model": "gpt"}, "--teacher-model is for a URL teacher"),
    ({"timeout": 0}, "--timeout must be more than 0 seconds"),
])
def test_settings_name_every_bad_option(changes, words):
    settings = SynthSettings(**{"teacher": "http://x/v1", **changes})
    assert any(words in p for p in settings.problems()), settings.problems()


def test_the_api_key_never_shows_in_the_settings_repr():
    assert "s3cret" not in repr(SynthSettings(teacher="http://x/v1", api_key="s3cret"))
