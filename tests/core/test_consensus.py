"""core/consensus.py: which sample `choose` returns, against agreement computed separately."""

from __future__ import annotations

from qdtool.core.consensus import agreement_scores, check_candidate, choose

Q = "Was Aristotle alive when the laptop was invented?"
GOOD = ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"]
CLOSE = ["When did Aristotle die?", "When was the first laptop invented?", "Is #2 before #1?"]
ODD = ["Who was Aristotle?", "What is a laptop?"]
LOOP = ["When did Aristotle die?", "When did Aristotle die?", "Is #2 before #1?"]


def test_the_most_agreed_with_valid_sample_wins_and_a_looping_one_is_never_chosen():
    candidates = [check_candidate(Q, "", s) for s in (ODD, LOOP, GOOD, CLOSE)]
    assert [c.valid for c in candidates] == [True, False, True, True]
    scores = agreement_scores(Q, [ODD, GOOD, CLOSE])  # among the valid ones only
    choice = choose(Q, candidates)
    assert choice.index == [0, 2, 3][max(range(3), key=lambda k: scores[k])] and choice.index in (2, 3)
    assert choice.agreement == scores[[0, 2, 3].index(choice.index)] and choice.valid == 3
    # the loop agrees with GOOD more than ODD does, yet it is out: it asks the same thing twice
    assert agreement_scores(Q, [LOOP, GOOD])[0] > agreement_scores(Q, [ODD, GOOD])[0]


def test_ties_go_to_the_first_and_a_lone_valid_sample_is_returned_without_an_agreement():
    same = choose(Q, [check_candidate(Q, "", GOOD), check_candidate(Q, "", GOOD)])
    assert (same.index, same.valid) == (0, 2) and same.agreement == 1.0
    lone = choose(Q, [check_candidate(Q, "junk", []), check_candidate(Q, "", LOOP), check_candidate(Q, "", ODD)])
    assert (lone.index, lone.agreement, lone.valid) == (2, None, 1)


def test_with_no_valid_sample_the_most_agreed_with_of_those_with_steps_is_returned():
    broken = ["Is #3 true?", "When did Aristotle die?"]  # #3 refers forward: invalid
    candidates = [check_candidate(Q, "junk", []), check_candidate(Q, "", broken), check_candidate(Q, "", LOOP),
                  check_candidate(Q, "", LOOP)]
    assert not any(c.valid for c in candidates)
    choice = choose(Q, candidates)
    scores = agreement_scores(Q, [broken, LOOP, LOOP])
    assert choice.index == 1 + max(range(3), key=lambda k: (scores[k], -k)) == 2 and choice.valid == 0
    assert choose(Q, [check_candidate(Q, "junk", [])] * 3).index == 0  # nothing parsed: the first, as without consensus
