"""Eval SARI: at each evaluation the live model decodes a fixed subset of the eval records.

The subset is drawn once, with the run's seed, from the eval split (the held-out records or
--eval-data), so every evaluation of a run, resumed or not, scores the same questions. Decoding
goes through `decompose` (greedy, batched, the run's prompt options and the step cap that
`decompose` gives the finished run), and SARI is `qdtool eval`'s: the mean of each example's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from qdtool.config import TrainConfig
from qdtool.errors import DataError, TrainingError


def settings(config: TrainConfig) -> Any:
    """decompose's defaults (greedy, its guards), with the run's batch size and token limit for eval decoding."""
    from qdtool.core.generation import GenerationSettings

    return GenerationSettings(batch_size=config.eval_decode_batch, max_new_tokens=config.eval_decode_max_new_tokens)


def choose_rows(records: Sequence[Any], config: TrainConfig, tokenizer: Any, model: Any, warn: Any) -> list[dict[str, Any]]:
    """The eval records to decode: `eval_decode_records` of those whose prompt fits, drawn with the seed, in file order.

    Raises:
        DataError: select_by sari, and no eval record's prompt fits (`decompose` would refuse them all).
    """
    from qdtool.core.generation import prompt_limit
    from qdtool.core.prompts import encode_prompt

    if config.eval_decode_records == 0:
        return []
    limit, _ = prompt_limit(model, settings(config))
    options = config.prompt_options()
    fits = [r for r in records if len(encode_prompt(tokenizer, r.question, options)) <= limit]
    if len(fits) < len(records):
        message = (f"{len(records) - len(fits)} of {len(records)} eval records have a prompt over the {limit:,} tokens that decoding "
                   f"leaves room for (--eval-decode-max-new-tokens {config.eval_decode_max_new_tokens}); eval SARI leaves them out")
        if not fits and config.select_by == "sari":
            raise DataError(f"{message}, and none is left to select the adapter by: shorten them, or pass --select-by eval_loss")
        warn(message)
    chosen = sorted(random.Random(config.seed).sample(range(len(fits)), min(config.eval_decode_records, len(fits))))
    return [{"question": fits[i].question, "sub_questions": list(fits[i].sub_questions)} for i in chosen]


def eval_sari(run: Any, step: int) -> float | None:
    """Corpus SARI of the decoded subset after `step` steps (each process decodes its share); None when nothing is decoded."""
    import torch

    from qdtool.core.evaluation import score_example
    from qdtool.core.generation import Decomposer, decompose

    if not run.decode_rows:
        return None
    share = [row for row, _ in run.dist.share(run.decode_rows)]
    decomposer = Decomposer(run.model, run.tokenizer, run.config.prompt_options(), "training", longest_trained=run.longest_trained)
    run.model.eval()  # no dropout; greedy decoding draws no random numbers, so the training curve is unchanged
    try:
        # without autocast, as `qdtool eval` decodes the finished run
        with torch.no_grad(), _contiguous_head_input(run.model):
            results = decompose(decomposer, share, settings(run.config))
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(f"out of GPU memory while decoding the eval subset at step {step}: lower --eval-decode-batch "
                            f"(now {run.config.eval_decode_batch}), or pass --eval-decode-records 0") from exc
    finally:
        run.model.train()
    total = sum(score_example(row, result.to_dict()).sari for row, result in zip(share, results, strict=True))
    total, count = run.dist.sum([total, float(len(share))])
    return total / count


@contextmanager
def _contiguous_head_input(model: Any) -> Iterator[None]:
    """A contiguous input for the LM head while decoding, as `load_decomposer` gives its models for good
    (generation.py says why: a strided input is ~500x slower on a CPU in bf16); removed after, so training
    runs as it did."""
    def contiguous(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        return (args[0].contiguous(), *args[1:]) if args and hasattr(args[0], "contiguous") else None

    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(contiguous) if head is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
