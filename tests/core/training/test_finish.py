"""core/training/finish.py: the adapter (or a full run's model) is written whole, with our card and a portable base model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from qdtool.core import training
from qdtool.errors import TrainingError

from train_support import example_data, make_config


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return example_data(tmp_path_factory.mktemp("data"))


def test_a_full_disk_while_writing_the_adapter_leaves_no_half_adapter(tiny_model_dir, data_file, tmp_path, monkeypatch):
    import errno

    from transformers import PreTrainedTokenizerBase

    def full(self, *args, **kwargs):  # the adapter weights are written by then: only the tokenizer is missing
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    config = make_config(tiny_model_dir, data_file, out, max_steps=4, save_steps=2)
    with monkeypatch.context() as patch:
        patch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
        with pytest.raises(TrainingError, match=r"no space left on the device holding .*adapter.*The adapter was not written; "
                                                 r"once there is room, the same command resumes from .*step-0000002"):
            training.train(config)
    assert sorted(p.name for p in out.iterdir() if "adapter" in p.name) == []  # neither a half adapter nor its temp dir
    assert not (out / "run_summary.json").exists()
    result = training.train(config)
    assert result.resumed_from == str(out / "checkpoints" / "step-0000002")
    assert (out / "adapter" / "tokenizer_config.json").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()


def test_the_adapter_has_our_card_and_a_portable_base_model(tiny_model_dir, data_file, tmp_path, monkeypatch):
    """A hub model is loaded from a cache directory; the adapter must name the hub id, not that directory."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qdtool.core import modeling

    real_model, real_tokenizer = modeling.load_model, modeling.load_tokenizer
    monkeypatch.setattr(modeling, "load_model", lambda spec, **kw: real_model(str(tiny_model_dir), **kw))
    monkeypatch.setattr(modeling, "load_tokenizer", lambda spec, **kw: real_tokenizer(str(tiny_model_dir), **kw))
    out = tmp_path / "run"
    result = training.train(make_config("someone/tiny-model", data_file, out, max_steps=4))

    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "someone/tiny-model"
    card = (out / "adapter" / "README.md").read_text()
    assert "More Information Needed" not in card
    assert card.startswith("---\nlibrary_name: peft\nbase_model: someone/tiny-model\n")
    assert "| base model | `someone/tiny-model` (Hugging Face hub) |" in card
    sha = hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert f"| training data | `train.jsonl`: 40 records (sha256 {sha[:12]}) |" in card
    assert "| eval data | 8 records held out from the training data (eval_split 0.2, at most 200, seed 42) |" in card
    assert "| samples | 32 train / 8 eval; 0 dropped and 0 truncated at max_seq_len 512 |" in card
    assert "| steps | 4 optimizer steps (max_steps 4) |" in card
    assert (f"| eval loss (answer tokens) | {result.first_eval_loss:.4f} at start → {result.final_eval_loss:.4f} at end "
            f"(best {result.best_eval_loss:.4f}) |") in card
    assert "| LoRA | r 16, alpha 32, dropout 0.05, on all-linear |" in card
    assert "peak lr 0.003, cosine after 3% warm-up" in card
    assert f'qdtool decompose --model {out} "' in card and f"qdtool merge {out}" in card

    # the adapter still loads onto its base (qdtool takes the base from run_config.yaml, never from here)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    loaded = PeftModel.from_pretrained(base, str(out / "adapter"))
    assert loaded.peft_config["default"].base_model_name_or_path == "someone/tiny-model"
    assert any(name.endswith("lora_A.default.weight") for name, _ in loaded.named_parameters())


