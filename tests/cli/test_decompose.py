"""`qdtool decompose` on the command line; end to end (train, merge, decompose) on the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qdtool.cli.app import app

from run_support import EXAMPLES, plant_remote_code, runner, train_tiny_run


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    return train_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="module")
def planted_run(tiny_run, tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    return plant_remote_code(tiny_run, tiny_model_dir, tmp_path_factory.mktemp("planted"))


def test_decompose_defaults_to_the_latest_run_and_reads_stdin(tiny_run, monkeypatch):
    monkeypatch.chdir(tiny_run.parent.parent)
    result = runner.invoke(app, ["decompose", "--input", "-", "--format", "json", "--max-new-tokens", "4"],
                           input="A question?\nAnother one?\n")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[result.stdout.index("["):])
    assert [r["question"] for r in rows] == ["A question?", "Another one?"]


def test_decompose_usage_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["decompose", "A question?"])
    assert result.exit_code == 2 and "no run in runs/" in result.output
    result = runner.invoke(app, ["decompose"])
    assert result.exit_code == 2 and "pass one QUESTION or --input" in result.output
    result = runner.invoke(app, ["decompose", "Q?", "--num-return-sequences", "3", "--model", "embedded"])
    assert result.exit_code == 2 and "needs sampling" in result.output


def _questions(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": i, "question": f"Question number {i}?"}) + "\n" for i in range(n)))
    return path


def test_results_are_written_as_they_finish_and_a_rerun_continues(tiny_run, tmp_path, monkeypatch):
    """Ctrl-C after 4 of 6 questions keeps those 4 in the file; the same command then does the other 2."""
    from transformers.generation.utils import GenerationMixin

    questions, out = _questions(tmp_path / "q.jsonl", 6), tmp_path / "out.jsonl"
    command = ["decompose", "--model", str(tiny_run), "--input", str(questions), "--output", str(out),
               "--max-new-tokens", "4", "--batch-size", "1"]
    real, calls = GenerationMixin.generate, []

    def interrupted_at_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", interrupted_at_the_fifth)
    result = runner.invoke(app, command)
    assert result.exit_code == 130, result.output
    assert f"interrupted; 4 new result(s) are in {out}: run the same command again to continue" in result.stderr
    kept = out.read_text()
    assert [json.loads(line)["id"] for line in kept.splitlines()] == [0, 1, 2, 3]

    monkeypatch.setattr(GenerationMixin, "generate", real)
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert f"skipping 4 question(s) already in {out}" in result.stderr and "wrote 2 result(s)" in result.stderr
    assert out.read_text().startswith(kept)  # the first four lines untouched
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [0, 1, 2, 3, 4, 5]
    result = runner.invoke(app, command)
    assert result.exit_code == 0 and "nothing to do" in result.stderr
    result = runner.invoke(app, [*command, "--overwrite"])
    assert result.exit_code == 0 and "skipping" not in result.stderr and "wrote 6 result(s)" in result.stderr
    assert len(out.read_text().splitlines()) == 6


def test_progress_reaches_logs_off_a_terminal(tiny_run, tmp_path, monkeypatch):
    import qdtool.cli.decompose as command

    monkeypatch.setattr(command, "LOG_EVERY_S", 0.0, raising=False)  # a line per batch (every 10 s otherwise)
    questions = _questions(tmp_path / "q.jsonl", 3)
    result = runner.invoke(app, ["decompose", "--model", str(tiny_run), "--input", str(questions), "--max-new-tokens", "2",
                                 "--batch-size", "2", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("decompose: ")]
    assert [line.split(" questions")[0] for line in lines] == ["decompose: 2/3", "decompose: 3/3"]
    assert "s left" in lines[0] and "s left" not in lines[1]


def test_an_unwritable_output_fails_before_the_model_loads(tiny_run, tmp_path, monkeypatch):
    """Tests run as root, where chmod does not stop writes: the file system says EROFS here instead."""
    import errno
    import tempfile

    import qdtool.core.generation as generation

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(generation, "load_decomposer", lambda *a, **k: pytest.fail("the model was loaded"))
    result = runner.invoke(app, ["decompose", "--model", str(tiny_run), "--input", str(_questions(tmp_path / "q.jsonl", 2)),
                                 "--output", str(tmp_path / "ro" / "out.jsonl")])
    assert result.exit_code == 2, result.output
    assert f"cannot write {tmp_path / 'ro'}: the file system is read-only" in result.stderr


def test_empty_and_overlong_questions_are_refused(tiny_run, tmp_path, monkeypatch):
    import qdtool.core.generation as generation

    with monkeypatch.context() as patch:
        patch.setattr(generation, "load_decomposer", lambda *a, **k: pytest.fail("the model was loaded"))
        for empty in ("", "   "):
            result = runner.invoke(app, ["decompose", "--model", str(tiny_run), empty])
            assert result.exit_code == 2 and "QUESTION is empty" in result.stderr, result.output
    result = runner.invoke(app, ["decompose", "--model", str(tiny_run), "Was " + "it " * 2000 + "so?"])
    assert result.exit_code == 1, result.output
    assert "error: the prompt is" in result.stderr
    assert "at most 256 tokens (the model's context of 512 tokens less --max-new-tokens 256); nothing was generated" in result.stderr
    questions, out = tmp_path / "q.jsonl", tmp_path / "out.jsonl"
    questions.write_text(json.dumps({"id": "a", "question": "Short?"}) + "\n"
                         + json.dumps({"id": "b", "question": "Was " + "it " * 300 + "so?"}) + "\n")
    result = runner.invoke(app, ["decompose", "--model", str(tiny_run), "--input", str(questions), "--output", str(out),
                                 "--max-input-tokens", "200"])
    assert result.exit_code == 1, result.output
    assert f"{questions}: record 2 (id b): the prompt is" in result.stderr
    assert "at most 200 tokens (--max-input-tokens 200)" in result.stderr
    assert not out.exists()
    out.write_text(json.dumps({"id": "a", "question": "Short?", "sub_questions": [], "raw": "", "parse_ok": False}) + "\n")
    result = runner.invoke(app, ["decompose", "--model", str(tiny_run), "--input", str(questions), "--output", str(out),
                                 "--max-input-tokens", "200"])
    assert result.exit_code == 1 and "skipping 1 question(s)" in result.stderr
    assert f"{questions}: record 2 (id b): the prompt is" in result.stderr  # its place in the input, not among those left


def test_a_run_without_its_adapter_and_an_adapter_dir_say_what_to_pass(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "unfinished"
    run.mkdir()
    shutil.copy(tiny_run / "run_config.yaml", run / "run_config.yaml")
    result = runner.invoke(app, ["decompose", "--model", str(run), "Q?"])
    assert result.exit_code == 1 and "run without adapter/: the run may not have finished training" in result.stderr
    assert "no config.json" not in result.stderr
    result = runner.invoke(app, ["decompose", "--model", str(tiny_run / "adapter"), "Q?"])
    assert result.exit_code == 1 and f"pass the run directory instead: --model {tiny_run}" in result.stderr


def test_a_mistyped_model_path_is_a_usage_error_at_once(tiny_run, monkeypatch):
    import time

    import qdtool.core.modeling as modeling

    monkeypatch.chdir(tiny_run.parent.parent)  # runs/tiny exists here
    monkeypatch.setattr(modeling, "_probe", lambda *a: pytest.fail("the network was asked"))
    monkeypatch.setattr(modeling, "_unreachable", {})
    start = time.monotonic()
    result = runner.invoke(app, ["decompose", "--model", "runs/nope", "Q?"])
    assert time.monotonic() - start < 2
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: no such directory: runs/nope; runs holds: tiny. Pass a run dir")


def test_a_run_on_an_unreachable_hub_model_fails_in_one_line(tiny_run, tmp_path, monkeypatch):
    """decompose and merge of a run whose base is a hub id that cannot be had: one probe, one line, no loading."""
    import shutil

    import yaml
    from huggingface_hub import constants

    import qdtool.core.modeling as modeling

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    settings = yaml.safe_load((run / "run_config.yaml").read_text())
    (run / "run_config.yaml").write_text(yaml.safe_dump({**settings, "model": "someone/not-cached"}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    asked = []
    monkeypatch.setattr(modeling, "_probe", lambda *a: asked.append(a) or "[Errno -2] Name or service not known")
    monkeypatch.setattr(modeling, "_unreachable", {})
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    for command in (["decompose", "--model", str(run), "Q?"], ["merge", str(run), "--output", str(tmp_path / "merged")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error: cannot download 'someone/not-cached': https://huggingface.co is unreachable")
        assert not any("Retrying" in line for line in lines)
    assert len(asked) == 1  # once per process


def test_hf_hub_offline_fails_in_seconds_in_a_fresh_process(tmp_path):
    """The whole command, imports included, as a user runs it (no network is asked: HF_HUB_OFFLINE=1)."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "QDTOOL_DEBUG": ""}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "qdtool", "decompose", "--model", "someone/not-cached", "Q?"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: 'someone/not-cached' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it "
        "(there is no directory someone/not-cached here, so it was read as a hub id); unset HF_HUB_OFFLINE on a machine "
        "with network to download it once, or pass a local model directory or 'embedded'"]
    assert elapsed < 5, f"{elapsed:.1f} s"


