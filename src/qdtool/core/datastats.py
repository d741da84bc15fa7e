"""Statistics of a dataset: sizes, step counts, language mix and token lengths.

Built one record at a time (`StatsBuilder`, `TokenStatsBuilder`) from histograms of lengths, so a
dataset of any size costs the memory of its distinct lengths, and the percentiles are still exact.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from qdtool.core.data import Record
from qdtool.core.prompts import HANGUL as _HANGUL
from qdtool.core.prompts import PromptOptions

_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_ASCII_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def percentile_of_counts(counts: Mapping[float, int], q: float) -> float:
    """`percentile` of the values that `counts` ({value: how many times}) stands for."""
    rank = max(1, math.ceil(q / 100 * sum(counts.values())))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    raise ValueError("no values")


@dataclass
class Summary:
    min: float
    mean: float
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary | None:
        return cls.of_counts(Counter(values))

    @classmethod
    def of_counts(cls, counts: Mapping[float, int]) -> Summary | None:
        total = sum(counts.values())
        if not total:
            return None
        mean = sum(v * n for v, n in counts.items()) / total
        return cls(min(counts), mean, percentile_of_counts(counts, 50), percentile_of_counts(counts, 95), max(counts))


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


class StatsBuilder:
    """DatasetStats of the records added so far; keeps counts and histograms of lengths, not the records."""

    def __init__(self) -> None:
        self.records = self.hangul = self.latin = self.korean = 0
        self.steps: Counter[int] = Counter()
        self.question_chars: Counter[int] = Counter()
        self.step_chars: Counter[int] = Counter()

    def add(self, record: Record) -> None:
        self.records += 1
        self.steps[len(record.sub_questions)] += 1
        self.question_chars[len(record.question)] += 1
        self.step_chars.update(len(s) for s in record.sub_questions)
        if _HANGUL.search(record.question):
            self.korean += 1
        for text in (record.question, *record.sub_questions):
            if text.isascii():  # most text: no Hangul, and the Latin letters are A-Z a-z (counted in C, without a list of matches)
                raw = text.encode("ascii")
                self.latin += len(raw) - len(raw.translate(None, _ASCII_LETTERS))
            else:
                self.hangul += len(_HANGUL.findall(text))
                self.latin += len(_LATIN.findall(text))

    def result(self) -> DatasetStats:
        letters = self.hangul + self.latin
        return DatasetStats(
            records=self.records,
            steps=Summary.of_counts(self.steps),
            steps_histogram=dict(sorted(self.steps.items())),
            question_chars=Summary.of_counts(self.question_chars),
            step_chars=Summary.of_counts(self.step_chars),
            hangul_share=self.hangul / letters if letters else 0.0,
            latin_share=self.latin / letters if letters else 0.0,
            korean_records=self.korean,
        )


def dataset_stats(records: Iterable[Record]) -> DatasetStats:
    builder = StatsBuilder()
    for record in records:
        builder.add(record)
    return builder.result()


class TokenStatsBuilder:
    """TokenStats of the records added so far, each rendered and encoded exactly as `train` will (histograms, not samples)."""

    def __init__(self, tokenizer: Any, model_name: str, prompt: PromptOptions = PromptOptions()) -> None:
        self.tokenizer, self.model_name, self.prompt = tokenizer, model_name, prompt
        self.lengths: Counter[int] = Counter()
        self.prompt_tokens = self.answer_tokens = 0

    def add(self, record: Record) -> None:
        from qdtool.core.prompts import encode_sample

        encoded = encode_sample(self.tokenizer, record.question, record.sub_questions, self.prompt)
        self.lengths[len(encoded)] += 1
        self.prompt_tokens += encoded.prompt_len
        self.answer_tokens += len(encoded) - encoded.prompt_len

    def result(self) -> TokenStats | None:
        from qdtool.core.prompts import uses_chat_template

        n = sum(self.lengths.values())
        if not n:
            return None
        return TokenStats(
            model=self.model_name,
            template="chat" if uses_chat_template(self.tokenizer, self.prompt.template) else "plain",
            p50=int(percentile_of_counts(self.lengths, 50)),
            p95=int(percentile_of_counts(self.lengths, 95)),
            p99=int(percentile_of_counts(self.lengths, 99)),
            max=max(self.lengths),
            mean_prompt=self.prompt_tokens / n,
            mean_answer=self.answer_tokens / n,
        )


def token_stats(records: Iterable[Record], tokenizer: Any, model_name: str, prompt: PromptOptions = PromptOptions()) -> TokenStats | None:
    """Token lengths of the rendered training samples, exactly as `train` will build them."""
    builder = TokenStatsBuilder(tokenizer, model_name, prompt)
    for record in records:
        builder.add(record)
    return builder.result()
