"""The run: skip what FILE.jsonl and FILE.dropped.jsonl hold, ask the teacher, judge, append.

Questions are matched across runs as `decompose --output` matches them (`results.result_key`: the
"id" when a row has one, else the exact text); a question given twice is asked once. A question
whose request failed after every retry is written nowhere, so the same command asks it again; ten
such failures in a row stop the run (the teacher is down, and every other question would wait out
its retries the same way).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdtool.core.results import result_key
from qdtool.core.synth.consensus import REFUSED, TOO_LONG, Candidate, Verdict, check_candidate, judge
from qdtool.core.synth.prompt import DemoPool, demo_pool, prompt_hash, select_demos
from qdtool.core.synth.remote import Refused, RequestFailed, TeacherError
from qdtool.core.synth.settings import SynthSettings
from qdtool.core.synth.teachers import Job, Reply, TooLong, open_teacher
from qdtool.core.synth.writer import SynthOutput

MAX_FAILURES_IN_A_ROW = 10
RAW_KEPT_CHARS = 500  # of each candidate's raw text in FILE.dropped.jsonl


@dataclass
class SynthProgress:
    done: int  # questions answered in this run (kept + dropped + failed)
    total: int  # questions to ask in this run
    kept: int = 0
    dropped: int = 0
    failed: int = 0


@dataclass
class SynthReport:
    out: Path
    dropped_out: Path
    questions: int  # distinct questions in the input
    already_done: int  # skipped: in FILE.jsonl, or in FILE.dropped.jsonl without retry_dropped
    asked: int = 0
    kept: int = 0
    dropped: int = 0
    failed: int = 0  # requests that failed after every retry; the same command asks them again
    reasons: Counter = field(default_factory=Counter)  # dropped, by reason
    failures: list[str] = field(default_factory=list)  # the first few failures' messages
    requests: int = 0  # HTTP requests (retries included), or generations of a local teacher
    retries: int = 0
    repaired: list[Path] = field(default_factory=list)  # files whose torn last line was repaired
    retried_dropped: int = 0  # dropped questions taken out of FILE.dropped.jsonl to be asked again
    teacher_model: str | None = None
    seconds: float = 0.0


def pending(questions: Sequence[dict[str, Any]], done: set[str]) -> tuple[list[tuple[int, dict[str, Any]]], int, int]:
    """The (index, row) pairs to ask, in input order; how many rows are done already, and how many repeat an earlier row."""
    todo, seen, already, repeats = [], set(), 0, 0
    for index, row in enumerate(questions):
        key = result_key(row)
        if key in done:
            already += 1
        elif key in seen:
            repeats += 1
        else:
            seen.add(key)
            todo.append((index, row))
    return todo, already, repeats


def synth(questions: Sequence[dict[str, Any]], out: str | Path, settings: SynthSettings, *, examples: Sequence[Any] | None = None,
          progress: Callable[[SynthProgress], None] | None = None, status: Callable[[str], None] | None = None) -> SynthReport:
    """Ask the teacher for each question not yet done, keep the consensus of its valid candidates, append as each is judged.

    Args:
        questions: rows with "question" (as `generation.read_questions` gives them); other fields are kept.
        examples: records the demonstrations come from (data.Record or dicts); None: the bundled examples.
        progress: called after each question with the counts so far.
        status: told what is loading or being checked before the run starts.

    Raises:
        UsageError: an invalid setting; an output file that cannot be written.
        DataError: an output file holds something other than synth's records.
        TeacherError: the teacher cannot be reached or used (the records written so far are kept).
    """
    settings.check()
    started = time.monotonic()
    with SynthOutput(out) as output:
        todo, already, _ = pending(questions, output.done_keys(retry_dropped=settings.retry_dropped))
        report = SynthReport(output.path, output.dropped.path, len(todo) + already, already, repaired=output.repaired)
        todo = todo[: settings.limit]
        if settings.retry_dropped:
            report.retried_dropped = output.forget_dropped({result_key(row) for _, row in todo})
        if not todo:
            return report
        pool = demo_pool(read_examples(examples)) if settings.shots else {}
        teacher = open_teacher(settings, status)
        report.teacher_model = teacher.model
        try:
            jobs = [Job(index, row, select_demos(row["question"], pool, settings.shots)) for index, row in todo]
            _ask(teacher, jobs, output, settings, report, progress)
        finally:
            teacher.close()
            report.requests, report.retries = teacher.requests, teacher.retries
            report.seconds = time.monotonic() - started
    return report


def _ask(teacher: Any, jobs: list[Job], output: SynthOutput, settings: SynthSettings, report: SynthReport,
         progress: Callable[[SynthProgress], None] | None) -> None:
    def tick() -> None:
        if progress:
            progress(SynthProgress(report.asked, len(jobs), report.kept, report.dropped, report.failed))

    tick()  # the total, before the first answer
    answers = teacher.answers(jobs)
    try:
        _judge_all(answers, teacher, output, settings, report, tick)
    finally:
        answers.close()  # a stopped run: the teacher's workers stop now, not when the generator is collected


def _judge_all(answers: Any, teacher: Any, output: SynthOutput, settings: SynthSettings, report: SynthReport,
               tick: Callable[[], Any]) -> None:
    in_a_row = 0
    for job, reply in answers:
        report.asked += 1
        if isinstance(reply, RequestFailed):
            report.failed += 1
            in_a_row += 1
            if len(report.failures) < 5:
                report.failures.append(f"question {job.index + 1}: {reply}")
            if in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise TeacherError(f"{in_a_row} questions in a row failed after {settings.retries} retries each (last: {reply}): "
                                   f"the teacher at {teacher.name} seems down; the same command continues where this one stopped")
        else:
            in_a_row = 0
            _record(job, reply, teacher, output, settings, report)
        tick()


def _record(job: Job, reply: Reply, teacher: Any, output: SynthOutput, settings: SynthSettings, report: SynthReport) -> None:
    """Judge one answered question and append it to FILE.jsonl or FILE.dropped.jsonl."""
    question = job.row["question"]
    if isinstance(reply, (Refused, TooLong)):
        candidates: list[Candidate] = []
        verdict = Verdict(False, [], None, 0, REFUSED if isinstance(reply, Refused) else TOO_LONG, str(reply))
    else:
        candidates = [check_candidate(question, raw, steps, settings.max_steps) for raw, steps in reply]
        verdict = judge(question, candidates, settings.samples, settings.min_agreement)
    extras = {k: v for k, v in job.row.items() if k not in ("question", "sub_questions", "synth")}
    provenance = {
        "teacher": teacher.name, "teacher_model": teacher.model,
        "prompt_hash": prompt_hash(question, job.demos, language=teacher.language, instruction=teacher.instruction),
        "shots": len(job.demos), "temperature": settings.temperature, "samples": settings.samples, "valid": verdict.valid,
        "agreement": None if verdict.agreement is None else round(verdict.agreement, 4),
        **({"seed": settings.seed} if settings.seed is not None else {}),
    }
    if verdict.kept:
        output.keep({**extras, "question": question, "sub_questions": verdict.sub_questions, "synth": provenance})
        report.kept += 1
        return
    shown = [{"sub_questions": c.sub_questions, "problems": c.problems, "raw": c.raw[:RAW_KEPT_CHARS]} for c in candidates]
    output.drop({**extras, "question": question, "reason": verdict.reason, "detail": verdict.detail,
                 "synth": {**provenance, "candidates": shown}})
    report.dropped += 1
    report.reasons[verdict.reason] += 1


def read_examples(examples: Sequence[Any] | str | Path | None) -> list[Any]:
    """The demonstration records: given ones, a dataset file (`data.read_dataset`), or None: the bundled examples."""
    from qdtool.core.data import read_dataset
    from qdtool.resources import default_train_files

    if examples is None:
        return [record for path in default_train_files() for record in read_dataset(path)]
    if isinstance(examples, (str, Path)):
        return read_dataset(examples)
    return list(examples)


__all__ = ["DemoPool", "SynthProgress", "SynthReport", "pending", "read_examples", "synth"]
