"""What a teacher is asked: the instruction in the question's language and k solved examples.

The instruction and the answer format are prompts.py's (`instruction_for`, `format_answer`), so a
teacher is asked for exactly what `train` will teach. An OpenAI endpoint gets them as chat turns:
the instruction as the system message, each demonstration as a user question and the assistant's
numbered steps, then the question alone as the last user message (so a server that reads only the
last user message, as `qdtool serve` does, still gets the bare question).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from typing import Any

from qdtool.core.data import normalize_question
from qdtool.core.prompts import Language, detect_language, format_answer, instruction_for

Demo = tuple[str, list[str]]  # (question, sub-questions)
DemoPool = dict[str, list[Demo]]  # by language ("en", "ko"), each in a seeded order


def demo_pool(records: Sequence[Any], seed: int = 0) -> DemoPool:
    """The user's examples (data.Record or dicts with question/sub_questions), shuffled once (seeded), by language."""
    demos = [_as_demo(r) for r in records]
    random.Random(seed).shuffle(demos)
    pool: DemoPool = {}
    for demo in demos:
        pool.setdefault(detect_language(demo[0]), []).append(demo)
    return pool


def _as_demo(record: Any) -> Demo:
    if isinstance(record, dict):
        return record["question"], list(record["sub_questions"])
    return record.question, list(record.sub_questions)


def select_demos(question: str, pool: DemoPool, k: int) -> list[Demo]:
    """k demonstrations for `question`: those in its language first, then the others; never the question itself.

    The same k for every question of a language, so that their prompts (and prompt hashes) agree.
    """
    if k <= 0:
        return []
    language = detect_language(question)
    ordered = pool.get(language, []) + [d for lang in sorted(pool) if lang != language for d in pool[lang]]
    key = normalize_question(question)
    return [d for d in ordered if normalize_question(d[0]) != key][:k]


def build_messages(question: str, demos: Sequence[Demo], *, language: Language = "auto",
                   instruction: str | None = None) -> list[dict[str, str]]:
    """The chat messages for an OpenAI-compatible teacher: system instruction, demonstration turns, the question."""
    messages = [{"role": "system", "content": instruction_for(question, language, instruction)}]
    for demo_question, steps in demos:
        messages.append({"role": "user", "content": demo_question.strip()})
        messages.append({"role": "assistant", "content": format_answer(steps)})
    messages.append({"role": "user", "content": question.strip()})
    return messages


def prompt_hash(question: str, demos: Sequence[Demo], *, language: Language = "auto", instruction: str | None = None) -> str:
    """A short hash of what the teacher sees besides the question (instruction and demonstrations):
    records that share it were asked the same way, whichever teacher answered."""
    context = build_messages(question, demos, language=language, instruction=instruction)[:-1]
    digest = hashlib.sha256(json.dumps(context, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()
    return f"sha256:{digest[:16]}"


def estimate_tokens(text: str) -> int:
    """A rough token count without a tokenizer: about 4 ASCII characters per token, one token per
    other character (a Hangul syllable is one or two tokens in common vocabularies). For --dry-run only."""
    ascii_chars = sum(1 for c in text if ord(c) < 128)
    return -(-ascii_chars // 4) + (len(text) - ascii_chars)


def estimate_message_tokens(messages: Sequence[dict[str, str]]) -> int:
    """`estimate_tokens` over chat messages, with a few tokens per message for the role markers."""
    return sum(estimate_tokens(m["content"]) + 4 for m in messages) + 2
