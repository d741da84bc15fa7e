"""Consensus of several sampled decompositions: which candidates are valid, and which one the others agree with most.

A candidate is valid when it passes validate-data's own checks (`data.check_record`: a non-empty
list of non-blank steps, `#k` only to earlier steps, no step equal to the question), has at most
`max_steps` steps, and asks nothing twice (validate-data warns of a repeated step; in a sample it
means the model looped: `prompts.first_repeat`). Among the valid ones, each is scored by its mean
SARI (`metrics.sari`, the question as the source) against every other valid candidate as the
reference; the highest wins (the first on a tie).

`synth` keeps or drops a question by these rules (core/synth/consensus.py); `decompose` and `eval`
with `--consensus N` return the winner of N samples (`choose`), a minimum-Bayes-risk decoding
with SARI as the utility.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from qdtool.core.data import check_record
from qdtool.core.metrics import join_steps, sari
from qdtool.core.prompts import first_repeat


@dataclass(frozen=True)
class Candidate:
    raw: str  # the model's text as it came
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
class Choice:
    index: int  # of the chosen candidate, in the order given
    agreement: float | None  # its mean SARI against the other candidates it was chosen among; None: it had no rival
    valid: int  # valid candidates


def choose(question: str, candidates: Sequence[Candidate]) -> Choice:
    """The candidate to return: the most agreed-with valid one; with one valid, that one; with none valid,
    the most agreed-with of those that have steps (the first when fewer than two have any)."""
    valid = [i for i, c in enumerate(candidates) if c.valid]
    pool = valid if valid else [i for i, c in enumerate(candidates) if c.sub_questions]
    if len(pool) < 2:
        return Choice(pool[0] if pool else 0, None, len(valid))
    scores = agreement_scores(question, [candidates[i].sub_questions for i in pool])
    best = max(range(len(pool)), key=lambda k: (scores[k], -k))
    return Choice(pool[best], scores[best], len(valid))
