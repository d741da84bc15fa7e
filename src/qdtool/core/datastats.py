"""Statistics of a dataset: sizes, step counts, language mix and token lengths."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from qdtool.core.data import Record
from qdtool.core.prompts import HANGUL as _HANGUL
from qdtool.core.prompts import PromptOptions

_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Summary:
    min: float
    mean: float
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary | None:
        if not values:
            return None
        return cls(min(values), sum(values) / len(values), percentile(values, 50), percentile(values, 95), max(values))


@dataclass
class TokenStats:
    model: str
    template: str  # "chat" or "plain"
    p50: int
    p95: int
    p99: int
    max: int
    mean_prompt: float
    mean_answer: float  # tokens that carry loss: the sub-questions and EOS


@dataclass
class DatasetStats:
    records: int
    steps: Summary | None
    steps_histogram: dict[int, int]
    question_chars: Summary | None
    step_chars: Summary | None
    hangul_share: float  # of Hangul + Latin letters, over questions and steps
    latin_share: float
    korean_records: int  # records whose question has Hangul
    tokens: TokenStats | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_stats(records: Sequence[Record]) -> DatasetStats:
    steps = [len(r.sub_questions) for r in records]
    hangul = latin = 0
    for r in records:
        for text in (r.question, *r.sub_questions):
            hangul += len(_HANGUL.findall(text))
            latin += len(_LATIN.findall(text))
    letters = hangul + latin
    return DatasetStats(
        records=len(records),
        steps=Summary.of(steps),
        steps_histogram=dict(sorted(Counter(steps).items())),
        question_chars=Summary.of([len(r.question) for r in records]),
        step_chars=Summary.of([len(s) for r in records for s in r.sub_questions]),
        hangul_share=hangul / letters if letters else 0.0,
        latin_share=latin / letters if letters else 0.0,
        korean_records=sum(1 for r in records if _HANGUL.search(r.question)),
    )


def token_stats(records: Sequence[Record], tokenizer: Any, model_name: str, prompt: PromptOptions = PromptOptions()) -> TokenStats | None:
    """Token lengths of the rendered training samples, exactly as `train` will build them."""
    from qdtool.core.prompts import encode_sample, uses_chat_template

    if not records:
        return None
    encoded = [encode_sample(tokenizer, r.question, r.sub_questions, prompt) for r in records]
    lengths = [len(e) for e in encoded]
    prompts = [e.prompt_len for e in encoded]
    chat = uses_chat_template(tokenizer, prompt.template)
    return TokenStats(
        model=model_name,
        template="chat" if chat else "plain",
        p50=int(percentile(lengths, 50)),
        p95=int(percentile(lengths, 95)),
        p99=int(percentile(lengths, 99)),
        max=max(lengths),
        mean_prompt=sum(prompts) / len(prompts),
        mean_answer=sum(n - p for n, p in zip(lengths, prompts, strict=True)) / len(lengths),
    )
