"""core/batching.py + core/loss.py: packing changes nothing about each sample's loss."""

from __future__ import annotations

import pytest
import torch

from qdtool.core.batching import BatchPlan, encode_records, make_batches, pack, pad_batches, split_eval
from qdtool.core.data import Record
from qdtool.core.loss import answer_loss_sum, per_sample_losses
from qdtool.core.prompts import IGNORE_INDEX, EncodedSample, encode_sample
from qdtool.errors import DataError

from conftest import build_tiny_model

RECORDS = [
    Record("Was Aristotle alive when the laptop was invented?",
           ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"]),
    Record("세종대왕이 태어났을 때 조선은 건국된 지 100년이 넘었는가?",
           ["세종대왕은 몇 년에 태어났는가?", "조선은 몇 년에 건국되었는가?", "#1에서 #2를 뺀 값은 100보다 큰가?"]),
    Record("Could a llama birth twice during the War in Vietnam?",
           ["How long was the Vietnam war?", "How long is a llama's gestation?", "Is #2 times 2 less than #1?"]),
]


@pytest.fixture(scope="module")
def model_and_samples(tiny_tokenizer):
    model = build_tiny_model(len(tiny_tokenizer), seed=1).float().eval()
    samples = [encode_sample(tiny_tokenizer, r.question, r.sub_questions) for r in RECORDS]
    return model, samples


def test_packed_losses_equal_one_by_one(model_and_samples):
    model, samples = model_and_samples
    (packed,) = pack(samples, batch_tokens=10_000)
    assert packed.n_samples == 3
    with torch.no_grad():
        together = per_sample_losses(model, packed.to_tensors("cpu"))
        alone = [per_sample_losses(model, pack([s], 10_000)[0].to_tensors("cpu"))[0] for s in samples]
    torch.testing.assert_close(torch.tensor(together), torch.tensor(alone), rtol=0, atol=1e-5)


def test_without_restarting_positions_samples_would_leak(model_and_samples):
    """The control: the same row with positions 0..N (one long sequence) changes the later samples'
    losses, so the equality above really comes from the restarting positions."""
    from qdtool.core.loss import token_losses

    model, samples = model_and_samples
    (packed,) = pack(samples, batch_tokens=10_000)
    batch = packed.to_tensors("cpu")
    segment = (batch["position_ids"] == 0).long().cumsum(-1)[:, 1:]
    leaky = {**batch, "position_ids": torch.arange(batch["input_ids"].shape[1])[None]}
    with torch.no_grad():
        losses, mask = token_losses(model, leaky)
        alone = [per_sample_losses(model, pack([s], 10_000)[0].to_tensors("cpu"))[0] for s in samples]
    ids = segment[mask]
    leaked = [float(losses[ids == k].mean()) for k in (1, 2, 3)]
    assert abs(leaked[0] - alone[0]) < 1e-5  # causal: the first sample sees nothing else
    assert abs(leaked[1] - alone[1]) > 1e-3 and abs(leaked[2] - alone[2]) > 1e-3


def test_padded_batches_give_the_same_losses(model_and_samples):
    model, samples = model_and_samples
    (padded,) = pad_batches(samples, batch_size=3, pad_id=0)
    with torch.no_grad():
        got = per_sample_losses(model, padded.to_tensors("cpu"))
        alone = [per_sample_losses(model, pack([s], 10_000)[0].to_tensors("cpu"))[0] for s in samples]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(alone), rtol=0, atol=1e-5)


def test_loss_counts_answer_tokens_only(model_and_samples):
    model, samples = model_and_samples
    (packed,) = pack(samples, batch_tokens=10_000)
    answer_tokens = sum(sum(1 for x in s.labels if x != IGNORE_INDEX) for s in samples)
    assert packed.supervised_tokens == answer_tokens
    with torch.no_grad():
        total, count = answer_loss_sum(model, packed.to_tensors("cpu"))
    assert count == answer_tokens
    # reference: full logits, standard shifted cross-entropy over the answer positions
    batch = packed.to_tensors("cpu")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    reference = torch.nn.functional.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(total, reference, rtol=1e-5, atol=1e-4)


def test_pack_respects_the_row_bound(model_and_samples):
    _, samples = model_and_samples
    longest = max(len(s) for s in samples)
    rows = pack(samples * 5, batch_tokens=longest * 2)
    assert all(len(r.input_ids[0]) <= longest * 2 for r in rows)
    assert sum(r.n_samples for r in rows) == 15


