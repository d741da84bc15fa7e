"""core/rundir.py: the run directory's layout, its lock, the latest run and the RUN/adapter hint."""

from __future__ import annotations

import os

import pytest

from qdtool.core.rundir import RunDir
from qdtool.errors import ConfigError


def _run(path, *, adapter: bool = True, summary: bool = False) -> RunDir:
    run = RunDir(path)
    run.path.mkdir(parents=True)
    run.config.write_text("model: embedded\n")
    if adapter:
        run.adapter.mkdir()
        (run.adapter / "adapter_config.json").write_text("{}")
    if summary:
        run.summary.write_text("{}")
    return run


def test_the_layout_names_what_train_writes(tmp_path):
    run = RunDir(tmp_path / "r")
    names = [p.name for p in (run.adapter, run.config, run.summary, run.metrics, run.loss_plot, run.checkpoints, run.merged, run.lock_file)]
    assert names == ["adapter", "run_config.yaml", "run_summary.json", "metrics.jsonl", "loss.png", "checkpoints", "merged", ".lock"]
    assert all(p.parent == tmp_path / "r" for p in (run.adapter, run.config, run.merged))
    assert run.resume_command == f"qdtool train --config {tmp_path / 'r' / 'run_config.yaml'}"
    assert str(run) == str(tmp_path / "r")


def test_what_a_run_holds(tmp_path):
    empty = RunDir(tmp_path / "empty")
    empty.path.mkdir()
    empty.lock_file.write_text("")
    assert not empty.is_run() and not empty.holds_files() and not empty.has_trained()
    started = _run(tmp_path / "started", adapter=False)  # run_config.yaml only: its model failed to load, say
    assert started.is_run() and started.holds_files() and not started.has_trained() and not started.has_adapter()
    done = _run(tmp_path / "done", summary=True)
    assert done.has_adapter() and done.is_finished() and done.has_trained()
    half = _run(tmp_path / "half", adapter=False)
    half.adapter.mkdir()  # an adapter/ without adapter_config.json: trained, but not loadable
    assert half.has_trained() and not half.has_adapter()


def test_clear_keeps_only_the_lock(tmp_path):
    run = _run(tmp_path / "r", summary=True)
    run.lock_file.write_text("")
    (run.checkpoints / "step-0000002").mkdir(parents=True)
    run.clear()
    assert [p.name for p in run.path.iterdir()] == [".lock"]


def test_one_lock_at_a_time(tmp_path):
    run = _run(tmp_path / "r")
    with run.lock():
        with pytest.raises(ConfigError, match=rf"another qdtool train is running in {run}; wait for it"):
            run.lock()
    run.lock().close()  # released: fine again


def test_an_adapter_dir_names_its_run(tmp_path):
    run = _run(tmp_path / "r")
    assert RunDir.holding_adapter(run.adapter).path == run.path
    assert RunDir.holding_adapter(run.path) is None  # a run dir is not an adapter
    loose = tmp_path / "loose-adapter"  # an adapter outside any run
    loose.mkdir()
    (loose / "adapter_config.json").write_text("{}")
    assert RunDir.holding_adapter(loose) is None


def test_the_latest_run_is_the_last_written_with_an_adapter_or_a_merged_model(tmp_path):
    runs = tmp_path / "runs"
    assert RunDir.latest(runs) is None  # no runs/ at all
    old, new = _run(runs / "old"), _run(runs / "new")
    os.utime(old.config, (1_000, 1_000))
    os.utime(new.config, (2_000, 2_000))
    unfinished = _run(runs / "unfinished", adapter=False)
    os.utime(unfinished.config, (3_000, 3_000))
    assert RunDir.latest(runs).path == new.path  # the newer run without an adapter does not count
    merged = _run(runs / "merged-copy", adapter=False)
    (merged.path / "config.json").write_text("{}")  # a merged model, which carries its run's run_config.yaml
    os.utime(merged.config, (4_000, 4_000))
    assert RunDir.latest(runs).path == merged.path


def test_a_full_fine_tuning_run_holds_a_model_and_nothing_to_merge(tmp_path):
    lora = _run(tmp_path / "lora", summary=True)
    assert not lora.is_full_run() and lora.merge_refusal() is None
    full = _run(tmp_path / "full", adapter=False)
    full.config.write_text("model: embedded\nmethod: full\n")
    assert full.is_full_run() and not full.has_model() and not full.has_trained()
    assert full.merge_refusal() == (f"{full} is a full fine-tuning run (method full) without model/ yet: it may not have finished "
                                    f"training. Resume it with `{full.resume_command}`; there is no adapter to merge")
    full.model.mkdir()
    (full.model / "config.json").write_text("{}")
    assert full.has_model() and full.has_trained() and full.model == full.path / "model"
    assert full.merge_refusal() == (f"{full} is a full fine-tuning run (method full): there is no adapter to merge, {full.model} is "
                                    f"already a standalone model. Pass {full} to `qdtool decompose` / `qdtool eval` as it is, or "
                                    f"copy {full.model} to share it")
    os.utime(lora.config, (1_000, 1_000))
    os.utime(full.config, (5_000, 5_000))
    assert RunDir.latest(tmp_path).path == full.path  # decompose without --model finds it
    os.utime(full.config, (500, 500))
    assert RunDir.latest(tmp_path).path == lora.path
    broken = _run(tmp_path / "broken", adapter=False)
    broken.config.write_text("method: [full\n")
    assert not broken.is_full_run()  # loading the config says what is wrong with it
