"""core/synth/consensus: which candidates are valid, which one is chosen, and its agreement (by hand, with the SARI function)."""

from __future__ import annotations

import pytest

from qdtool.core.metrics import join_steps, sari
from qdtool.core.synth.consensus import LOW_AGREEMENT, NO_VALID, SINGLE_VALID, agreement_scores, check_candidate, judge

Q = "Was Aristotle alive when the laptop was invented?"
A = ["When did Aristotle die?", "When was the laptop invented?", "Is #1 after #2?"]
B = ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"]
C = ["When did Aristotle live?", "When was the laptop made?", "Is #2 before #1?"]


def _sari(prediction: list[str], reference: list[str]) -> float:
    return sari(Q, join_steps(prediction), join_steps(reference)).sari


def test_the_candidate_closest_to_the_others_wins_with_its_mean_sari_as_agreement():
    # By hand: each candidate's SARI against each other one as the reference, averaged.
    by_hand = {
        "A": (_sari(A, B) + _sari(A, C)) / 2,
        "B": (_sari(B, A) + _sari(B, C)) / 2,
        "C": (_sari(C, A) + _sari(C, B)) / 2,
    }
    assert by_hand == pytest.approx({"A": 0.8368, "B": 0.8762, "C": 0.7672}, abs=1e-4)  # B shares the most with both
    assert agreement_scores(Q, [A, B, C]) == pytest.approx([by_hand["A"], by_hand["B"], by_hand["C"]], abs=1e-12)
    verdict = judge(Q, [check_candidate(Q, "", steps) for steps in (A, B, C)], samples=3)
    assert verdict.kept and verdict.sub_questions == B and verdict.valid == 3
    assert verdict.agreement == pytest.approx(by_hand["B"], abs=1e-12)


def test_invalid_candidates_do_not_vote():
    broken = check_candidate(Q, "", ["Is #2 before #1?", "When did Aristotle die?"])  # #2 from the first step
    verdict = judge(Q, [check_candidate(Q, "", A), broken, check_candidate(Q, "", C)], samples=3)
    assert verdict.valid == 2 and verdict.sub_questions == A  # A vs C only: A and C are each other's sole reference
    assert verdict.agreement == pytest.approx(max(_sari(A, C), _sari(C, A)), abs=1e-12)


def test_identical_candidates_agree_fully():
    verdict = judge(Q, [check_candidate(Q, "", B)] * 3, samples=3)
    assert verdict.kept and verdict.agreement == pytest.approx(1.0)


@pytest.mark.parametrize(("steps", "max_steps", "problem"), [
    ([], 0, "no numbered steps in the reply"),
    (["What is #1?", "Is it?"], 0, "step 1 refers to #1, but the first step has no earlier answer to refer to"),
    (["When did Aristotle die?", "Is #3 true?"], 0, "step 2 refers to #3, which is not an earlier step"),
    (["Was Aristotle alive when the laptop was invented?", "Is #1 true?"], 0, "step 1 is identical to the question"),
    (["When did Aristotle die?", " ", "Is #1 old?"], 0, "step 2 is blank"),
    (["a?", "b?", "c?"], 2, "3 steps, more than the 2 allowed (--max-steps)"),
    (["When did he die?", "When did he die?"], 0, "step 2 repeats an earlier step"),
])
def test_a_candidate_breaking_a_validate_data_rule_is_not_valid(steps, max_steps, problem):
    candidate = check_candidate(Q, "raw", steps, max_steps)
    assert not candidate.valid and any(problem in p for p in candidate.problems), candidate.problems


def test_one_step_is_valid_and_the_step_cap_is_inclusive():
    assert check_candidate(Q, "", ["When did Aristotle die?"]).valid  # 1..max steps; one step is only a warning in validate-data
    assert check_candidate(Q, "", A, max_steps=3).valid


def test_one_valid_candidate_is_kept_only_when_one_sample_was_asked_for():
    one = [check_candidate(Q, "", A)]
    single = judge(Q, one, samples=1)
    assert (single.kept, single.agreement, single.sub_questions) == (True, 1.0, A)
    alone = judge(Q, one + [check_candidate(Q, "", [])] * 2, samples=3)
    assert (alone.kept, alone.reason, alone.agreement, alone.valid) == (False, SINGLE_VALID, None, 1)


def test_no_valid_candidate_and_low_agreement_are_dropped_with_the_reason():
    none = judge(Q, [check_candidate(Q, "junk", [])] * 2, samples=2)
    assert (none.kept, none.reason) == (False, NO_VALID) and "no numbered steps" in none.detail
    low = judge(Q, [check_candidate(Q, "", s) for s in (A, B, C)], samples=3, min_agreement=0.9)
    assert (low.kept, low.reason, low.sub_questions) == (False, LOW_AGREEMENT, B)
    assert "agreement 0.876 is below --min-agreement 0.9" in low.detail
