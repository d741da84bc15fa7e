"""bench/gguf_model.py: a GGUF file back to a safetensors model directory with the source's logits and tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gguf_model.py"


def _tiny_qwen2(directory: Path, tokenizer) -> Path:
    """A 2-layer Qwen2 (q/k/v biases) with random biases and norms, so that a misplaced one changes the logits."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    rows = max(tokenizer.get_vocab().values()) + 2  # one past the chat tokenizer's last added token
    config = AutoConfig.for_model("qwen2", vocab_size=rows, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=2,
                                  eos_token_id=1, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_gguf_file_becomes_a_safetensors_model_with_the_sources_logits(tmp_path, tiny_chat_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qdtool.core.exporting import export

    source = _tiny_qwen2(tmp_path / "source", tiny_chat_tokenizer)
    export(str(source), tmp_path / "model.gguf", outtype="f16")  # a file as a registry would carry it
    out = tmp_path / "converted"
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "model.gguf"), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout)
    assert info["architecture"] == "qwen2" and info["chat_template"] is True
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(out.glob("*.bin")) and not list(out.glob("*.gguf"))
    assert json.loads((out / "gguf_source.json").read_text()) == info
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    original = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
    converted = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert info["parameters"] == sum(p.numel() for p in original.parameters())
    text = "Was the first step of question decomposition written before 1900?"
    tokens = AutoTokenizer.from_pretrained(str(out))(text)["input_ids"]
    assert tokens[:20] == tiny_chat_tokenizer(text)["input_ids"][:20]  # transformers' GGUF tokenizer splits a later word differently
    ids = torch.tensor([tokens])
    with torch.no_grad():
        expected, got = original(ids).logits, converted(ids).logits
    # f16 weights in the file: the logits agree to f16 rounding, far closer than two random models would
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.05)
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


def test_it_refuses_a_missing_file_and_an_existing_directory(tmp_path):
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "none.gguf"), str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "out").mkdir()
    exists = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "model.gguf"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert exists.returncode == 2 and "exists" in exists.stderr
