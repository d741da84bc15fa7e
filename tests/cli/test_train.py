"""`qdtool train` on the command line: options map to config fields, errors are messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qdtool.cli.app import app
from qdtool.config import TrainConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
runner = CliRunner()


def test_every_config_field_is_an_option():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in TrainConfig.model_fields:
        assert "--" + name.replace("_", "-") in result.output, name
    assert "--max-seq-length" in result.output  # the seed tool's flag still works


def test_train_a_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--model", str(tiny_model_dir), "--data", str(EXAMPLES / "sample_train.json"), "--output-dir", str(out),
        "--max-steps", "2", "--max-seq-length", "512", "--batch-tokens", "1024", "--lora-r", "4", "--lora-target", "q_proj,v_proj",
        "--no-packing", "--batch-size", "2", "--grad-accum", "1", "--report-to", "none", "--eval-split", "0.2",
    ], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "training summary" in result.output and str(out / "adapter") in result.output
    summary = json.loads((out / "run_summary.json").read_text())
    assert (f"weights of step {summary['selected_step']}, the best by eval_loss ({summary['selected_score']:.4f})"
            in " ".join(result.output.split()))
    assert f"eval SARI {summary['final_eval_sari']:.4f} at end (best {summary['best_eval_sari']:.4f})" in " ".join(result.output.split())
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows if "loss" in r] == [2, 2]  # --no-packing: batches of 2 samples


def test_bad_settings_fail_before_loading_anything(tmp_path):
    result = runner.invoke(app, ["train", "--lr", "-1", "--overlong", "maybe", "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "lr: Input should be greater than 0" in result.output
    assert "overlong: Input should be 'drop', 'truncate' or 'error'" in result.output
    assert not (tmp_path / "x").exists()


def test_select_by_sari_needs_decoded_records_and_a_whole_model(tmp_path):
    result = runner.invoke(app, ["train", "--select-by", "sari", "--eval-decode-records", "0", "--sharding", "fsdp",
                                 "--output-dir", str(tmp_path / "x")], env={"COLUMNS": "250"})
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "select_by sari needs decoded eval records: set eval_decode_records above 0, or select_by eval_loss" in text
    assert "select_by sari decodes with the whole model, which no process holds under sharding fsdp; use select_by eval_loss" in text
    assert not (tmp_path / "x").exists()


def test_missing_data_file_is_reported(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "none.jsonl: no such file" in result.output
    assert not (tmp_path / "x").exists()


def test_max_steps_0_trains_by_epochs_even_over_a_yaml_value(tmp_path, captured_train):
    seen = captured_train
    (tmp_path / "c.yaml").write_text("# qdtool train --config c.yaml\nmax_steps: 7\nepochs: 2\n")
    runner.invoke(app, ["train", "--config", str(tmp_path / "c.yaml"), "--max-steps", "0"])
    assert seen["config"].max_steps is None and seen["config"].epochs == 2
    runner.invoke(app, ["train", "--config", str(tmp_path / "c.yaml")])
    assert seen["config"].max_steps == 7


def _read_only(monkeypatch, directory: Path) -> None:
    """Make `directory` behave as on a read-only file system (EROFS) for creating files and dirs in
    it. chmod does not stop root, who runs the tests in CI, so the refusal is injected instead."""
    import errno
    import os

    real_open, real_mkdir = os.open, os.mkdir
    inside = lambda path: str(Path(os.fspath(path)).absolute()).startswith(str(directory) + os.sep)  # noqa: E731

    def guarded_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and inside(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path) or Path(os.fspath(path)).absolute() == directory:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def test_a_read_only_output_dir_is_refused_before_anything_loads(tiny_model_dir, tmp_path, monkeypatch):
    from qdtool.core import modeling

    monkeypatch.setattr(modeling, "load_tokenizer", lambda *a, **k: pytest.fail("nothing may load"))
    monkeypatch.setattr(modeling, "load_base_model", lambda *a, **k: pytest.fail("nothing may load"))
    shelf = tmp_path / "shelf"
    (shelf / "existing").mkdir(parents=True)
    _read_only(monkeypatch, shelf)
    for out in (shelf / "new-run", shelf / "existing"):  # a run dir to create, and one already there
        result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--data", str(EXAMPLES / "sample_train.json"),
                                     "--output-dir", str(out), "--report-to", "none"], env={"COLUMNS": "250"})
        assert result.exit_code == 2, result.output
        assert f"cannot write {out}: the file system is read-only; choose an output on a writable disk" in result.output
        assert "Traceback" not in result.output and "Errno" not in result.output
    assert sorted(p.name for p in shelf.iterdir()) == ["existing"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o555; the test above injects the refusal")
def test_an_unwritable_output_dir_is_refused_before_anything_loads(tiny_model_dir, tmp_path, monkeypatch):
    from qdtool.core import modeling

    monkeypatch.setattr(modeling, "load_base_model", lambda *a, **k: pytest.fail("the model must not load"))
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    shelf.chmod(0o555)
    try:
        result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--data", str(EXAMPLES / "sample_train.json"),
                                     "--output-dir", str(shelf / "run"), "--report-to", "none"], env={"COLUMNS": "250"})
    finally:
        shelf.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert f"cannot write {shelf / 'run'}: permission denied" in result.output


def test_the_progress_renderer_handles_every_event_type(monkeypatch):
    """Each type in core.events.Event has a renderer (an unknown one is a KeyError), and each shows what it carries."""
    import io
    import typing

    from rich.console import Console

    from qdtool.cli import train as cli_train
    from qdtool.core import events

    log = Console(file=io.StringIO(), width=300, force_terminal=False)  # a log file: one plain line per step
    monkeypatch.setattr(cli_train, "err_console", log)
    step = dict(lr=1e-3, grad_norm=0.5, supervised_tokens=200, tokens=900, samples=4, seconds=0.2, epoch=0.1, peak_memory_gb=1.5)
    feed = [events.Info("loading tiny on CPU (fp32)"), events.Warn("2 sample(s) over max_seq_len=512 dropped"),
            events.Start(10, 2, 32, 8, 1234, "runs/tiny", "CPU", "fp32"),
            events.Step(step=3, loss=2.5, supervised_tokens_per_s=1000.0, **step), events.Eval(3, 2.125),
            events.Step(step=4, loss=2.375, supervised_tokens_per_s=1100.0, **step),
            events.Checkpoint(4, "runs/tiny/checkpoints/step-0000004"), events.Eval(4, 2.0, 0.4375)]
    assert {type(e) for e in feed} == set(typing.get_args(events.Event))  # a new event type needs a line here
    with cli_train._Progress() as progress:
        for event in feed:
            progress.event(event)
    text = log.file.getvalue()
    assert "loading tiny on CPU (fp32)" in text
    assert "warning: 2 sample(s) over max_seq_len=512 dropped" in text
    assert "32 train / 8 eval samples · 1,234 trainable parameters · CPU fp32 · run dir runs/tiny" in text
    assert "step 3/10 · loss 2.500 · 1,000 sup tok/s · peak 1.5 GiB" in text
    assert "step 4/10 · loss 2.375 · eval 2.125 · 1,100 sup tok/s · peak 1.5 GiB" in text
    assert "checkpoint: runs/tiny/checkpoints/step-0000004" in text
    assert progress.bar.tasks[0].completed == 4
    assert progress.bar.tasks[0].fields["info"] == "loss 2.375 · eval 2.000 · sari 0.438 · 1,100 sup tok/s · peak 1.5 GiB"


def test_train_reads_a_csv_through_the_field_mapping_and_keeps_it_in_the_run_config(tmp_path, captured_train, monkeypatch):
    """The flags reach the config, the records reach training, and run_config.yaml (what a resume reads) maps them alike."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qdtool.config import dump_config, load_train_config
    from qdtool.core.training.setup import _absolute_paths, _Inputs
    from qdtool.errors import DataError

    monkeypatch.chdir(tmp_path)
    Path("train.csv").write_text('id,q,decomp\n1,Is Q big?,"1. What is Q? 2. Is #1 big?"\n2,Is R red?,"What is R?\nIs #1 red?"\n',
                                 encoding="utf-8")
    pq.write_table(pa.table({"q": ["Is S?"], "decomp": [["What is S?", "Is #1 S?"]]}), "val.parquet")
    runner.invoke(app, ["train", "--data", "train.csv", "--eval-data", "val.parquet", "--question-field", "q", "--steps-field", "decomp"])
    config = _absolute_paths(captured_train["config"])
    assert (config.data, config.question_field, config.steps_field) == (str(tmp_path / "train.csv"), "q", "decomp")
    inputs = _Inputs.read(config)
    assert [r.to_dict() for r in inputs.per_file[0]] == [
        {"question": "Is Q big?", "sub_questions": ["What is Q?", "Is #1 big?"], "id": "1"},
        {"question": "Is R red?", "sub_questions": ["What is R?", "Is #1 red?"], "id": "2"}]
    assert [r.question for r in inputs.eval_given] == ["Is S?"]
    saved = tmp_path / "run_config.yaml"
    saved.write_text(dump_config(config), encoding="utf-8")
    assert "question_field: q\nsteps_field: decomp\n" in saved.read_text()
    resumed = load_train_config(saved)
    assert [r.to_dict() for r in _Inputs.read(resumed).per_file[0]] == [r.to_dict() for r in inputs.per_file[0]]
    with pytest.raises(DataError, match='no "question" column; columns found: id, q, decomp; map them with --question-field q'):
        _Inputs.read(config.model_copy(update={"question_field": "question", "steps_field": "sub_questions"}))
