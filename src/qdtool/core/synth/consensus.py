"""Which of a teacher's candidate decompositions to keep: only valid ones, the one the others agree with most.

Validity and agreement are core/consensus.py's (`check_candidate`, `choose`): a candidate passes
validate-data's checks and repeats no step; among the valid ones, the one with the highest mean
SARI against the others wins, and that mean is the question's agreement.

One valid candidate has nothing to agree with: with one sample asked for (`samples == 1`) its
agreement is 1.0 by definition (no consensus was asked for); when more were asked for and the rest
failed, the agreement is undefined (None) and the question is dropped (`single_valid`), since a
teacher that mostly fails on a question is a poor witness for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qdtool.core.consensus import Candidate, agreement_scores, check_candidate, choose

__all__ = ["LOW_AGREEMENT", "NO_VALID", "REFUSED", "SINGLE_VALID", "TOO_LONG", "Candidate", "Verdict", "agreement_scores",
           "check_candidate", "judge"]

# Why a question is dropped (the "reason" of FILE.dropped.jsonl).
NO_VALID = "no_valid_candidate"
SINGLE_VALID = "single_valid"
LOW_AGREEMENT = "low_agreement"
REFUSED = "teacher_refused"  # the teacher answered this question with a 4xx (asking again gives the same)
TOO_LONG = "prompt_too_long"  # a local teacher's prompt is over its limit


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
    choice = choose(question, candidates)
    chosen, agreement = candidates[choice.index].sub_questions, choice.agreement
    if agreement < min_agreement:
        return Verdict(False, chosen, agreement, choice.valid, LOW_AGREEMENT,
                       f"agreement {agreement:.3f} is below --min-agreement {min_agreement}")
    return Verdict(True, chosen, agreement, choice.valid)