def test_rows_padded_to_a_multiple_change_no_sample_loss(model_and_samples):
    model, samples = model_and_samples
    (plain,) = pack(samples, batch_tokens=10_000)
    (padded,) = pack(samples, batch_tokens=10_000, pad_id=0, multiple=64)
    length = len(plain.input_ids[0])
    assert len(padded.input_ids[0]) == -(-length // 64) * 64 > length
    assert padded.padding == len(padded.input_ids[0]) - length
    assert (padded.tokens, padded.supervised_tokens, padded.n_samples) == (plain.tokens, plain.supervised_tokens, 3)
    with torch.no_grad():
        got = per_sample_losses(model, padded.to_tensors("cpu"))
        want = per_sample_losses(model, plain.to_tensors("cpu"))
        total, count = answer_loss_sum(model, padded.to_tensors("cpu"))
        reference, reference_count = answer_loss_sum(model, plain.to_tensors("cpu"))
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-5)
    assert count == reference_count
    torch.testing.assert_close(total, reference, rtol=1e-5, atol=1e-4)


def test_padding_never_takes_a_row_past_its_bound(model_and_samples):
    _, samples = model_and_samples
    bound = sum(len(s) for s in samples[:2]) + 5  # not a multiple of 64
    rows = pack(samples, batch_tokens=bound, multiple=64)
    assert all(len(r.input_ids[0]) <= bound for r in rows)
    assert len({len(r.input_ids[0]) for r in make_batches(samples * 7, True, 256, 1, 0)}) <= 256 // 64


def test_overlong_drop_truncate_error(tiny_tokenizer):
    lengths = [len(encode_sample(tiny_tokenizer, r.question, r.sub_questions)) for r in RECORDS]
    limit = sorted(lengths)[1]  # one sample is longer
    dropped = encode_records(RECORDS, tiny_tokenizer, limit, "drop")
    assert (len(dropped.samples), dropped.dropped, dropped.truncated) == (2, 1, 0)
    truncated = encode_records(RECORDS, tiny_tokenizer, limit, "truncate")
    assert (len(truncated.samples), truncated.truncated) == (3, 1)
    assert max(len(s) for s in truncated.samples) == limit
    with pytest.raises(DataError, match="longer than max_seq_len"):
        encode_records(RECORDS, tiny_tokenizer, limit, "error")
    with pytest.raises(DataError, match="no sample fits"):
        encode_records(RECORDS, tiny_tokenizer, 5, "drop")


def test_split_is_seeded_and_bounded():
    records = [Record(f"Q{i}?", ["a?", "b?"]) for i in range(100)]
    train, held = split_eval(records, 0.05, 200, seed=3)
    assert len(held) == 5 and len(train) == 95
    assert [r.question for r in held] == [r.question for r in split_eval(records, 0.05, 200, seed=3)[1]]
    assert split_eval(records, 0.3, 10, seed=3)[1].__len__() == 10


def test_batch_stream_resumes_at_any_step(model_and_samples):
    _, samples = model_and_samples
    plan = BatchPlan(samples * 4, seed=7, packing=True, batch_tokens=max(len(s) for s in samples) * 2, batch_size=2, pad_id=0, grad_accum=2)
    full = [(s, [mb.input_ids for mb in micro]) for s, _, micro in _take(plan.steps(0), 10)]
    resumed = [(s, [mb.input_ids for mb in micro]) for s, _, micro in _take(plan.steps(4), 6)]
    assert resumed == full[4:]


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_stream_is_exact_when_epochs_pack_to_different_row_counts():
    """Greedy packing gives each epoch its own number of rows; no step may be empty, lost or doubled."""
    import random as _random

    rng = _random.Random(0)
    samples = [EncodedSample([1] * n, [IGNORE_INDEX] + [5] * (n - 1)) for n in (rng.randint(20, 120) for _ in range(200))]
    plan = BatchPlan(samples, seed=3, packing=True, batch_tokens=400, batch_size=1, pad_id=0, grad_accum=3)
    counts = [plan.steps_in_epoch(e) for e in range(5)]
    assert len(set(len(plan.epoch(e)) for e in range(5))) > 1  # the case that matters
    full = _take(plan.steps(0), sum(counts))
    assert all(micro for _, _, micro in full)
    for e in range(5):  # every row of every epoch exactly once, in order
        start = sum(counts[:e])
        rows = [mb.input_ids for _, _, micro in full[start : start + counts[e]] for mb in micro]
        assert rows == [mb.input_ids for mb in plan.epoch(e)]
    for k in (1, counts[0] - 1, counts[0], counts[0] + 1, sum(counts[:3]) + 2):
        resumed = _take(plan.steps(k), 5)
        assert [(s, [mb.input_ids for mb in m]) for s, _, m in resumed] == [(s, [mb.input_ids for mb in m]) for s, _, m in full[k : k + 5]]
    assert plan.total_steps(2) == counts[0] + counts[1]
    assert plan.total_steps(1.5) == counts[0] + -(-counts[1] // 2)
