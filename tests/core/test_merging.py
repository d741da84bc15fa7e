"""core/merging.py: the merged model equals base + adapter, and the output is complete and safe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qdtool.config import load_train_config
from qdtool.core import training
from qdtool.core.merging import merge
from qdtool.errors import TrainingError, UsageError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = load_train_config(overrides=dict(
        model=str(tiny_model_dir), data=str(EXAMPLES / "sample_train.json"), output_dir=str(out), max_steps=3,
        batch_tokens=1024, max_seq_len=512, lr=5e-2, report_to="none", eval_split=0.2, lora_r=4))
    training.train(config)
    return out


def test_merged_logits_equal_base_plus_adapter(tiny_run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = merge(tiny_run, tmp_path / "merged", dtype="fp32")
    assert result.max_abs_logit_diff <= 1e-3
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = PeftModel.from_pretrained(base, str(tiny_run / "adapter")).eval()
    ids = torch.tensor([[2, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)
        # and the adapter really changed the model (the check above is not trivially true)
        assert (reference(ids).logits - AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits).abs().max() > 1e-3


def test_merged_dir_is_standalone(tiny_run, tmp_path):
    out = tmp_path / "merged"
    merge(tiny_run, out, dtype="bf16")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md", "run_config.yaml", "qdtool_merge.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    generation = json.loads((out / "generation_config.json").read_text())
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert generation["eos_token_id"] == 1 and tokenizer_config["eos_token"] == "<eos>"
    card = (out / "README.md").read_text()
    assert "base model" in card and "merge check" in card and "lr:" in card
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_refusals(tiny_run, tmp_path):
    out = tmp_path / "merged"
    merge(tiny_run, out, dtype="fp32")
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        merge(tiny_run, out, dtype="fp32")
    merge(tiny_run, out, dtype="fp32", overwrite=True)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not a qdtool merge output"):
        merge(tiny_run, other, overwrite=True)
    with pytest.raises(UsageError, match="is not a finished qdtool run"):
        merge(tmp_path, tmp_path / "m2")


def test_a_failing_check_writes_nothing(tiny_run, tmp_path, monkeypatch):
    import qdtool.core.merging as merging

    monkeypatch.setitem(merging.TOLERANCE, "fp32", -1.0)
    with pytest.raises(TrainingError, match="merge check failed"):
        merge(tiny_run, tmp_path / "merged", dtype="fp32")
    assert not (tmp_path / "merged").exists()
