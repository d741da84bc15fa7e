"""`qdtool merge` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qdtool.cli.app import app

from run_support import plant_remote_code, runner, train_tiny_run


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    return train_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="module")
def planted_run(tiny_run, tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    return plant_remote_code(tiny_run, tiny_model_dir, tmp_path_factory.mktemp("planted"))


def test_merge_then_decompose_a_file(tiny_run, tmp_path):
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(tiny_run), "--output", str(merged), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    assert "✓ merged into" in result.output and "check: merged fp32 logits" in result.output
    assert "from base + adapter in fp64, allowed" in result.output
    again = runner.invoke(app, ["merge", str(tiny_run), "--output", str(merged)])
    assert again.exit_code == 2 and "pass --overwrite" in again.output

    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "question": f"Question number {i}?"}) + "\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["decompose", "--model", str(merged), "--input", str(questions), "--output", str(out),
                                 "--format", "jsonl", "--max-new-tokens", "8", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(5))
    assert all({"question", "sub_questions", "raw", "parse_ok"} <= set(r) for r in rows)
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert printed == rows


def test_merge_to_a_read_only_destination_fails_before_the_model_loads(tiny_run, tmp_path, monkeypatch):
    import errno
    import tempfile

    import qdtool.core.modeling as modeling

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    result = runner.invoke(app, ["merge", str(tiny_run), "--output", str(tmp_path / "merged")])
    assert result.exit_code == 2, result.output
    assert "the file system is read-only" in result.stderr and "Traceback" not in result.output


def test_merge_passes_only_its_own_flag_on(planted_run, monkeypatch, tmp_path):
    import qdtool.core.modeling as modeling
    from qdtool.errors import ModelError

    seen = []

    def spy(spec, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise ModelError("stop here")

    monkeypatch.setattr(modeling, "load_model", spy)
    run, _ = planted_run
    runner.invoke(app, ["merge", str(run), "--output", str(tmp_path / "a")])
    runner.invoke(app, ["merge", str(run), "--output", str(tmp_path / "b"), "--trust-remote-code"])
    assert seen == [False, True]


def test_the_default_bf16_merge_prints_its_check(tiny_run, tmp_path):
    result = runner.invoke(app, ["merge", str(tiny_run), "--output", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    check = json.loads((tmp_path / "merged" / "qdtool_merge.json").read_text())["check"]
    line = next(line for line in result.output.splitlines() if line.startswith("  check: "))
    assert line.startswith(f"  check: merged bf16 logits {100 * check['error']:.2g}% (relative L2) from base + adapter in fp32, "
                           f"allowed {100 * check['allowed']:.2g}% (4 × the {100 * check['rounding']:.2g}% of the unmerged model in bf16)")
    assert f"same next token at {check['top1_agreement']:.1%} of {check['positions']} positions" in line


def test_a_failing_merge_check_exits_1_and_writes_nothing(tiny_run, tmp_path, monkeypatch):
    import qdtool.core.merging as merging

    monkeypatch.setattr(merging, "NOISE_FACTOR", 0.0)
    monkeypatch.setattr(merging, "ERROR_FLOOR", 0.0)
    result = runner.invoke(app, ["merge", str(tiny_run), "--output", str(tmp_path / "merged")])
    assert result.exit_code == 1, result.output
    assert "merge check failed: merged bf16 logits" in result.stderr and "Nothing was written" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "merged").exists()