def test_a_pickle_adapter_is_refused_by_decompose(tiny_run, tmp_path, monkeypatch):
    import shutil

    import qdtool.core.modeling as modeling

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "adapter" / "adapter_model.safetensors").rename(run / "adapter" / "adapter_model.bin")
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("the base model was loaded"))
    result = runner.invoke(app, ["decompose", "--model", str(run), "Q?"])
    assert result.exit_code == 1, result.output
    assert "adapter_model.bin is a pickle file" in result.stderr and "UnpicklingError" not in result.output


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """Where transformers copies a repo's code before running it: here, not in the user's cache."""
    import transformers.dynamic_module_utils as dynamic
    from transformers import LlamaConfig

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    # The planted module's config class is LlamaConfig itself: loading it with remote code marks
    # LlamaConfig as a custom class (`_auto_class`), and every later save_pretrained of a Llama
    # model would then try to copy its "custom" code. Put it back after the test.
    monkeypatch.setattr(LlamaConfig, "_auto_class", LlamaConfig._auto_class)


def test_a_run_dir_never_switches_on_remote_code(planted_run, modules_cache, tmp_path):
    run, marker = planted_run
    result = runner.invoke(app, ["decompose", "--model", str(run), "Q?", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    result = runner.invoke(app, ["merge", str(run), "--output", str(tmp_path / "merged"), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    # the user's own flag does run it (so the checks above would see it run)
    result = runner.invoke(app, ["decompose", "--model", str(run), "Q?", "--max-new-tokens", "2", "--trust-remote-code"])
    assert result.exit_code == 0, result.output
    assert marker.exists()
    marker.unlink()


@pytest.mark.embedded
def test_end_to_end_on_the_embedded_model(use_embedded_cache, tmp_path):
    """train a few steps → merge → decompose a file of 10 questions, on the real Gemma 3 270M."""
    run = tmp_path / "runs" / "e2e"
    result = runner.invoke(app, ["train", "--data", str(EXAMPLES / "strategyqa_train.jsonl"), "--output-dir", str(run),
                                 "--max-steps", "2", "--batch-tokens", "512", "--max-seq-len", "256", "--eval-max-records", "8",
                                 "--report-to", "none", "--lr", "5e-4"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["merge", str(run), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    assert (run / "merged" / "model.safetensors").is_file()
    val = [json.loads(line) for line in (EXAMPLES / "strategyqa_val.jsonl").read_text().splitlines()[:10]]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": r["id"], "question": r["question"]}) + "\n" for r in val))
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["decompose", "--model", str(run / "merged"), "--input", str(questions), "--output", str(out),
                                 "--format", "jsonl", "--max-new-tokens", "48"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in val]
    assert sum(r["parse_ok"] for r in rows) >= 5  # a base model after 2 steps already follows the numbered format


def test_the_decoding_guard_options_reach_the_generation_settings(monkeypatch):
    from qdtool.core import generation

    seen = []
    monkeypatch.setattr(generation, "load_decomposer", lambda *a, **k: object())
    monkeypatch.setattr(generation, "decompose_stream", lambda decomposer, rows, settings, **k: seen.append(settings) or iter([]))
    result = runner.invoke(app, ["decompose", "Q?", "--model", "embedded", "--max-sub-questions", "3", "--keep-repeats",
                                 "--no-repeat-ngram-size", "4", "--repetition-penalty", "1.2"])
    assert result.exit_code == 0, result.output
    assert seen[0] == generation.GenerationSettings(max_sub_questions=3, stop_at_repeat=False, no_repeat_ngram_size=4,
                                                    repetition_penalty=1.2)
    assert runner.invoke(app, ["decompose", "Q?", "--model", "embedded"]).exit_code == 0
    assert seen[1] == generation.GenerationSettings()  # the defaults: the run's own cap, no repeat stop, no repetition guard
    result = runner.invoke(app, ["decompose", "Q?", "--model", "embedded", "--repetition-penalty", "0.9"])
    assert result.exit_code == 2 and "--repetition-penalty" in result.output and len(seen) == 2


def test_questions_from_a_csv_column(tiny_model_dir, tmp_path):
    questions = tmp_path / "questions.csv"
    questions.write_text('id,q\n7,"Is Q big, or small?"\n8,Is R red?\n', encoding="utf-8")
    result = runner.invoke(app, ["decompose", "--model", str(tiny_model_dir), "--input", str(questions), "--question-field", "q",
                                 "--format", "jsonl", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["id"], r["question"]) for r in rows] == [("7", "Is Q big, or small?"), ("8", "Is R red?")]
    assert "q" not in rows[0]  # the column became "question"
    result = runner.invoke(app, ["decompose", "--model", str(tiny_model_dir), "--input", str(questions)])
    assert result.exit_code == 1
    assert 'no "question" column; columns found: id, q; map it with --question-field q' in result.output


def test_consensus_prints_the_chosen_decomposition_and_keeps_the_samples_in_json(monkeypatch):
    from qdtool.core import generation

    seen = []
    samples = [{"sub_questions": ["Who was Aristotle?"], "raw": "1. Who was Aristotle?", "parse_ok": True},
               {"sub_questions": ["When did Aristotle die?", "Is #1 before 1990?"], "raw": "...", "parse_ok": True}]
    result = generation.Decomposition("Q?", samples[1]["sub_questions"], "...", True, {}, samples,
                                      {"chosen": 2, "agreement": 0.4567, "valid": 2, "samples": 2})

    def stream(decomposer, rows, settings, **kwargs):
        seen.append(settings)
        return iter([result])

    monkeypatch.setattr(generation, "load_decomposer", lambda *a, **k: object())
    monkeypatch.setattr(generation, "decompose_stream", stream)
    printed = runner.invoke(app, ["decompose", "Q?", "--model", "embedded", "--consensus", "2", "--seed", "3"])
    assert printed.exit_code == 0, printed.output
    assert seen[0] == generation.GenerationSettings(temperature=0.7, num_return_sequences=2, consensus=True, seed=3)
    assert "consensus of 2 samples (2 valid, agreement 0.46)" in printed.output
    assert "1. When did Aristotle die?" in printed.output and "Who was Aristotle?" not in printed.output
    as_json = runner.invoke(app, ["decompose", "Q?", "--model", "embedded", "--consensus", "2", "--format", "json"])
    row = json.loads(as_json.stdout)[0]
    assert row["consensus"]["chosen"] == 2 and len(row["samples"]) == 2
    refused = runner.invoke(app, ["decompose", "Q?", "--model", "embedded", "--consensus", "3", "--num-return-sequences", "2",
                                  "--temperature", "0.7"])
    assert refused.exit_code == 2 and "drop --num-return-sequences" in refused.output and len(seen) == 2
