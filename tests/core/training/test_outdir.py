"""core/training/outdir.py: one run per directory; a finished run is kept, another one refused, a failed one gives way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qdtool.config import load_train_config
from qdtool.core import training
from qdtool.core.training import step as one_step
from qdtool.errors import ConfigError, QdtoolError, TrainingError, TrainingInterrupted

from train_support import example_data, make_config, stop_after


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return example_data(tmp_path_factory.mktemp("data"))


def test_a_finished_run_is_not_redone_and_a_different_one_is_refused(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    training.train(make_config(tiny_model_dir, data_file, out, max_steps=2))
    again = training.train(make_config(tiny_model_dir, data_file, out, max_steps=2))
    assert again.already_complete
    with pytest.raises(ConfigError, match=r"different configuration \(differs in: lora_r, lr\)"):
        training.train(make_config(tiny_model_dir, data_file, out, max_steps=2, lr=1e-4, lora_r=4))
    replaced = training.train(make_config(tiny_model_dir, data_file, out, max_steps=2, lr=1e-4), overwrite=True)
    assert not replaced.already_complete and load_train_config(out / "run_config.yaml").lr == 1e-4
    with pytest.raises(ConfigError, match="--resume never was given"):
        training.train(make_config(tiny_model_dir, data_file, out, max_steps=2, lr=1e-4), resume="never")
    stranger = tmp_path / "not-a-run"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # never deleted, even with --overwrite
        with pytest.raises(ConfigError, match="holds no qdtool run"):
            training.train(make_config(tiny_model_dir, data_file, stranger), overwrite=overwrite)
    assert (stranger / "notes.txt").read_text() == "mine"


def test_one_training_per_run_directory(tiny_model_dir, data_file, tmp_path):
    import fcntl

    out = tmp_path / "run"
    training.train(make_config(tiny_model_dir, data_file, out, max_steps=1))
    with (out / ".lock").open("w") as held:  # what a running `qdtool train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for steps, overwrite in ((1, False), (2, True)):
            with pytest.raises(ConfigError, match="another qdtool train is running"):
                training.train(make_config(tiny_model_dir, data_file, out, max_steps=steps), overwrite=overwrite)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()  # nothing was deleted
    training.train(make_config(tiny_model_dir, data_file, out, max_steps=2), overwrite=True)  # released: fine


def test_a_run_whose_model_failed_to_load_does_not_block_its_directory(tiny_model_dir, data_file, tmp_path):
    import shutil

    no_weights = tmp_path / "no-weights"  # config and tokenizer load; the weights do not
    shutil.copytree(tiny_model_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    out = tmp_path / "run"
    for broken in (no_weights, tmp_path / "nope"):  # a model dir without weights; a mistyped path
        with pytest.raises(QdtoolError):
            training.train(make_config(broken, data_file, out, max_steps=2))
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no run_config.yaml left to claim the directory
    result = training.train(make_config(tiny_model_dir, data_file, out, max_steps=2))  # no --overwrite
    assert result.steps == 2 and not result.already_complete
    assert load_train_config(out / "run_config.yaml").model == str(tiny_model_dir)


def test_a_run_that_stopped_before_its_first_checkpoint_does_not_block_its_directory(tiny_model_dir, data_file, tmp_path, monkeypatch):
    real = one_step.answer_loss_sum
    out = tmp_path / "run"
    with monkeypatch.context() as patch:  # too high a learning rate, say: the loss blows up at step 1
        patch.setattr(one_step, "answer_loss_sum", lambda model, batch: (real(model, batch)[0] * float("inf"), 1))
        with pytest.raises(TrainingError, match="the loss became"):
            training.train(make_config(tiny_model_dir, data_file, out, lr=1.0))
    assert load_train_config(out / "run_config.yaml").lr == 1.0 and not (out / "checkpoints").exists()
    result = training.train(make_config(tiny_model_dir, data_file, out, max_steps=2))  # other settings, no --overwrite
    assert result.steps == 2 and load_train_config(out / "run_config.yaml").lr == 3e-3
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [0, 1, 2, 2]

    with monkeypatch.context() as patch:  # a run with a checkpoint to resume still holds its directory
        stop_after(patch, 1)
        with pytest.raises(TrainingInterrupted):
            training.train(make_config(tiny_model_dir, data_file, tmp_path / "kept"))
    with pytest.raises(ConfigError, match=r"different configuration \(differs in: lr\)"):
        training.train(make_config(tiny_model_dir, data_file, tmp_path / "kept", lr=1e-4))


def test_the_settings_that_pick_the_adapter_are_part_of_the_run(tiny_model_dir, data_file, tmp_path):
    """select_by and the eval decoding decide which step's weights the adapter holds: a resume may not change them."""
    from qdtool.config import dump_config
    from qdtool.core.training import prepare_output_dir

    out = tmp_path / "run"
    config = make_config(tiny_model_dir, data_file, out)
    (out / "checkpoints" / "step-0000002").mkdir(parents=True)  # a run with something to resume
    (out / "checkpoints" / "step-0000002" / "trainer_state.json").write_text('{"step": 2}')
    (out / "run_config.yaml").write_text(dump_config(config))
    assert prepare_output_dir(config.model_copy(update={"eval_steps": 1}), overwrite=False) == out  # how often: run control
    changed = {"select_by": "sari", "eval_decode_records": 4, "eval_decode_batch": 2, "eval_decode_max_new_tokens": 8}
    with pytest.raises(ConfigError, match=r"differs in: eval_decode_batch, eval_decode_max_new_tokens, eval_decode_records, select_by\)"):
        prepare_output_dir(config.model_copy(update=changed), overwrite=False)


def test_a_run_saved_before_a_setting_existed_is_the_same_run_with_its_default(tiny_model_dir, data_file, tmp_path):
    """An upgrade adds settings: a run_config.yaml without them means their defaults, not a different run."""
    import yaml

    from qdtool.config import dump_config
    from qdtool.core.training import prepare_output_dir

    out = tmp_path / "run"
    config = make_config(tiny_model_dir, data_file, out)
    (out / "checkpoints" / "step-0000002").mkdir(parents=True)
    (out / "checkpoints" / "step-0000002" / "trainer_state.json").write_text('{"step": 2}')
    older = yaml.safe_load(dump_config(config))
    del older["method"], older["neftune_alpha"]  # fields an older qdtool did not write
    (out / "run_config.yaml").write_text(yaml.safe_dump(older))
    assert prepare_output_dir(config, overwrite=False) == out
    with pytest.raises(ConfigError, match=r"differs in: neftune_alpha\)"):
        prepare_output_dir(config.model_copy(update={"neftune_alpha": 5.0}), overwrite=False)


@pytest.mark.parametrize(("model", "data", "expected"), [
    ("embedded", None, "gemma-3-270m-examples"),
    ("Qwen/Qwen2.5-0.5B", "data/my_set.jsonl", "Qwen2.5-0.5B-my_set"),
    ("embedded", "hf://datasets/org/strategy_qa:validation", "gemma-3-270m-strategy_qa-validation"),  # no ':' in a path
    ("embedded", "내 데이터/질문 분해.jsonl", "gemma-3-270m-질문-분해"),  # Korean stays; the space goes
])
def test_the_default_run_dir_is_named_after_the_model_and_the_data(model, data, expected):
    from qdtool.core.rundir import RUNS

    config = load_train_config(overrides={"model": model, **({"data": data} if data else {})})
    assert training.default_output_dir(config) == RUNS / expected
