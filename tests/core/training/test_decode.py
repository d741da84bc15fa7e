"""core/training/decode.py: eval SARI is `qdtool eval`'s SARI of what the live model decodes, on a fixed subset."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from qdtool.core import batching, generation, training
from qdtool.core.data import Record, read_dataset
from qdtool.core.evaluation import evaluate
from qdtool.core.training import decode
from qdtool.errors import DataError

from train_support import example_data, losses, make_config


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return example_data(tmp_path_factory.mktemp("data"))


def test_eval_rows_carry_the_sari_of_what_the_live_model_decoded(tiny_model_dir, data_file, tmp_path, monkeypatch):
    calls = []
    real = generation.decompose

    def recording(decomposer, rows, settings, **kwargs):
        results = real(decomposer, rows, settings, **kwargs)
        calls.append((list(rows), results, decomposer.model.training, settings))
        return results

    monkeypatch.setattr(generation, "decompose", recording)
    out = tmp_path / "run"
    training.train(make_config(tiny_model_dir, data_file, out, eval_decode_records=5, eval_decode_batch=2))
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert [r["step"] for r in rows] == [0, 3, 6] and len(calls) == 3

    _, held_out = batching.split_eval(read_dataset(data_file), 0.2, 200, 42)  # the run's eval split
    questions = [row["question"] for row in calls[0][0]]
    assert len(questions) == 5 and set(questions) < {r.question for r in held_out}
    for (decoded, results, training_mode, settings), row in zip(calls, rows, strict=True):
        assert [r["question"] for r in decoded] == questions  # the same subset at every evaluation
        assert not training_mode and (settings.batch_size, settings.max_new_tokens, settings.temperature) == (2, 16, 0.0)
        expected = evaluate(decoded, [r.to_dict() for r in results], "live").metrics["sari"]
        assert row["eval_sari"] == pytest.approx(expected, abs=1e-12) and 0 < row["eval_sari"] < 1

    # decoding draws no random numbers and leaves dropout on for training: the curve is the one of a run that decodes nothing
    training.train(make_config(tiny_model_dir, data_file, tmp_path / "quiet", eval_decode_records=0))
    assert "eval_sari" not in (tmp_path / "quiet" / "metrics.jsonl").read_text()
    torch.testing.assert_close(torch.tensor(losses(out)), torch.tensor(losses(tmp_path / "quiet")), rtol=0, atol=0)


def _model(context: int) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(max_position_embeddings=context))


def test_the_subset_is_seeded_in_file_order_and_leaves_out_prompts_over_the_limit(tiny_model_dir, tiny_tokenizer):
    records = [Record(f"Is {n} a prime number?", [f"Is {n} prime?"]) for n in range(10)]
    records.insert(4, Record("Why? " * 300, ["Why?"]))  # far over the prompt limit
    config = make_config(tiny_model_dir, Path("train.jsonl"), Path("out"), eval_decode_records=3)
    warned = []
    chosen = decode.choose_rows(records, config, tiny_tokenizer, _model(512), warned.append)
    assert chosen == decode.choose_rows(records, config, tiny_tokenizer, _model(512), warned.append)  # fixed
    fitting = [r for r in records if not r.question.startswith("Why")]
    positions = [next(i for i, r in enumerate(fitting) if r.question == row["question"]) for row in chosen]
    assert len(chosen) == 3 and positions == sorted(positions)  # in file order
    assert chosen == [{"question": fitting[i].question, "sub_questions": fitting[i].sub_questions} for i in positions]
    assert warned[0] == ("1 of 11 eval records have a prompt over the 496 tokens that decoding leaves room for "
                         "(--eval-decode-max-new-tokens 16); eval SARI leaves them out")
    others = {tuple(r["question"] for r in decode.choose_rows(records, config.model_copy(update={"seed": s}), tiny_tokenizer,
                                                               _model(512), warned.append)) for s in range(5)}
    assert len(others) > 1  # another seed, another subset
    assert decode.choose_rows(records, config.model_copy(update={"eval_decode_records": 0}), tiny_tokenizer, _model(512),
                              pytest.fail) == []
    assert len(decode.choose_rows(records, config.model_copy(update={"eval_decode_records": 50}), tiny_tokenizer, _model(512),
                                  warned.append)) == 10  # all that fit

    tiny_context = _model(20)  # no prompt fits
    eval_loss = config.model_copy(update={"eval_decode_records": 3})
    assert decode.choose_rows(records, eval_loss, tiny_tokenizer, tiny_context, warned.append) == []
    with pytest.raises(DataError, match="none is left to select the adapter by: shorten them, or pass --select-by eval_loss"):
        decode.choose_rows(records, eval_loss.model_copy(update={"select_by": "sari"}), tiny_tokenizer, tiny_context, warned.append)
