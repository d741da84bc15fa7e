"""From records to micro-batches: encode, handle over-long samples, split, pack.

Packing puts several samples in one row with `position_ids` restarting at 0 for each sample and
no attention mask. transformers then builds a block-diagonal causal mask from the position ids,
so samples do not attend to each other, provided no KV cache is built (`use_cache=False`).
Rows are bounded by `batch_tokens`, which bounds the dense mask SDPA materializes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qdtool.core.data import Record
from qdtool.core.prompts import IGNORE_INDEX, EncodedSample, PromptOptions, encode_sample
from qdtool.errors import DataError


@dataclass
class EncodedSet:
    samples: list[EncodedSample]
    dropped: int = 0  # over max_seq_len and dropped
    truncated: int = 0  # over max_seq_len and cut to it
    examples_of_overlong: list[str] = field(default_factory=list)


def encode_records(
    records: Sequence[Record],
    tokenizer: Any,
    max_seq_len: int,
    overlong: Literal["drop", "truncate", "error"] = "drop",
    prompt: PromptOptions = PromptOptions(),
) -> EncodedSet:
    """Encode every record; over-long samples are dropped, truncated or refused, and counted."""
    result = EncodedSet([])
    for record in records:
        sample = encode_sample(tokenizer, record.question, record.sub_questions, prompt)
        if len(sample) <= max_seq_len:
            result.samples.append(sample)
            continue
        if len(result.examples_of_overlong) < 5:
            result.examples_of_overlong.append(f"{record.location or record.question[:40]} ({len(sample)} tokens)")
        if overlong == "drop":
            result.dropped += 1
        elif overlong == "truncate":
            labels = sample.labels[:max_seq_len]
            if all(x == IGNORE_INDEX for x in labels):
                result.dropped += 1  # nothing of the answer would be left to learn from
                continue
            result.truncated += 1
            result.samples.append(EncodedSample(sample.input_ids[:max_seq_len], labels))
        else:
            over = [s for s in result.examples_of_overlong]
            raise DataError(
                f"a sample is longer than max_seq_len={max_seq_len}: {over[-1]}. "
                "Raise --max-seq-len, or pass --overlong drop|truncate."
            )
    if not result.samples:
        raise DataError(f"no sample fits max_seq_len={max_seq_len} ({result.dropped} dropped); raise --max-seq-len")
    return result


def split_eval(records: Sequence[Record], share: float, max_records: int, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded hold-out: (train, eval), eval = share of the records, at least 1, at most max_records."""
    if len(records) < 2:
        raise DataError("need at least 2 records to hold some out for evaluation; pass --eval-data")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = min(max_records, max(1, round(len(records) * share)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


@dataclass(frozen=True)
class MicroBatch:
    """Tensors-to-be for one forward pass (plain lists; `to_tensors` makes them torch)."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    position_ids: list[list[int]] | None  # packed rows
    attention_mask: list[list[int]] | None  # padded rows
    n_samples: int
    padding: int = 0  # pad tokens at the end of packed rows (ROW_MULTIPLE)

    @property
    def supervised_tokens(self) -> int:
        return sum(1 for row in self.labels for x in row[1:] if x != IGNORE_INDEX)

    @property
    def tokens(self) -> int:
        if self.attention_mask is not None:
            return sum(sum(row) for row in self.attention_mask)
        return sum(len(row) for row in self.input_ids) - self.padding

    def to_tensors(self, device: Any) -> dict[str, Any]:
        import torch

        out = {
            "input_ids": torch.tensor(self.input_ids, dtype=torch.long, device=device),
            "labels": torch.tensor(self.labels, dtype=torch.long, device=device),
        }
        if self.position_ids is not None:
            out["position_ids"] = torch.tensor(self.position_ids, dtype=torch.long, device=device)
        if self.attention_mask is not None:
            out["attention_mask"] = torch.tensor(self.attention_mask, dtype=torch.long, device=device)
        return out


# Packed rows are padded up to a multiple of this many tokens. Each new row length costs memory for
# good: oneDNN and the CPU allocator keep per-shape buffers, and resident memory climbed ~50 MB a step
# with free row lengths (flat with a fixed one; docs/benchmarks.md). 64 bounds the lengths to
# batch_tokens / 64 and pads ~3% of tokens.
ROW_MULTIPLE = 64


def pack(samples: Sequence[EncodedSample], batch_tokens: int, pad_id: int = 0, multiple: int = 1) -> list[MicroBatch]:
    """Greedy packing in the given order: a new row starts when the next sample would not fit.

    Each sample's labels are shifted-ready: the first label of every sample is IGNORE_INDEX in the
    packed row, so no position predicts across a sample boundary. A row is then padded up to a
    multiple of `multiple` tokens (at most `batch_tokens`) with one more segment of `pad_id`s that
    carries no label: its positions restart at 0, so no sample attends to it.
    """
    batches: list[MicroBatch] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    count = 0

    def close_row() -> None:
        padding = min(batch_tokens, -(-len(ids) // multiple) * multiple) - len(ids)
        row = ids + [pad_id] * padding, labels + [IGNORE_INDEX] * padding, positions + list(range(padding))
        batches.append(MicroBatch([row[0]], [row[1]], [row[2]], None, count, padding))

    for sample in samples:
        if ids and len(ids) + len(sample) > batch_tokens:
            close_row()
            ids, labels, positions, count = [], [], [], 0
        ids += sample.input_ids
        labels += [IGNORE_INDEX] + sample.labels[1:]  # the token before a sample belongs to another one
        positions += list(range(len(sample)))
        count += 1
    if ids:
        close_row()
    return batches


def pad_batches(samples: Sequence[EncodedSample], batch_size: int, pad_id: int) -> list[MicroBatch]:
    """Dynamic padding (right side) to the longest sample of each micro-batch."""
    batches = []
    for start in range(0, len(samples), batch_size):
        group = samples[start : start + batch_size]
        width = max(len(s) for s in group)
        batches.append(
            MicroBatch(
                [s.input_ids + [pad_id] * (width - len(s)) for s in group],
                [s.labels + [IGNORE_INDEX] * (width - len(s)) for s in group],
                None,
                [[1] * len(s) + [0] * (width - len(s)) for s in group],
                len(group),
            )
        )
    return batches


def make_batches(samples: Sequence[EncodedSample], packing: bool, batch_tokens: int, batch_size: int, pad_id: int) -> list[MicroBatch]:
    """Packed rows of at most `batch_tokens`, or padded batches of `batch_size` samples."""
    return pack(samples, batch_tokens, pad_id, ROW_MULTIPLE) if packing else pad_batches(samples, batch_size, pad_id)


class BatchPlan:
    """The deterministic stream of micro-batches: epoch e uses the samples shuffled with seed + e.

    With packing, the number of rows (so of steps) differs from epoch to epoch; step counts are
    computed per epoch and cached, so any step maps to one (epoch, offset) and a resumed run sees
    exactly the micro-batches an uninterrupted one would.
    """

    def __init__(self, samples: list[EncodedSample], seed: int, packing: bool, batch_tokens: int, batch_size: int,
                 pad_id: int, grad_accum: int) -> None:
        self.samples, self.seed, self.packing = samples, seed, packing
        self.batch_tokens, self.batch_size, self.pad_id, self.grad_accum = batch_tokens, batch_size, pad_id, grad_accum
        self._steps: dict[int, int] = {}
        self._cached: tuple[int, list[MicroBatch]] | None = None

    def epoch(self, index: int) -> list[MicroBatch]:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        order = list(range(len(self.samples)))
        random.Random(self.seed + index).shuffle(order)
        ordered = [self.samples[i] for i in order]
        batches = make_batches(ordered, self.packing, self.batch_tokens, self.batch_size, self.pad_id)
        self._cached = (index, batches)
        self._steps[index] = math.ceil(len(batches) / self.grad_accum)
        return batches

    def steps_in_epoch(self, index: int) -> int:
        if index not in self._steps:
            self.epoch(index)
        return self._steps[index]

    def total_steps(self, epochs: float) -> int:
        """Optimizer steps in `epochs` passes (a fractional last epoch is rounded up)."""
        whole = int(epochs)
        total = sum(self.steps_in_epoch(e) for e in range(whole))
        if epochs > whole:
            total += math.ceil((epochs - whole) * self.steps_in_epoch(whole))
        return max(1, total)

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step offset inside that epoch) of a global step."""
        epoch = 0
        while step >= self.steps_in_epoch(epoch):
            step -= self.steps_in_epoch(epoch)
            epoch += 1
        return epoch, step

    def steps(self, start_step: int = 0):
        """Yield (step, epoch progress, [micro-batches]) from `start_step` on, forever; the caller stops."""
        epoch, offset = self.locate(start_step)
        step = start_step
        while True:
            batches = self.epoch(epoch)
            per_epoch = self.steps_in_epoch(epoch)
            for index in range(offset, per_epoch):
                micro = batches[index * self.grad_accum : (index + 1) * self.grad_accum]
                yield step, epoch + (index + 1) / per_epoch, micro
                step += 1
            epoch, offset = epoch + 1, 0
