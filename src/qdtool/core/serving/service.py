"""The decomposer behind the HTTP routes: settings, question checks, the batcher, and waiting for answers.

Every question is token-counted with the one prompt renderer before it is queued, so a question
over the limit gets its own 400 and never reaches a batch. Counting uses a copy of the tokenizer in
a thread of its own: the model thread's tokenizer is never touched from two threads at once.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from qdtool.core.generation import Decomposer, Decomposition, GenerationSettings, prompt_limit
from qdtool.core.prompts import encode_prompt
from qdtool.core.serving.batcher import Batcher, Outcome, Overloaded, RunBatch, Stopped
from qdtool.core.serving.requests import ApiError
from qdtool.errors import QdtoolError, UsageError


@dataclass(frozen=True)
class ServeSettings:
    """How `qdtool serve` answers: limits, batching, the API key, decoding."""

    model_name: str = "qdtool"  # the model id /v1/models lists and replies carry
    api_key: str | None = None  # every /v1 request must send `Authorization: Bearer KEY`; None: no key asked
    max_batch: int = 16  # sequences decoded together at most (questions x consensus samples)
    max_batch_tokens: int = 8192  # padded prompt tokens per batch at most (longest prompt x sequences)
    max_wait_ms: float = 10.0  # ms a batch waits for more questions after its first one
    max_questions: int = 64  # questions per /v1/decompose request at most
    max_body_bytes: int = 1_048_576  # bytes per request body at most
    max_queue: int = 1024  # questions waiting at most; past that a request gets 503 and Retry-After
    generation: GenerationSettings = field(default_factory=GenerationSettings)


def default_model_name(spec: str) -> str:
    """The id to serve a model spec under: a directory's name (`RUN/merged` -> `RUN/merged`), else the spec."""
    path = Path(spec)
    if not path.is_dir():
        return spec
    path = path.resolve()
    return f"{path.parent.name}/{path.name}" if path.name in ("merged", "adapter") else path.name


@dataclass
class Decoded:
    """The answers to one request's questions, in order."""

    results: list[Decomposition]
    prompt_tokens: int  # all questions' prompts
    batch_size: int  # questions in the largest batch these questions were decoded in


class Service:
    """Checks questions, queues them on the batcher and waits for their answers (or for the client to leave)."""

    def __init__(self, decomposer: Decomposer, settings: ServeSettings, run: RunBatch | None = None) -> None:
        self.settings = settings
        self.started = int(time.time())
        self.limit, self.limit_why = prompt_limit(decomposer.model, settings.generation)
        if self.limit < 1:
            raise UsageError(f"--max-new-tokens {settings.generation.max_new_tokens} leaves no room for a prompt ({self.limit_why}); "
                             "lower --max-new-tokens")
        self._tokenizer = copy.deepcopy(decomposer.tokenizer)
        self._options = decomposer.prompt_options
        self._counter: ThreadPoolExecutor | None = None
        batch_settings = replace(settings.generation, batch_size=settings.max_batch)  # one generate() per batch
        self.batcher = Batcher(run or partial(_decode_rows, decomposer, batch_settings), max_batch=settings.max_batch,
                               max_batch_tokens=settings.max_batch_tokens, max_wait_s=settings.max_wait_ms / 1000,
                               max_queue=settings.max_queue, samples=settings.generation.num_return_sequences)

    async def start(self) -> None:
        self._counter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdtool-tokenize")
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        if self._counter is not None:
            self._counter.shutdown(wait=True)

    async def decompose(self, request: Any, questions: Sequence[str], place: Callable[[int], str], param: str) -> Decoded:
        """Decode `questions` (checked first; `place(i)` names question i in messages, `param` the field they came in).

        Raises:
            ApiError: 400 for an empty question or one over the prompt limit (every such question
                named), 503 when the queue is full or the server stops, 500 when decoding fails.
        """
        tokens = await self._count(questions, place, param)
        try:
            futures = self.batcher.submit([{"question": q} for q in questions], tokens)
        except Overloaded as exc:
            raise ApiError(503, f"the server is busy: {exc}; retry in a moment", "server_error", code="overloaded",
                           headers={"Retry-After": "1"}) from None
        except Stopped as exc:
            raise _decoding_error(exc) from None
        outcomes = await _answers(request, futures)
        return Decoded([o.result for o in outcomes], sum(tokens), max(o.batch_size for o in outcomes))

    async def count_text(self, text: str) -> int:
        """Tokens of a generated reply (for `usage`), counted off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._counter, lambda: len(self._tokenizer.encode(text, add_special_tokens=False)))

    async def _count(self, questions: Sequence[str], place: Callable[[int], str], param: str) -> list[int]:
        loop = asyncio.get_running_loop()
        try:
            tokens = await loop.run_in_executor(self._counter, self._prompt_lengths, list(questions))
        except Exception as exc:  # text the tokenizer or the chat template cannot take is the request's fault
            raise ApiError(400, f"a question cannot be tokenized: {type(exc).__name__}: {exc}", param=param,
                           code="invalid_question") from None
        empty = [f"{place(i)} is empty" for i, q in enumerate(questions) if not q.strip()]
        long = [f"{place(i)} is {n:,} prompt tokens" for i, n in enumerate(tokens) if n > self.limit]
        if empty or long:
            problems = empty + long
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            why = f". A prompt may take at most {self.limit:,} tokens ({self.limit_why})" if long else ""
            raise ApiError(400, f"{shown}{why}; nothing was decoded.", param=param, code="invalid_question")
        return tokens

    def _prompt_lengths(self, questions: list[str]) -> list[int]:
        return [len(encode_prompt(self._tokenizer, q, self._options)) if q.strip() else 0 for q in questions]


def _decode_rows(decomposer: Decomposer, settings: GenerationSettings, rows: list[dict[str, Any]]) -> list[Decomposition]:
    from qdtool.core import generation  # looked up at each call: generation.decompose is the one decoding path

    return generation.decompose(decomposer, rows, settings)


async def _answers(request: Any, futures: list[asyncio.Future]) -> list[Outcome]:
    """Every future's Outcome; if the client disconnects first, its questions are dropped from the queue."""
    gathered = asyncio.gather(*futures, return_exceptions=True)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({gathered, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not gathered.done():
        gathered.cancel()  # cancels the futures still queued: the batcher skips them
        gathered.add_done_callback(_retrieve)
        raise ApiError(499, "the client closed the request", code="client_closed")
    outcomes = gathered.result()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise _decoding_error(outcome)
    return outcomes


def _retrieve(future: asyncio.Future) -> None:
    """Read a cancelled gather's outcome, which nobody awaits (else asyncio logs "exception was never retrieved")."""
    if not future.cancelled():
        future.exception()


async def _disconnected(request: Any) -> None:
    """Return once the client has gone (the body is read by now: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # not a disconnect (a server may send an empty body part): ask again, without spinning


def _decoding_error(exc: BaseException) -> ApiError:
    if isinstance(exc, Stopped):
        return ApiError(503, str(exc), "server_error", code="shutting_down")
    if isinstance(exc, QdtoolError):
        return ApiError(400, str(exc), code="invalid_question")
    return ApiError(500, f"decoding failed: {type(exc).__name__}: {exc}", "server_error", code="decoding_failed")
