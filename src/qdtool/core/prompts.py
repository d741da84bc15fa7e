"""The one prompt renderer: what `train` learns is what `decompose` and `eval` ask.

A training sample is `prompt + answer`, where the answer is the numbered sub-questions, one per
line, followed by the tokenizer's EOS. Models with a chat template get the instruction and the
question as one user turn; others get the seed tool's plain template, unchanged, so adapters and
habits carry over.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qdtool.core.metrics import normalize_step

Language = Literal["auto", "en", "ko"]
TemplateKind = Literal["auto", "plain", "chat"]

# The seed tool's template, kept byte for byte so its users' prompts and adapters still work.
PLAIN_TEMPLATE = "### Instruction:\n{instruction}\n\n### Question:\n{question}\n\n### Sub-questions:\n"

INSTRUCTIONS: dict[str, str] = {
    "en": (
        "Decompose the complex question into simple sub-questions, one per line. "
        "A later sub-question may refer to the answer of an earlier one as #1, #2, ..."
    ),
    # The seed tool's instruction.
    "ko": "복잡한 질문을 단순한 여러 개의 하위 질문으로 분해하세요.",
}

IGNORE_INDEX = -100  # label of tokens that carry no loss (the prompt)

HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")  # syllables and jamo


def detect_language(text: str) -> str:
    """'ko' when the text has any Hangul, else 'en'."""
    return "ko" if HANGUL.search(text) else "en"


def instruction_for(question: str, language: Language = "auto", instruction: str | None = None) -> str:
    """The instruction text: the user's own if given, else the default for the question's language."""
    if instruction:
        return instruction
    lang = detect_language(question) if language == "auto" else language
    return INSTRUCTIONS[lang]


def format_answer(sub_questions: Sequence[str]) -> str:
    """Numbered sub-questions, one per line (no trailing newline; EOS follows in training)."""
    return "\n".join(f"{i}. {step.strip()}" for i, step in enumerate(sub_questions, start=1))


def uses_chat_template(tokenizer: Any, template: TemplateKind = "auto") -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else False
    if template == "chat" and not has_template:
        from qdtool.errors import ConfigError

        raise ConfigError("prompt template 'chat' was asked for, but this tokenizer has no chat template")
    return template == "chat" or (template == "auto" and has_template)


@dataclass(frozen=True)
class PromptOptions:
    """How prompts are rendered: a run's settings (`TrainConfig.prompt_options()`), the same in train, decompose and eval."""

    template: TemplateKind = "auto"  # the tokenizer's chat template if it has one, else plain
    language: Language = "auto"  # of the default instruction; auto follows each question
    instruction: str | None = None  # the user's own instruction instead of the defaults
    # (question, steps) pairs prepended as solved examples: few-shot prompting of a model that was
    # not fine-tuned; training never uses them
    shots: Sequence[tuple[str, Sequence[str]]] = ()


def render_prompt(question: str, tokenizer: Any = None, options: PromptOptions = PromptOptions()) -> str:
    """The text the model sees before its answer."""
    language, instruction = options.language, options.instruction
    if uses_chat_template(tokenizer, options.template):
        messages = []
        for shot_question, shot_steps in options.shots:
            messages += [
                {"role": "user", "content": f"{instruction_for(shot_question, language, instruction)}\n\n{shot_question.strip()}"},
                {"role": "assistant", "content": format_answer(shot_steps)},
            ]
        messages.append({"role": "user", "content": f"{instruction_for(question, language, instruction)}\n\n{question.strip()}"})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    demos = "".join(
        PLAIN_TEMPLATE.format(instruction=instruction_for(q, language, instruction), question=q.strip()) + format_answer(steps) + "\n\n"
        for q, steps in options.shots
    )
    return demos + PLAIN_TEMPLATE.format(instruction=instruction_for(question, language, instruction), question=question.strip())


def encode_prompt(tokenizer: Any, question: str, options: PromptOptions = PromptOptions()) -> list[int]:
    """The token ids of a question's prompt: what training puts before the answer is what `decompose` feeds the model.

    A chat template writes its own BOS into the text; the plain template relies on the tokenizer's.
    """
    chat = uses_chat_template(tokenizer, options.template)
    return list(tokenizer(render_prompt(question, tokenizer, options), add_special_tokens=not chat)["input_ids"])


@dataclass(frozen=True)
class EncodedSample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt; the answer ids and EOS otherwise

    @property
    def prompt_len(self) -> int:
        return sum(1 for x in self.labels if x == IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_sample(tokenizer: Any, question: str, sub_questions: Sequence[str], options: PromptOptions = PromptOptions()) -> EncodedSample:
    """Token ids and labels of one training sample.

    Prompt and answer are tokenized separately and concatenated, so the prompt's ids are exactly
    those `decompose` feeds the model (`encode_prompt`), and the label boundary is exact.
    """
    prompt_ids = encode_prompt(tokenizer, question, options)
    answer_ids = list(tokenizer(format_answer(sub_questions), add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is None:
        from qdtool.errors import ModelError

        raise ModelError("the tokenizer has no EOS token; the model could not learn where to stop")
    answer_ids.append(eos)
    return EncodedSample(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids)


_NUMBERING = re.compile(r"^\s*(?:(?:step|q|sub-?question)?\s*\d+\s*[.):\]]|[-*\u2022])\s*", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedOutput:
    sub_questions: list[str]
    raw: str

    @property
    def parse_ok(self) -> bool:
        return bool(self.sub_questions)


def parse_sub_questions(text: str, stop_markers: Sequence[str] = ()) -> ParsedOutput:
    """Sub-questions from a model's answer: its numbered (or bulleted) lines, numbering removed.

    Text after a stop marker (EOS, end-of-turn) or after a line that restarts the template
    (`### ...`) is ignored, and so are unnumbered lines (chatter around the list). Output without a
    single numbered step gives an empty list: `parse_ok` is False and the raw text is kept.
    """
    body = text
    for marker in stop_markers:
        if marker and marker in body:
            body = body.split(marker, 1)[0]
    steps: list[str] = []
    for line in body.splitlines():
        if line.lstrip().startswith("###"):
            break
        match = _NUMBERING.match(line)
        if match:
            step = line[match.end():].strip()
            if step:
                steps.append(step)
    return ParsedOutput(steps, text)


def first_repeat(steps: Sequence[str]) -> int | None:
    """The index of the first step that repeats an earlier one (compared as `metrics.normalize_step` makes them), else None."""
    seen: set[str] = set()
    for index, step in enumerate(steps):
        key = normalize_step(step)
        if key in seen:
            return index
        seen.add(key)
    return None


def cut_steps(steps: Sequence[str], max_steps: int = 0, stop_at_repeat: bool = False) -> list[str]:
    """The steps a guarded decoding keeps: those before the first repeated step (with `stop_at_repeat`),
    at most `max_steps` of them (0: any number).

    A decomposition never asks the same thing twice (no reference in the bundled data does): a repeat
    means the model has started to loop, and what follows it is the loop.
    """
    kept = list(steps)
    repeat = first_repeat(kept) if stop_at_repeat else None
    if repeat is not None:
        kept = kept[:repeat]
    return kept[:max_steps] if max_steps > 0 else kept
