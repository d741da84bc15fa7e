"""The bundled StrategyQA files are exactly the shared split, and train and val never overlap."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from qdtool.core.data import normalize_question

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "strategyqa"
# sha256 of shared/data/strategyqa/{train,val}.jsonl (1,861 / 200 records): the authors' labelled
# train file, none of their dev split. Pinned so that the bundle cannot drift where shared/ is absent.
SHA256 = {
    "strategyqa_train.jsonl": "e950b7aa70b32380da79fc00ddc4c6c406b8752e61df945a43421318b94391be",
    "strategyqa_val.jsonl": "5b6b87819acaca1e641a549a1be3d35b6a1bfd3261216c3502d66bb65a56a043",
}


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("name", sorted(SHA256))
def test_bundled_strategyqa_is_the_shared_split(name):
    data = (EXAMPLES / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256[name]
    shared = SHARED / name.removeprefix("strategyqa_")
    if shared.is_file():
        assert data == shared.read_bytes()


def test_counts_and_licence():
    assert len(_rows("strategyqa_train.jsonl")) == 1861 and len(_rows("strategyqa_val.jsonl")) == 200
    assert "MIT License" in (EXAMPLES / "LICENSE.strategyqa").read_text(encoding="utf-8")


def test_train_and_val_share_no_question_by_text_or_id():
    train, val = _rows("strategyqa_train.jsonl"), _rows("strategyqa_val.jsonl")
    assert not {normalize_question(r["question"]) for r in train} & {normalize_question(r["question"]) for r in val}
    assert not {r["id"] for r in train} & {r["id"] for r in val}


def test_the_disjointness_check_sees_a_leak_that_differs_only_in_case_and_spacing():
    leaked = "  are more people today RELATED to genghis khan   than julius caesar? "
    train_keys = {normalize_question(r["question"]) for r in _rows("strategyqa_train.jsonl")}
    assert normalize_question(leaked) in train_keys
