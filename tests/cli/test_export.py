"""`qdtool export` on the command line: a run merged first, the refusals, and the embedded model's round trip."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from qdtool.cli.app import app
from qdtool.core.exporting import verify

from run_support import runner, train_tiny_run


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    return train_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("cwd"))


def test_a_run_is_merged_first_and_exported_with_a_modelfile(tiny_run, monkeypatch):
    monkeypatch.setattr(verify, "DECODE_TOKENS", 8)
    result = runner.invoke(app, ["export", str(tiny_run), "--format", "gguf", "--outtype", "q8_0", "--ollama"])
    assert result.exit_code == 0, result.output
    out = tiny_run / "gguf" / "tiny-q8_0.gguf"
    assert f"✓ exported {out} (llama, q8_0," in result.output and "(merged first)" in result.output
    assert "verified: logits within" in result.output and "of 3 probe questions" in result.output
    assert f"next: ollama create tiny -f {out.with_suffix('.Modelfile')} && ollama run tiny" in result.output
    assert out.is_file() and (tiny_run / "merged" / "qdtool_merge.json").is_file()
    assert out.with_suffix(".Modelfile").read_text(encoding="utf-8").count("FROM ./tiny-q8_0.gguf\n") == 1

    again = runner.invoke(app, ["export", str(tiny_run), "--outtype", "q8_0"])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.stderr
    adapter = runner.invoke(app, ["export", str(tiny_run / "adapter")])
    assert adapter.exit_code == 2 and f"pass the run directory instead: qdtool export {tiny_run}" in adapter.stderr


def test_an_unknown_outtype_is_a_usage_error(tiny_model_dir, tmp_path):
    result = runner.invoke(app, ["export", str(tiny_model_dir), "--outtype", "q4_k_m", "--output", str(tmp_path / "x.gguf")])
    assert result.exit_code == 2 and "--outtype must be one of f16, bf16, q8_0 (got q4_k_m)" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.embedded
@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_embedded_round_trip(use_embedded_cache, tmp_path, outtype):
    """The real model through the whole export: written, read back by transformers, compared, Modelfile next to it."""
    out = tmp_path / f"gemma-{outtype}.gguf"
    started = time.perf_counter()
    result = runner.invoke(app, ["export", "embedded", "--outtype", outtype, "--output", str(out), "--ollama"])
    assert result.exit_code == 0, result.output
    print(f"\nembedded {outtype}: {time.perf_counter() - started:.0f} s; {result.output}")
    assert f"✓ exported {out} (gemma3, {outtype}," in result.output
    # f16 must decode as the model does; q8_0 as the model rounded to q8_0 (it changed 1 of 3 here)
    assert ("on 3 of 3 probe questions" in result.output) if outtype == "f16" else re.search(r"on [0-3] of 3 probe", result.output)
    shown = re.search(r"logits within (\S+) of the model's \(\S+ rounding alone: ([^,]+),", result.output)
    error, noise = (float(x) for x in shown.groups())
    assert 0 < error <= 1.5 * noise + 1e-3
    text = out.with_suffix(".Modelfile").read_text(encoding="utf-8")
    assert 'PARAMETER stop "<eos>"' in text and "### Sub-questions:\n" in text
