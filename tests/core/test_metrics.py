"""core/metrics.py: SARI against an independent reference computation and hand-made cases;
the other metrics against values worked out by hand."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from qdtool.core import metrics as m

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def reference_sari(source: str, prediction: str, reference: str) -> float:
    """SARI written the other way, with n-gram Counters and Counter algebra as in tensor2tensor's
    formulation (counts clipped to 1, one reference): an independent check of the set version."""

    def grams(text, n):
        tokens = text.replace("?", " ?").split()
        return Counter({g: 1 for g in (tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))})

    def f(tp, sel, rel, beta=1):
        p = tp / sel if sel > 0 else 1
        if beta == 0:
            return p
        r = tp / rel if rel > 0 else 1
        return (1 + beta**2) * p * r / (beta**2 * p + r) if p > 0 and r > 0 else 0

    keep = add = dele = 0.0
    for n in range(1, 5):
        s, p, r = grams(source, n), grams(prediction, n), grams(reference, n)
        keep += f(sum(((s & p) & (s & r)).values()), sum((s & p).values()), sum((s & r).values()))
        dele += f(sum(((s - p) & (s - r)).values()), sum((s - p).values()), sum((s - r).values()), beta=0)
        add += f(sum(((p - s) & r).values()), sum((p - s).values()), sum((r - s).values()))
    return (keep + add + dele) / 12


def test_sari_matches_the_reference_computation_on_real_and_random_text():
    rows = [json.loads(line) for line in (EXAMPLES / "strategyqa_val.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    for row in rows[:60]:
        gold = m.join_steps(row["sub_questions"])
        words = gold.split()
        shuffled = " ".join(rng.sample(words, k=len(words) // 2))
        for prediction in (row["question"], gold, row["sub_questions"][0], shuffled, ""):
            want = reference_sari(row["question"], prediction, gold)
            assert m.sari(row["question"], prediction, gold).sari == pytest.approx(want, abs=1e-12)


def test_sari_by_hand():
    # source "a b ?", prediction "a c ?", reference "a c ?": unigrams keep {a,?}/{a,?} = 1, add {c}/{c} = 1,
    # delete {b}/{b} = 1; bigrams: s={ab, b?}, p=r={ac, c?}: keep 0/0 -> 1, delete 2/2 -> 1, add 2/2 -> 1;
    # trigrams likewise; 4-grams: nothing anywhere -> 1. SARI = 1.
    assert m.sari("a b ?", "a c ?", "a c ?").sari == pytest.approx(1.0)
    # predicting the source when the reference adds c: add is 0 (nothing added, reference adds 3 n-grams
    # at n=1..3 and 0/0=1 at n=4 -> add = 1/4); keep: n=1 p={a,b,?} vs r-kept {a,?}: P=2/3 R=1 -> 0.8;
    # n=2,3: kept by p = all source grams, reference keeps none -> P=0 -> 0; n=4: 1 -> keep = 1.8/4;
    # delete: prediction deletes nothing -> precision 0/0 = 1 at every n.
    s = m.sari("a b ?", "a b ?", "a c ?")
    assert s.add == pytest.approx(0.25)
    assert s.keep == pytest.approx(1.8 / 4)
    assert s.delete == pytest.approx(1.0)
    assert s.sari == pytest.approx((0.25 + 0.45 + 1.0) / 3)


def test_sari_reference_values_on_bundled_val():
    """The three reference values that shared/data/README.md gives for val.jsonl (200 StrategyQA records)."""
    rows = [json.loads(line) for line in (EXAMPLES / "strategyqa_val.jsonl").read_text().splitlines()]

    def corpus(pred):
        return sum(m.sari(r["question"], pred(r), m.join_steps(r["sub_questions"])).sari for r in rows) / len(rows)

    assert corpus(lambda r: r["question"]) == pytest.approx(0.4428, abs=5e-5)
    assert corpus(lambda r: m.join_steps(r["sub_questions"])) == pytest.approx(1.0)
    assert corpus(lambda r: r["sub_questions"][0]) == pytest.approx(0.7156, abs=5e-5)


def test_tokenization_splits_question_marks():
    assert m.sari_tokens("Is #2 before #1? Yes") == ["Is", "#2", "before", "#1", "?", "Yes"]


def test_exact_match_normalization():
    assert m.exact_match(["When did  Aristotle die?", "Is #1 old."], ["when did aristotle die", "is #1 old?"])
    assert not m.exact_match(["When did Aristotle die?"], ["When did Aristotle die?", "Is #1 old?"])
    assert not m.exact_match(["When did Plato die?"], ["When did Aristotle die?"])


def test_token_f1_and_matching():
    assert m.token_f1("When did Aristotle die?", "when did aristotle die") == 1.0
    assert m.token_f1("a b c d", "a b x y") == pytest.approx(0.5)
    assert m.token_f1("a", "b") == 0.0
    # optimal assignment beats greedy: greedy would pair p0-g0 (0.9) and leave p1-g1 at 0.1
    weights = [[0.9, 0.8], [0.85, 0.1]]
    assert m.max_weight_matching(weights) == [(0, 1), (1, 0)]
    assert m.max_weight_matching([[1.0, 0.2, 0.3]]) == [(0, 0)]
    assert m.max_weight_matching([[0.1], [0.9], [0.2]]) == [(1, 0)]
    match = m.match_steps(["When did Aristotle die?", "What is a laptop?", "Is #1 before #2?"],
                          ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"])
    # pairs: 1-1 (F1 1.0), 3-3 (bag of words identical: 1.0), 2-2 ("laptop" only: F1 0.22 < 0.5)
    assert (match.matched, match.predicted, match.gold) == (2, 3, 3)
    assert match.precision == pytest.approx(2 / 3) and match.f1 == pytest.approx(2 / 3)


def test_hungarian_matches_brute_force():
    from itertools import permutations

    rng = random.Random(1)
    for _ in range(200):
        rows, cols = rng.randint(1, 5), rng.randint(1, 5)
        w = [[rng.random() for _ in range(cols)] for _ in range(rows)]
        got = sum(w[i][j] for i, j in m.max_weight_matching(w))
        if rows <= cols:
            best = max(sum(w[i][p[i]] for i in range(rows)) for p in permutations(range(cols), rows))
        else:
            best = max(sum(w[p[j]][j] for j in range(cols)) for p in permutations(range(rows), cols))
        assert got == pytest.approx(best)


def test_chrf_and_bleu_are_100_for_identical_text():
    chrf, bleu = m.chrf_and_bleu(["When did Aristotle die ? Is #1 old ?"], ["When did Aristotle die ? Is #1 old ?"])
    assert chrf == pytest.approx(100.0) and bleu == pytest.approx(100.0)
    chrf, bleu = m.chrf_and_bleu(["completely different words here"], ["When did Aristotle die ? Is #1 old ?"])
    assert chrf < 20 and bleu < 5


def test_matching_maximizes_pairs_over_the_threshold():
    # total-F1 optimum is the diagonal (1.0 + 0.45: one pair >= 0.5); crossing gives two pairs of 0.5
    steps_p, steps_g = ["a b", "c d"], ["x y", "z w"]
    import qdtool.core.metrics as metrics

    original = metrics.token_f1
    table = {("a b", "x y"): 1.0, ("a b", "z w"): 0.5, ("c d", "x y"): 0.5, ("c d", "z w"): 0.45}
    try:
        metrics.token_f1 = lambda p, g: table[(p, g)]
        assert metrics.match_steps(steps_p, steps_g).matched == 2
    finally:
        metrics.token_f1 = original
