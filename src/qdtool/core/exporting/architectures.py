"""What each supported architecture looks like in a GGUF file: tensor names, metadata, weight transforms.

The names and keys are llama.cpp's (the file format's reference reader), checked against the Q4_K_M
GGUF of Gemma 3 270M that qdtool ships, and against transformers' GGUF loader, which `verify`
uses to read the file back. Anything a config says that llama.cpp cannot be told (a rope scaling,
logit softcapping, a layer pattern of its own) is refused here, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qdtool.errors import ModelError

# HF module path inside a decoder layer -> GGUF tensor name inside `blk.N.`
_LAYER_COMMON = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER_LLAMA = {**_LAYER_COMMON, "post_attention_layernorm": "ffn_norm"}
_LAYER_QWEN3 = {**_LAYER_LLAMA, "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
_LAYER_GEMMA3 = {
    **_LAYER_COMMON,
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}
_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


@dataclass(frozen=True)
class Architecture:
    """How one transformers `model_type` is written as GGUF."""

    model_type: str  # transformers' name
    gguf: str  # general.architecture
    layer_names: dict[str, str]
    norm_offset: float = 0.0  # added to every norm weight: Gemma's norms scale by (1 + w), llama.cpp's by w
    permute_qk: bool = False  # llama.cpp's llama graph wants q/k rows of each head interleaved (its rope layout)
    checks: Callable[[Any], list[str]] = lambda config: []

    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF name of a state-dict tensor, None for one the file does not hold (a tied LM head)."""
        top, _, suffix = hf_name.rpartition(".")
        if top in _TOP:
            return f"{_TOP[top]}.{suffix}"
        match = _LAYER_NAME.match(hf_name)
        if match and match.group(2) in self.layer_names:
            return f"blk.{match.group(1)}.{self.layer_names[match.group(2)]}.{match.group(3)}"
        raise ModelError(f"the {self.model_type} model has a tensor qdtool does not know how to name in GGUF: {hf_name}; "
                         "this variant of the architecture is not supported by qdtool export")


def rope_parameters(config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """The rope settings (transformers 5 keeps them in `rope_parameters`, per layer type for Gemma 3)."""
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params = {**params, "rope_theta": config.rope_theta}
    return dict(params)


def _plain_rope(config: Any, layer_type: str | None = None) -> list[str]:
    params = rope_parameters(config, layer_type)
    kind = params.get("rope_type", params.get("type", "default"))
    where = f" ({layer_type})" if layer_type else ""
    return [] if kind == "default" else [f"rope scaling '{kind}'{where} (only plain rope is exported so far)"]


def _gemma3_checks(config: Any) -> list[str]:
    problems = _plain_rope(config, "full_attention") + _plain_rope(config, "sliding_attention")
    head_dim = getattr(config, "head_dim", None)
    if getattr(config, "query_pre_attn_scalar", head_dim) != head_dim:
        problems.append(f"query_pre_attn_scalar {config.query_pre_attn_scalar} != head_dim {head_dim} (llama.cpp scales by head_dim)")
    local = rope_parameters(config, "sliding_attention").get("rope_theta", 10_000.0)
    if float(local) != 10_000.0:
        problems.append(f"sliding-window rope theta {local} (llama.cpp's Gemma 3 uses 10000)")
    for name in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(config, name, None) is not None:
            problems.append(f"{name} {getattr(config, name)} (Gemma 3 in llama.cpp has none)")
    pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(config.num_hidden_layers)]
    if list(getattr(config, "layer_types", pattern)) != pattern:
        problems.append("layer_types other than Gemma 3's five sliding-window layers to one global layer")
    if getattr(config, "use_bidirectional_attention", False):
        problems.append("bidirectional attention")
    return problems


def _windowless(config: Any) -> list[str]:
    problems = _plain_rope(config)
    uses_window = getattr(config, "use_sliding_window", True) and getattr(config, "sliding_window", None) is not None
    if uses_window:
        problems.append(f"sliding-window attention ({config.sliding_window} tokens)")
    return problems


ARCHITECTURES: dict[str, Architecture] = {
    "gemma3_text": Architecture("gemma3_text", "gemma3", _LAYER_GEMMA3, norm_offset=1.0, checks=_gemma3_checks),
    "llama": Architecture("llama", "llama", _LAYER_LLAMA, permute_qk=True, checks=_windowless),
    "mistral": Architecture("mistral", "llama", _LAYER_LLAMA, permute_qk=True, checks=_windowless),
    "qwen2": Architecture("qwen2", "qwen2", _LAYER_LLAMA, checks=_windowless),
    "qwen3": Architecture("qwen3", "qwen3", _LAYER_QWEN3, checks=_windowless),
}
SUPPORTED = "Gemma 3 (text), Llama, Mistral, Qwen2/2.5, Qwen3"


def architecture_of(config: Any) -> Architecture:
    """The architecture of a model config, checked for what a GGUF file can say about it.

    Raises:
        ModelError: the architecture is not supported, or this model uses a feature the export cannot write.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        hint = " (the multimodal Gemma 3; export its text model, Gemma3ForCausalLM)" if model_type == "gemma3" else ""
        raise ModelError(f"qdtool export does not support the architecture '{model_type}'{hint}; supported: {SUPPORTED}")
    arch = ARCHITECTURES[model_type]
    problems = arch.checks(config)
    if problems:
        raise ModelError(f"this {model_type} model cannot be exported to GGUF by qdtool: {'; '.join(problems)}")
    return arch


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def hyperparameters(arch: Architecture, config: Any) -> dict[str, int | float]:
    """The `ARCH.*` metadata keys (without the prefix) and their values, as llama.cpp reads them."""
    dim = head_dim(config)
    rope = rope_parameters(config, "full_attention" if arch.gguf == "gemma3" else None)
    values: dict[str, int | float] = {
        "context_length": int(config.max_position_embeddings),
        "embedding_length": int(config.hidden_size),
        "block_count": int(config.num_hidden_layers),
        "feed_forward_length": int(config.intermediate_size),
        "attention.head_count": int(config.num_attention_heads),
        "attention.head_count_kv": int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        "attention.key_length": dim,
        "attention.value_length": dim,
        "rope.freq_base": float(rope.get("rope_theta", 10_000.0)),
    }
    if arch.gguf == "llama":
        values["rope.dimension_count"] = dim
    if arch.gguf == "gemma3":
        values["attention.sliding_window"] = int(config.sliding_window)
    return values


def permute_qk(weight: Any, heads: int) -> Any:
    """Rows of each head reordered from transformers' halves layout (x0..x(d/2-1), then the rest) to
    llama.cpp's interleaved pairs, which its rope for the llama graph rotates. A numpy weight (out, in) or bias (out,)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
