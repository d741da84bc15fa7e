"""--dry-run: how many requests and about how many tokens a run would send, without sending any."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdtool.core.prompts import format_answer
from qdtool.core.synth.prompt import build_messages, demo_pool, estimate_message_tokens, estimate_tokens, select_demos
from qdtool.core.synth.run import pending, read_examples
from qdtool.core.synth.settings import SynthSettings
from qdtool.core.synth.writer import SynthOutput


@dataclass(frozen=True)
class SynthPlan:
    questions: int  # distinct questions in the input
    already_done: int  # in FILE.jsonl (or FILE.dropped.jsonl, without retry_dropped)
    to_ask: int  # questions this run would ask (after --limit)
    remote: bool  # a URL teacher (else a local model: generations, no requests)
    samples: int
    prompt_tokens: int  # estimated, one prompt per question (a request with n=samples)
    completion_tokens_max: int  # to_ask x samples x max_new_tokens
    completion_tokens_estimate: int  # to_ask x samples x the demonstrations' mean answer length (estimated); 0 without demos

    @property
    def requests(self) -> int:
        """Requests with n=samples in one request (a server that supports n)."""
        return self.to_ask

    @property
    def requests_without_n(self) -> int:
        """Requests when the server gives one reply per request (n unsupported): one per sample."""
        return self.to_ask * self.samples

    @property
    def prompt_tokens_without_n(self) -> int:
        return self.prompt_tokens * self.samples


def plan(questions: Sequence[dict[str, Any]], out: str | Path, settings: SynthSettings, *,
         examples: Sequence[Any] | str | Path | None = None) -> SynthPlan:
    """What `synth` with these arguments would ask; reads the output files (never writes them) and sends nothing.

    Raises:
        UsageError: an invalid setting.
        DataError: an output file holds something other than synth's records; --examples is invalid.
    """
    settings.check()
    output = SynthOutput(out, readonly=True)
    todo, already, _ = pending(questions, output.done_keys(retry_dropped=settings.retry_dropped))
    total = len(todo) + already
    todo = todo[: settings.limit]
    pool = demo_pool(read_examples(examples)) if settings.shots else {}
    prompt_tokens, answer_tokens = 0, 0
    for _, row in todo:
        demos = select_demos(row["question"], pool, settings.shots)
        prompt_tokens += estimate_message_tokens(build_messages(row["question"], demos))
        if demos:
            answer_tokens += round(sum(estimate_tokens(format_answer(steps)) for _, steps in demos) / len(demos))
    n = settings.samples
    return SynthPlan(total, already, len(todo), settings.remote, n, prompt_tokens, len(todo) * n * settings.max_new_tokens,
                     answer_tokens * n)
