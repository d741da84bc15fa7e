"""Dynamic batching: questions that arrive together are decoded in one `decompose` call.

Requests put their questions on one queue (`submit`) and await a future per question. A single task
takes what arrived within `max_wait_s` of the first question (fewer when `max_batch` sequences or
`max_batch_tokens` padded prompt tokens are reached first; a question decodes `samples` sequences),
runs the batch in the one model thread and resolves the futures. While a batch decodes, new
questions queue up and form the next batch, which then starts without waiting. If a batch raises,
its questions are decoded one at a time, so only the question that fails gets the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RunBatch = Callable[[list[dict[str, Any]]], Sequence[Any]]  # rows -> one result per row, in order


class Overloaded(Exception):
    """More questions are waiting than the queue holds."""


class Stopped(Exception):
    """The batcher stopped before the question was decoded."""


@dataclass
class Outcome:
    """A decoded question: its result and how many questions its batch had."""

    result: Any
    batch_size: int


@dataclass
class BatchStats:
    batches: int = 0  # decode calls, retries of a failed batch's questions included
    questions: int = 0  # questions decoded (failed ones too)
    largest_batch: int = 0  # questions in the largest batch so far
    failed: int = 0  # questions whose decoding raised even alone
    decoding: int = 0  # questions in the batch being decoded now


@dataclass
class _Item:
    row: dict[str, Any]
    tokens: int  # prompt tokens
    future: asyncio.Future = field(repr=False)


class Batcher:
    """One queue of questions in front of one model thread.

    Args:
        run: decodes a list of rows ({"question": ...}) into one result per row; called in the
            model thread only, never twice at once (torch is not safe to call concurrently).
        max_batch: sequences per batch at most (questions x `samples`).
        max_batch_tokens: padded prompt tokens per batch at most (the longest prompt x sequences);
            a question alone always forms a batch.
        samples: the sequences each question decodes (--consensus N samples N): the caps count
            those, as the memory a batch takes grows with them.
        max_wait_s: how long a batch waits for more questions after its first one arrived.
        max_queue: questions waiting at most; `submit` raises Overloaded beyond it.
    """

    def __init__(self, run: RunBatch, *, max_batch: int = 16, max_batch_tokens: int = 8192, max_wait_s: float = 0.01,
                 max_queue: int = 1024, samples: int = 1) -> None:
        self._run = run
        self.max_batch, self.max_batch_tokens, self.max_wait_s, self.max_queue = max_batch, max_batch_tokens, max_wait_s, max_queue
        self.samples = samples
        self._questions = max(1, max_batch // samples)  # questions per batch at most
        self.stats = BatchStats()
        self._pending: deque[_Item] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdtool-model")
        self._task = asyncio.create_task(self._serve(), name="qdtool-batcher")

    async def stop(self) -> None:
        """Stop taking batches (call once the requests in flight are answered); anything still queued fails with Stopped."""
        self._arrived = None  # submit() refuses from now on
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(Stopped("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def submit(self, rows: Sequence[dict[str, Any]], tokens: Sequence[int]) -> list[asyncio.Future]:
        """Queue questions (all or none); one future per question, resolving to an Outcome."""
        if self._arrived is None:
            raise Stopped("the batcher is not running")
        if len(self._pending) + len(rows) > self.max_queue:
            raise Overloaded(f"{len(self._pending)} questions are waiting (at most {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = []
        for row, count in zip(rows, tokens, strict=True):
            future = loop.create_future()
            self._pending.append(_Item(row, count, future))
            futures.append(future)
        self._arrived.set()
        return futures

    async def _serve(self) -> None:
        while True:
            batch = await self._take()
            if not batch:
                continue
            try:
                await self._decode(batch)
            except Exception as exc:  # a bug here must not stop the server: fail this batch, go on
                log.exception("batch of %d failed outside decoding", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    async def _take(self) -> list[_Item]:
        """The next batch: wait for a first question, then up to max_wait_s for more, then take what fits."""
        assert self._arrived is not None
        while not self._live():
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(self._pending) < self._questions and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch: list[_Item] = []
        longest = 0
        while self._live() and len(batch) < self._questions:  # _live drops the questions whose client went away
            longest = max(longest, self._pending[0].tokens)
            if batch and longest * (len(batch) + 1) * self.samples > self.max_batch_tokens:
                break
            batch.append(self._pending.popleft())
        return batch

    def _live(self) -> bool:
        """Whether a question is waiting whose client still waits for it (dropping those that left)."""
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
        return bool(self._pending)

    async def _decode(self, batch: list[_Item]) -> None:
        """Decode a batch and resolve its futures; if it raises, decode its questions one at a time."""
        try:
            results = await self._call(batch)
        except Exception as exc:
            if len(batch) == 1:
                self.stats.failed += 1
                log.error("decoding a question failed", exc_info=True)
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            log.warning("a batch of %d questions failed; decoding them one at a time", len(batch))
            for item in batch:
                if not item.future.done():
                    await self._decode([item])
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(Outcome(result, len(batch)))

    async def _call(self, batch: list[_Item]) -> Sequence[Any]:
        loop = asyncio.get_running_loop()
        self.stats.batches += 1
        self.stats.questions += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.decoding = len(batch)
        try:
            results = await loop.run_in_executor(self._executor, self._run, [item.row for item in batch])
        finally:
            self.stats.decoding = 0
        if len(results) != len(batch):
            raise RuntimeError(f"decoding returned {len(results)} results for {len(batch)} questions")
        return results
