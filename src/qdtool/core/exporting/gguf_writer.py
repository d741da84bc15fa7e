"""Write a transformers model as one GGUF file, tensor by tensor, with `gguf`'s writer.

The tensor table is written first (every tensor's name, shape and format is known from the model),
then each tensor is converted and written in turn: memory holds the model plus one converted
tensor, not a second copy of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdtool.core.exporting.architectures import Architecture, hyperparameters, permute_qk
from qdtool.core.exporting.quant import as_numpy, byte_shape, encode, nbytes, tensor_type
from qdtool.core.exporting.vocab import Vocab

FILE_TYPES = {"f16": 1, "q8_0": 7, "bf16": 32}  # general.file_type: llama.cpp's LLAMA_FTYPE_MOSTLY_*


@dataclass(frozen=True)
class Planned:
    """One tensor of the file: where it comes from, what it is called, how it is stored."""

    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    kind: str  # f32 | f16 | bf16 | q8_0


def plan_tensors(model: Any, arch: Architecture, outtype: str) -> list[Planned]:
    """The file's tensors in state-dict order (a tied LM head is the embedding, and not written twice)."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    planned = []
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        shape = tuple(tensor.shape)
        planned.append(Planned(name, arch.gguf_name(name), shape, tensor_type(shape, outtype)))
    return planned


def file_values(tensor: Any, item: Planned, arch: Architecture, config: Any) -> Any:
    """A tensor's float32 values as the file holds them (before the number format): Gemma's norms
    as 1 + w, llama's q/k rows in llama.cpp's rope order."""
    values = as_numpy(tensor)
    if arch.norm_offset and item.hf_name.endswith("norm.weight"):
        values = values + arch.norm_offset
    if arch.permute_qk and item.gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
        values = permute_qk(values, config.num_attention_heads)
    elif arch.permute_qk and item.gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
        values = permute_qk(values, getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return values


def write_gguf(path: Path, model: Any, arch: Architecture, vocab: Vocab, outtype: str, name: str, *,
               add_bos: bool) -> list[Planned]:
    """Write `model` to `path` in `outtype` with `vocab` as its tokenizer; returns what was written.

    Args:
        add_bos: whether a prompt starts with BOS (tokenizer.ggml.add_bos_token: llama.cpp and Ollama add it).
    """
    import gguf
    import numpy as np

    planned = plan_tensors(model, arch, outtype)
    writer = gguf.GGUFWriter(str(path), arch.gguf)
    try:
        _metadata(writer, model.config, arch, outtype, name)
        _tokenizer(writer, vocab, add_bos)
        for item in planned:
            kind = item.kind
            raw = None if kind in ("f32", "f16") else gguf.GGMLQuantizationType[kind.upper()]
            dtype = {"f32": np.float32, "f16": np.float16}.get(kind, np.uint8)
            shape = item.shape if raw is None else byte_shape(item.shape, kind)
            writer.add_tensor_info(item.gguf_name, shape, np.dtype(dtype), nbytes(item.shape, kind), raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        state = model.state_dict()
        for item in planned:
            writer.write_tensor_data(encode(file_values(state[item.hf_name], item, arch, model.config), item.kind, item.hf_name))
        writer.flush()
    finally:
        writer.close()
    return planned


def _metadata(writer: Any, config: Any, arch: Architecture, outtype: str, name: str) -> None:
    import gguf

    writer.add_type("model")
    # transformers' GGUF reader takes a llama file whose general.name is exactly "mistral" for a mistral
    # architecture that gguf-py does not have, and cannot read it back
    writer.add_name(f"{name}-decomposer" if name.strip().lower() == "mistral" else name)
    writer.add_file_type(FILE_TYPES[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in hyperparameters(arch, config).items():
        if isinstance(value, float):
            writer.add_float32(f"{arch.gguf}.{key}", value)
        else:
            writer.add_uint32(f"{arch.gguf}.{key}", value)


def _tokenizer(writer: Any, vocab: Vocab, add_bos: bool) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for key, token_id in vocab.special_ids.items():
        adders[key](token_id)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)  # the model writes EOS itself: it ends every training answer
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def round_like_file(model: Any, planned: list[Planned], arch: Architecture) -> None:
    """Give `model` (float32) the weights the file holds: each tensor through its format and back, in place.

    The q/k reordering of llama is left out: it moves whole rows, and every format rounds within a row.
    """
    import torch

    from qdtool.core.exporting.quant import round_trip

    state = model.state_dict()
    with torch.no_grad():
        for item in planned:
            tensor = state[item.hf_name]
            offset = arch.norm_offset if item.hf_name.endswith("norm.weight") else 0.0
            held = round_trip(as_numpy(tensor) + offset, item.kind, item.hf_name) - offset
            tensor.copy_(torch.from_numpy(held))