def test_the_card_names_a_local_base_as_given_and_lists_every_data_file(tiny_model_dir, data_file, tmp_path, monkeypatch):
    from qdtool.core.cards import DataFile, adapter_card

    monkeypatch.chdir(tiny_model_dir.parent)
    config = make_config(Path(tiny_model_dir.name), data_file, tmp_path / "run", use_rslora=True, lora_target=["q_proj", "v_proj"])
    config = config.model_copy(update={"eval_data": tmp_path / "val.jsonl"})
    result = training.TrainResult(str(tmp_path / "run"), "", 6, 6, 30, 5, 1, 2, first_eval_loss=2.5, final_eval_loss=1.25,
                                  best_eval_loss=1.0, device="cpu", precision="bf16")
    files = [DataFile("train", data_file, 31, "a" * 64), DataFile("eval", tmp_path / "val.jsonl", 5, "b" * 64)]
    card = adapter_card(tmp_path / "run", config, result, files)
    assert card.startswith("---\nlibrary_name: peft\ntags:")  # no hub id to name as base_model
    assert f"| base model | `{tiny_model_dir.name}` (a local directory) |" in card
    assert "| eval data | `val.jsonl`: 5 records (sha256 bbbbbbbbbbbb) |" in card
    assert "| LoRA | r 16, alpha 32, dropout 0.05, on q_proj, v_proj, rsLoRA |" in card
    assert "| eval loss (answer tokens) | 2.5000 at start → 1.2500 at end (best 1.0000) |" in card
    assert "| precision | bf16 on cpu, quantization none |" in card


def test_a_full_run_writes_a_standalone_model_with_the_best_weights_that_decompose_loads(tiny_model_dir, data_file, tmp_path,
                                                                                        monkeypatch):
    from safetensors.torch import load_file

    from qdtool.core.generation import GenerationSettings, decompose, load_decomposer
    from qdtool.core.rundir import RunDir
    from qdtool.core.training import loop

    seen = {}
    real = loop.evaluate

    def evaluate(run, step):  # the trained weights at each evaluation, by step
        seen[step] = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
        return real(run, step)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    out = tmp_path / "run"
    # a learning rate that overshoots at its peak: the eval loss falls, then rises, so the best step is not the last
    result = training.train(make_config(tiny_model_dir, data_file, out, method="full", lr=0.1, warmup_ratio=0.5, scheduler="linear",
                                        eval_steps=1, max_steps=6))
    assert 0 < result.selected_step < 6
    assert (result.method, result.adapter_dir) == ("full", str(out / "model"))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["model"]  # no adapter/, checkpoints/ or best/
    saved = load_file(str(out / "model" / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert set(seen[result.selected_step]) == set(saved) - {"model.embed_tokens.weight"}  # the embedding stays frozen
    assert result.trainable_params == sum(v.numel() for v in seen[0].values())
    for name, value in seen[result.selected_step].items():  # the best evaluation's weights, not the last step's
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(saved["model.embed_tokens.weight"], base["model.embed_tokens.weight"], rtol=0, atol=0)
    assert any(not torch.equal(saved[n], base[n]) for n in seen[0])
    assert json.loads((out / "model" / "config.json").read_text())["use_cache"] is True
    card = (out / "model" / "README.md").read_text()
    assert card.startswith("---\ntags: [qdtool, question-decomposition, full-fine-tuning]\n---")
    assert "fully fine-tuned with qdtool" in card and "every weight but the input embedding trained" in card
    assert f'qdtool decompose --model {out} "' in card and "qdtool merge" not in card
    assert "there is no adapter to merge" in RunDir(out).merge_refusal()

    decomposer = load_decomposer(str(out), device="cpu")  # the run dir, as `qdtool decompose --model RUN` passes it
    assert not hasattr(decomposer.model, "peft_config") and decomposer.longest_trained == result.longest_decomposition
    weight = decomposer.model.get_parameter("model.layers.0.self_attn.q_proj.weight")
    # the trained weights (in the CPU's compute precision: bf16 rounds to 2^-9), not the base's
    torch.testing.assert_close(weight.float(), saved["model.layers.0.self_attn.q_proj.weight"], rtol=4e-3, atol=1e-6)
    [answer] = decompose(decomposer, [{"question": "Was Aristotle alive when the laptop was invented?"}],
                         GenerationSettings(max_new_tokens=8))
    assert answer.question == "Was Aristotle alive when the laptop was invented?"
