"""The two kinds of teacher behind one interface: `answers(jobs)` yields each job with its candidates.

A URL teacher (`RemoteTeacher`) asks an OpenAI-compatible endpoint from `workers` threads, one job
per worker in flight (so a kill loses few); a local one (`LocalTeacher`) runs our own
decompose engine, its questions grouped by their demonstrations (one prompt setting per group) and
sampled with num_return_sequences. A reply is a list of (raw text, parsed steps), or the exception
that stands for the question's failure (`Refused`, `RequestFailed`, `TooLong`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from qdtool.core.prompts import Language, parse_sub_questions
from qdtool.core.synth.prompt import Demo, build_messages
from qdtool.core.synth.remote import OpenAITeacher, Refused, RequestFailed, is_url, public_url


class TooLong(Exception):
    """A local teacher's prompt for this question is over its limit."""


Reply = list[tuple[str, list[str]]] | Refused | RequestFailed | TooLong


@dataclass(frozen=True)
class Job:
    index: int  # the question's place in the input (0-based)
    row: dict[str, Any]
    demos: list[Demo] = field(default_factory=list)


class RemoteTeacher:
    """An OpenAI-compatible endpoint, asked from a thread pool."""

    language: Language = "auto"
    instruction: str | None = None

    def __init__(self, client: OpenAITeacher, samples: int, workers: int) -> None:
        self.client, self.samples, self.workers = client, samples, workers
        self.name, self.model = client.url, client.model

    @property
    def requests(self) -> int:
        return self.client.counters.requests

    @property
    def retries(self) -> int:
        return self.client.counters.retries

    def _one(self, job: Job) -> tuple[Job, Reply]:
        messages = build_messages(job.row["question"], job.demos)
        try:
            texts = self.client.complete(messages, self.samples)
        except (Refused, RequestFailed) as exc:
            return job, exc
        return job, [(text, parse_sub_questions(text).sub_questions) for text in texts]

    def answers(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, Reply]]:
        """Each job with its reply, in the order they finish. A TeacherError from any worker ends the run.

        Each worker holds one job at a time, so at most `workers` questions are in flight. The workers
        are daemon threads: after Ctrl-C the process exits at once instead of waiting out the requests
        in flight (up to --timeout each), whose answers would be lost anyway.
        """
        todo: queue.SimpleQueue[Job] = queue.SimpleQueue()
        for job in jobs:
            todo.put(job)
        done: queue.SimpleQueue[tuple[tuple[Job, Reply] | None, BaseException | None]] = queue.SimpleQueue()

        def work() -> None:
            while not self.client.stop.is_set():
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((self._one(job), None))
                except BaseException as exc:  # TeacherError, or a bug: the main thread raises it
                    done.put((None, exc))
                    return

        for number in range(min(self.workers, len(jobs))):
            threading.Thread(target=work, name=f"qdtool-synth-{number}", daemon=True).start()
        try:
            for _ in range(len(jobs)):
                answer, error = done.get()
                if error is not None:
                    raise error
                yield answer
        finally:
            self.client.stop.set()  # workers take no new job and give up waiting to retry

    def close(self) -> None:
        self.client.close()


class LocalTeacher:
    """Our own decompose engine: a run dir, a merged dir, a hub id or 'embedded'."""

    def __init__(self, decomposer: Any, generation: Any, spec: str) -> None:
        self.decomposer, self.generation = decomposer, generation
        self.base = decomposer.prompt_options  # the run's own prompt settings (instruction, language)
        self.language, self.instruction = self.base.language, self.base.instruction
        self.name, self.model = spec, None
        self.requests = self.retries = 0

    def answers(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, Reply]]:
        """Each job with its num_return_sequences candidates, group by group (a group shares its demonstrations)."""
        from qdtool.core.generation import decompose_stream

        groups: dict[tuple[Any, ...], list[Job]] = {}
        for job in jobs:
            groups.setdefault(tuple((q, tuple(s)) for q, s in job.demos), []).append(job)
        for group in groups.values():
            self.decomposer.prompt_options = replace(self.base, shots=tuple(group[0].demos))
            fits, too_long = self._by_length(group)
            for job, why in too_long:
                yield job, TooLong(why)
            rows = [{"question": job.row["question"]} for job in fits]
            for job, result in zip(fits, decompose_stream(self.decomposer, rows, self.generation), strict=True):
                self.requests += 1
                samples = result.samples or [{"raw": result.raw, "sub_questions": result.sub_questions}]
                yield job, [(s["raw"], list(s["sub_questions"])) for s in samples]

    def _by_length(self, group: list[Job]) -> tuple[list[Job], list[tuple[Job, str]]]:
        """The jobs whose prompt (with the demonstrations) fits the model, and the others with why not."""
        from qdtool.core.generation import prompt_limit
        from qdtool.core.prompts import encode_prompt

        limit, why = prompt_limit(self.decomposer.model, self.generation)
        fits, too_long = [], []
        for job in group:
            tokens = len(encode_prompt(self.decomposer.tokenizer, job.row["question"], self.decomposer.prompt_options))
            if tokens > limit:
                too_long.append((job, f"the prompt with {len(job.demos)} demonstration(s) is {tokens:,} tokens, over {limit:,} ({why})"))
            else:
                fits.append(job)
        return fits, too_long

    def close(self) -> None:
        self.decomposer.prompt_options = self.base


def open_teacher(settings: Any, status: Callable[[str], None] | None = None) -> RemoteTeacher | LocalTeacher:
    """The teacher that `settings.teacher` names, checked (a URL answered once) or loaded (a local model).

    Raises:
        TeacherError: a URL teacher cannot be reached or used.
        UsageError, ModelError: a local model spec cannot be resolved or loaded.
    """
    if is_url(settings.teacher):
        client = OpenAITeacher(settings.teacher, settings.teacher_model, settings.api_key, timeout=settings.timeout,
                               retries=settings.retries, backoff_s=settings.backoff_s, max_tokens=settings.max_new_tokens,
                               temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed)
        if status:
            status(f"checking the teacher at {public_url(settings.teacher)}")
        try:
            client.check()
        except BaseException:
            client.close()
            raise
        return RemoteTeacher(client, settings.samples, settings.workers)
    from qdtool.core.generation import GenerationSettings, load_decomposer

    decomposer = load_decomposer(settings.teacher, device=settings.device, trust_remote_code=settings.trust_remote_code, progress=status)
    generation = GenerationSettings(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p,
                                    num_return_sequences=settings.samples, batch_size=settings.batch_size,
                                    max_sub_questions=settings.max_steps, seed=settings.seed)
    return LocalTeacher(decomposer, generation, settings.teacher)
