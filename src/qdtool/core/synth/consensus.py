"""Which of a teacher's candidate decompositions to keep: only valid ones, the one the others agree with most.

A candidate is valid when it passes validate-data's own checks (`data.check_record`: a non-empty
list of non-blank steps, `#k` only to earlier steps, no step equal to the question), has at most
`max_steps` steps, and asks nothing twice (validate-data warns of a repeated step; in a teacher's
answer it means the teacher looped, so such a candidate is not kept: `prompts.first_repeat`).
Among the valid ones, each is scored by its mean SARI (`metrics.sari`, the question as the source)
against every other valid candidate as the reference; the highest wins (the first on a tie), and
that mean is the question's agreement.

One valid candidate has nothing to agree with: with one sample asked for (`samples == 1`) its
agreement is 1.0 by definition (no consensus was asked for); when more were asked for and the rest
failed, the agreement is undefined (None) and the question is dropped (`single_valid`), since a
teacher that mostly fails on a question is a poor witness for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from qdtool.core.data import check_record
from qdtool.core.metrics import join_steps, sari
from qdtool.core.prompts import first_repeat

# Why a question is dropped (the "reason" of FILE.dropped.jsonl).
NO_VALID = "no_valid_candidate"
SINGLE_VALID = "single_valid"
LOW_AGREEMENT = "low_agreement"
REFUSED = "teacher_refused"  # the teacher answered this question with a 4xx (asking again gives the same)
TOO_LONG = "prompt_too_long"  # a local teacher's prompt is over its limit


@dataclass(frozen=True)
class Candidate:
    raw: str  # the teacher's text as it came
    sub_questions: list[str]  # parsed from it
    problems: list[str] = field(default_factory=list)  # why it is not valid; empty: valid

    @property
    def valid(self) -> bool:
        return not self.problems


def check_candidate(question: str, raw: str, sub_questions: Sequence[str], max_steps: int = 0) -> Candidate:
    """A parsed reply with the validate-data errors it has (`max_steps` 0: any number of steps)."""
    steps = list(sub_questions)
    if not steps:
        return Candidate(raw, steps, ["no numbered steps in the reply"])
    if 0 < max_steps < len(steps):
        return Candidate(raw, steps, [f"{len(steps)} steps, more than the {max_steps} allowed (--max-steps)"])
    _, problems = check_record({"question": question, "sub_questions": steps}, "candidate")
    found = [p.message for p in problems if p.severity == "error"]
    repeat = first_repeat(steps)
    if repeat is not None:
        found.append(f"step {repeat + 1} repeats an earlier step")
    return Candidate(raw, steps, found)


def agreement_scores(question: str, candidates: Sequence[Sequence[str]]) -> list[float]:
    """Each candidate's mean SARI against all the others (as references). Needs two or more candidates."""
    if len(candidates) < 2:
        raise ValueError("agreement needs two or more candidates")
    texts = [join_steps(c) for c in candidates]
    scores = []
    for i, prediction in enumerate(texts):
        others = [sari(question, prediction, reference).sari for j, reference in enumerate(texts) if j != i]
        scores.append(sum(others) / len(others))
    return scores


@dataclass(frozen=True)
class Verdict:
    kept: bool
    sub_questions: list[str]  # the chosen candidate's ([] when none is)
    agreement: float | None  # the chosen one's mean SARI against the other valid ones (see the module docstring)
    valid: int  # valid candidates
    reason: str | None = None  # why dropped (None when kept)
    detail: str = ""


def judge(question: str, candidates: Sequence[Candidate], samples: int, min_agreement: float = 0.0) -> Verdict:
    """Keep or drop a question given its candidates (see the module docstring for the rules)."""
    valid = [c for c in candidates if c.valid]
    if not valid:
        first = next((c.problems[0] for c in candidates if c.problems), "no reply")
        return Verdict(False, [], None, 0, NO_VALID, f"none of {len(candidates)} candidate(s) is valid (first: {first})")
    if len(valid) == 1:
        if samples == 1:
            return Verdict(True, valid[0].sub_questions, 1.0, 1)
        return Verdict(False, valid[0].sub_questions, None, 1, SINGLE_VALID,
                       f"only 1 of {len(candidates)} candidates is valid: nothing to agree with")
    scores = agreement_scores(question, [c.sub_questions for c in valid])
    best = max(range(len(valid)), key=lambda i: (scores[i], -i))
    agreement = scores[best]
    if agreement < min_agreement:
        return Verdict(False, valid[best].sub_questions, agreement, len(valid), LOW_AGREEMENT,
                       f"agreement {agreement:.3f} is below --min-agreement {min_agreement}")
    return Verdict(True, valid[best].sub_questions, agreement, len(valid))
