"""core/datastats.py: statistics checked against hand-computed values."""

from __future__ import annotations

import pytest

from qdtool.core.data import Record
from qdtool.core.datastats import dataset_stats, percentile, token_stats
from qdtool.core.prompts import encode_sample


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7], 99) == 7
    assert percentile([3, 1, 2], 50) == 2


def test_dataset_stats_by_hand():
    records = [
        Record("abcd?", ["ab?", "cd?"]),  # 4 Latin letters in question, 4 in steps
        Record("가나다?", ["가?", "나?", "다?"]),  # 3 + 3 Hangul
    ]
    stats = dataset_stats(records)
    assert stats.records == 2
    assert stats.steps.min == 2 and stats.steps.max == 3 and stats.steps.mean == pytest.approx(2.5)
    assert stats.steps_histogram == {2: 1, 3: 1}
    assert stats.question_chars.mean == pytest.approx((5 + 4) / 2)
    assert stats.step_chars.max == 3
    assert stats.hangul_share == pytest.approx(6 / 14)
    assert stats.latin_share == pytest.approx(8 / 14)
    assert stats.korean_records == 1


def test_empty_stats():
    stats = dataset_stats([])
    assert stats.records == 0 and stats.steps is None and stats.hangul_share == 0.0


def test_token_stats_match_the_training_encoder(tiny_tokenizer):
    records = [Record(f"Question number {i}?" * (i + 1), ["Step one?", "Step #1 two?"]) for i in range(10)]
    stats = token_stats(records, tiny_tokenizer, "tiny")
    lengths = sorted(len(encode_sample(tiny_tokenizer, r.question, r.sub_questions)) for r in records)
    assert stats.max == lengths[-1]
    assert stats.p50 == lengths[4]  # nearest rank: ceil(0.5 * 10) = 5th value
    assert stats.p99 == lengths[-1]
    assert stats.template == "plain"
    sample = encode_sample(tiny_tokenizer, "x?", ["Step one?", "Step #1 two?"])
    answer = len(sample.labels) - sample.prompt_len
    assert stats.mean_answer == pytest.approx(answer)
