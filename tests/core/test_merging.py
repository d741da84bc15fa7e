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
    expected = {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md", "run_config.yaml",
                "qdtool_merge.json"}
    assert expected <= names
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
    with pytest.raises(UsageError, match="not a complete qdtool merge output .*will not delete it"):
        merge(tiny_run, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "x"
    with pytest.raises(UsageError, match="is not a qdtool run"):
        merge(tmp_path, tmp_path / "m2")


def test_a_failing_check_writes_nothing(tiny_run, tmp_path, monkeypatch):
    import qdtool.core.merging as merging

    monkeypatch.setitem(merging.TOLERANCE, "fp32", -1.0)
    with pytest.raises(TrainingError, match="merge check failed"):
        merge(tiny_run, tmp_path / "merged", dtype="fp32")
    assert not (tmp_path / "merged").exists()


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("failure", [RuntimeError("killed"), OSError(28, "No space left on device")], ids=["crash", "disk-full"])
def test_overwrite_keeps_the_old_model_until_the_new_one_is_complete(tiny_run, tmp_path, monkeypatch, failure):
    """A merge --overwrite that dies after the weights are written leaves the old merge whole."""
    import qdtool.core.merging as merging
    from qdtool.core.files import WriteError

    out = tmp_path / "merged"
    merge(tiny_run, out, dtype="fp32")
    before = _snapshot(out)

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(merging, "_generation_config", broken)  # after the weights and the tokenizer are saved
    with pytest.raises(WriteError if isinstance(failure, OSError) else RuntimeError) as info:
        merge(tiny_run, out, dtype="bf16", overwrite=True)
    if isinstance(failure, OSError):
        assert "no space left on the device holding" in str(info.value) and str(out) in str(info.value)
    assert _snapshot(out) == before  # the fp32 model, byte for byte
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temp dir left behind


def test_an_interrupted_first_merge_leaves_no_output(tiny_run, tmp_path, monkeypatch):
    import qdtool.core.merging as merging

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(merging, "_generation_config", killed)
    with pytest.raises(KeyboardInterrupt):
        merge(tiny_run, tmp_path / "merged", dtype="fp32")
    assert list(tmp_path.iterdir()) == []


def test_a_run_without_its_adapter_says_so(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "run_config.yaml", run / "run_config.yaml")
    with pytest.raises(UsageError, match=r"has no adapter/.*may not have finished training.*qdtool train --config"):
        merge(run, tmp_path / "m")
    with pytest.raises(UsageError, match=f"adapter of a run; pass the run directory instead: qdtool merge {tiny_run}$"):
        merge(tiny_run / "adapter", tmp_path / "m")


def test_a_pickle_adapter_is_refused_before_anything_loads(tiny_run, tmp_path, monkeypatch):
    import pickle
    import shutil

    import qdtool.core.modeling as modeling
    from qdtool.errors import ModelError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "adapter" / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (run / "adapter" / "adapter_model.bin").write_bytes(pickle.dumps(_Planted(str(marker))))
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("the base model was loaded"))
    with pytest.raises(ModelError) as info:
        merge(run, tmp_path / "m", dtype="fp32")
    message = str(info.value)
    assert "adapter_model.bin is a pickle file" in message and "did not open it" in message
    assert "weights_only=False" not in message and "UnpicklingError" not in message
    assert not marker.exists() and not (tmp_path / "m").exists()


class _Planted:
    """A pickle that creates a file when it is loaded (what a hostile .bin does, harmlessly)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_read_only_destination_fails_before_the_model_loads(tiny_run, tmp_path, monkeypatch):
    """Tests run as root, where chmod does not stop writes: the file system says EROFS here instead."""
    import errno
    import tempfile

    import qdtool.core.modeling as modeling

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("the base model was loaded"))
    with pytest.raises(UsageError, match=f"cannot write {tmp_path}: the file system is read-only"):
        merge(tiny_run, tmp_path / "merged", dtype="fp32")


@pytest.mark.parametrize("chat", [False, True])
def test_the_check_runs_on_samples_encoded_as_training_encodes_them(tiny_tokenizer, tiny_chat_tokenizer, chat):
    from qdtool.config import TrainConfig
    from qdtool.core.merging import _PROBES, _probe_batch
    from qdtool.core.prompts import encode_sample

    tokenizer = tiny_chat_tokenizer if chat else tiny_tokenizer
    config = TrainConfig(language="ko", instruction="Split it.")
    batch = _probe_batch(tokenizer, config)
    rows = [encode_sample(tokenizer, q, ["First step?", "Second step using #1?"], config.prompt_options()).input_ids for q in _PROBES]
    width = max(len(r) for r in rows)
    assert batch["input_ids"].shape == (len(_PROBES), width)
    for got, mask, row in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), rows, strict=True):
        assert got[: len(row)] == row and mask == [1] * len(row) + [0] * (width - len(row))  # right-padded
