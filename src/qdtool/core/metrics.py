"""Decomposition metrics, in pure Python: SARI as the StrategyQA / Break evaluations compute it,
exact match, step counts, one-to-one step matching, format validity, and chrF / BLEU (sacrebleu).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# SARI (tensor2tensor's variant: n-grams as sets, n = 1..4; keep F1, addition F1, deletion
# precision; 0/0 = 1; the three averaged over n, then their mean)
# --------------------------------------------------------------------------------------------


def sari_tokens(text: str) -> list[str]:
    """Tokens as the official StrategyQA evaluator makes them: a space before each `?`, then split on
    white space; case kept (so `?` is its own token wherever a space or the end follows it)."""
    return text.replace("?", " ?").split()


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _f_beta(true_positives: float, selected: float, relevant: float, beta: float = 1.0) -> float:
    precision = true_positives / selected if selected > 0 else 1.0
    if beta == 0:
        return precision
    recall = true_positives / relevant if relevant > 0 else 1.0
    if precision > 0 and recall > 0:
        b2 = beta * beta
        return (1 + b2) * precision * recall / (b2 * precision + recall)
    return 0.0


@dataclass(frozen=True)
class Sari:
    sari: float
    keep: float
    add: float
    delete: float


def sari(source: str, prediction: str, reference: str, max_n: int = 4) -> Sari:
    """SARI of one prediction against one reference, for the given source text."""
    src_t, pred_t, ref_t = sari_tokens(source), sari_tokens(prediction), sari_tokens(reference)
    keep = add = delete = 0.0
    for n in range(1, max_n + 1):
        s, p, r = _ngrams(src_t, n), _ngrams(pred_t, n), _ngrams(ref_t, n)
        # keep: n-grams of the source kept by the prediction, vs those the reference keeps
        kept_p, kept_r = s & p, s & r
        keep += _f_beta(len(kept_p & kept_r), len(kept_p), len(kept_r))
        # deletion (precision only): source n-grams the prediction dropped that the reference dropped too
        del_p, del_r = s - p, s - r
        delete += _f_beta(len(del_p & del_r), len(del_p), len(del_r), beta=0)
        # addition: n-grams new in the prediction that the reference also adds
        add_p, add_r = p - s, r - s
        add += _f_beta(len(add_p & r), len(add_p), len(add_r))
    keep, add, delete = keep / max_n, add / max_n, delete / max_n
    return Sari((keep + add + delete) / 3, keep, add, delete)


def join_steps(steps: Sequence[str]) -> str:
    return " ".join(s.strip() for s in steps)


# --------------------------------------------------------------------------------------------
# Exact match, step counts, step matching
# --------------------------------------------------------------------------------------------


def normalize_step(step: str) -> str:
    """Lower case, white space collapsed, one trailing `?` or `.` removed."""
    text = " ".join(step.lower().split())
    return text[:-1].rstrip() if text.endswith(("?", ".")) else text


def exact_match(prediction: Sequence[str], reference: Sequence[str]) -> bool:
    if len(prediction) != len(reference):
        return False
    return all(normalize_step(p) == normalize_step(r) for p, r in zip(prediction, reference, strict=True))


_WORD = re.compile(r"\w+|#\d+", re.UNICODE)


def step_tokens(step: str) -> list[str]:
    return _WORD.findall(step.lower())


def token_f1(a: str, b: str) -> float:
    """Bag-of-words F1 of two steps (lower-cased words and #k references)."""
    ta, tb = Counter(step_tokens(a)), Counter(step_tokens(b))
    common = sum((ta & tb).values())
    if not ta and not tb:
        return 1.0
    if common == 0:
        return 0.0
    precision, recall = common / sum(ta.values()), common / sum(tb.values())
    return 2 * precision * recall / (precision + recall)


def max_weight_matching(weights: list[list[float]]) -> list[tuple[int, int]]:
    """Pairs (row, column) of a one-to-one assignment maximizing the total weight (Hungarian method)."""
    rows = len(weights)
    cols = len(weights[0]) if rows else 0
    if rows == 0 or cols == 0:
        return []
    size = max(rows, cols)
    top = max(max(r) for r in weights)
    # square cost matrix for minimization; padding cells cost `top` (weight 0)
    cost = [[top - (weights[i][j] if i < rows and j < cols else 0.0) for j in range(size)] for i in range(size)]
    u, v = [0.0] * (size + 1), [0.0] * (size + 1)
    match_col = [0] * (size + 1)  # match_col[j] = row (1-based) assigned to column j
    way = [0] * (size + 1)
    for i in range(1, size + 1):
        match_col[0] = i
        j0 = 0
        minv = [math.inf] * (size + 1)
        used = [False] * (size + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = match_col[j0], math.inf, 0
            for j in range(1, size + 1):
                if not used[j]:
                    current = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if current < minv[j]:
                        minv[j], way[j] = current, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(size + 1):
                if used[j]:
                    u[match_col[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if match_col[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match_col[j0] = match_col[j1]
            j0 = j1
    return sorted((match_col[j] - 1, j - 1) for j in range(1, size + 1) if match_col[j] - 1 < rows and j - 1 < cols)


@dataclass(frozen=True)
class StepMatch:
    matched: int  # pairs with token F1 >= threshold in the optimal assignment
    predicted: int
    gold: int

    @property
    def precision(self) -> float:
        return self.matched / self.predicted if self.predicted else (1.0 if not self.gold else 0.0)

    @property
    def recall(self) -> float:
        return self.matched / self.gold if self.gold else (1.0 if not self.predicted else 0.0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def match_steps(prediction: Sequence[str], reference: Sequence[str], threshold: float = 0.5) -> StepMatch:
    """One-to-one matching of predicted to gold steps by token F1: the assignment with the most
    pairs of F1 >= threshold (ties: the higher total F1)."""
    weights = [[token_f1(p, r) for r in reference] for p in prediction]
    # maximize the number of pairs at or above the threshold first, their F1 second
    ranked = [[(1.0 + w) if w >= threshold else 0.0 for w in row] for row in weights]
    pairs = max_weight_matching(ranked)
    return StepMatch(sum(1 for i, j in pairs if weights[i][j] >= threshold), len(prediction), len(reference))


def chrf_and_bleu(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """Corpus chrF and BLEU (sacrebleu, default settings) of joined decompositions, on a 0-100 scale."""
    import sacrebleu

    chrf = sacrebleu.corpus_chrf(list(predictions), [list(references)]).score
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    return chrf, bleu
