"""Peak training memory, predicted from the model's config alone (no weights are loaded).

The estimate is a sum of named terms (weights, LoRA + optimizer, activations, logits and loss,
dequantization buffer, allocator overhead), each a formula of the architecture's shapes and the
run's settings. Full fine-tuning (`method: full`) has its own weight terms: fp32 master weights,
their fp32 gradients and optimizer states for every trainable weight, and the 16-bit copies
autocast makes of the matmul weights; its residual stream is fp32 (the embedding's output is).

The constants marked CALIBRATE are first-principles values; bench/estimator_accuracy.py measures
real training steps on a GPU to check them (see docs/benchmarks.md for the status).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from qdtool.core.loss import chunk_rows

GIB = 2**30
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# CALIBRATE: bytes per logit element in the loss (bf16 logits, their fp32 upcast, the fp32
# log-softmax saved by cross-entropy, and the fp32 gradient in backward).
LOSS_BYTES_PER_LOGIT = 14
# CALIBRATE: the caching allocator keeps more than it hands out (fragmentation, rounding). 0 fits
# the three peaks recorded in shared/BENCH.md (H200, bf16, LoRA r16 all-linear, 2,048 tokens/step,
# full logits): estimated 15.50 / 31.44 / 37.02 GiB vs measured 14.8 / 30.6 / 36.1 GiB for the
# Qwen2.5-1.5B / Llama-2-7B / Qwen2.5-7B shapes (+4.7%, +2.7%, +2.5%). tests/core/test_memory.py keeps them.
ALLOCATOR_OVERHEAD = 0.0
# CALIBRATE: the CUDA context and kernels live outside max_memory_reserved() but take free memory.
CUDA_CONTEXT_GIB = 0.6
# CALIBRATE: on a CPU the peak is the process's resident memory: Python, torch, transformers and the
# tokenizer (measured: RSS after loading the embedded model, minus its weights) ...
CPU_RUNTIME_GIB = 0.63
# ... and, on top of the live tensors the terms count, what a CPU step holds besides: attention's
# per-layer intermediates on the CPU kernels, oneDNN's buffers, and the freed activations glibc's
# dynamic mmap threshold keeps on the heap. Fitted to two runs of the embedded model (2026-12-02,
# docs/benchmarks.md "Training memory"): the whole default run, 2 x 1,024-token micro-batches, 3.37
# GiB peak RSS (estimate 3.34), and 8 steps of 1 x 2,048-token rows, 4.82 GiB (estimate 4.87).
CPU_ALLOCATOR_OVERHEAD = 0.77


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: Any) -> Shape:
        """From a transformers config (Llama, Qwen2, Gemma 3, Mistral and alike)."""
        text = getattr(config, "text_config", None) or config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(text.hidden_size, text.intermediate_size, text.num_hidden_layers, heads,
                   getattr(text, "num_key_value_heads", None) or heads, head_dim, text.vocab_size,
                   bool(getattr(config, "tie_word_embeddings", getattr(text, "tie_word_embeddings", False))))

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_dims().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)  # input embedding (+ untied LM head)

    @property
    def norm_params(self) -> int:
        return self.layers * 2 * self.hidden + self.hidden  # two norms per layer + the final one

    @property
    def parameters(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params


def weight_bytes(shape: Shape, quantization: str = "none", double_quant: bool = True, bytes_16: int = 2) -> float:
    """Base weights. 4-bit NF4: half a byte per weight plus one absmax per 64 weights (fp32, or
    8-bit with a second-level fp32 constant per 256 blocks when double-quantized); 8-bit (LLM.int8):
    one byte plus an fp32 scale per output row. Embeddings, LM head and norms stay 16-bit."""
    linear = shape.linear_params
    if quantization == "4bit":
        per_weight = 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)
        quantized = linear * per_weight
    elif quantization == "8bit":
        rows = shape.layers * sum(out for _, out in shape.linear_dims().values())
        quantized = linear * 1 + rows * 4
    else:
        quantized = linear * bytes_16
    return quantized + (shape.embedding_params + shape.norm_params) * bytes_16


def lora_params(shape: Shape, r: int, targets: str | Sequence[str] = "all-linear") -> int:
    names = LINEAR_NAMES if targets == "all-linear" else [t for t in targets if t in LINEAR_NAMES]
    dims = shape.linear_dims()
    return shape.layers * sum(r * (dims[n][0] + dims[n][1]) for n in names)


def optimizer_bytes_per_param(optimizer: str) -> float:
    """LoRA weights (fp32) + their gradients (fp32) + optimizer states."""
    states = {"adamw": 8, "adamw_fused": 8, "paged_adamw_32bit": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2}[optimizer]
    return 4 + 4 + states


def activation_bytes_per_token_layer(shape: Shape, gradient_checkpointing: bool, act_bytes: int = 2, lora_dropout: bool = True,
                                     residual_bytes: int | None = None) -> float:
    """What one decoder layer keeps for backward, per token.

    Without checkpointing (elements, then x bytes): residual and norm tensors (4h, x
    `residual_bytes`: 4 under full fine-tuning, whose fp32 weights keep the residual stream fp32),
    the inputs the linears and their LoRA branches see (q/k/v share one: h; o: q; gate/up share
    one: h; down: i), rotated q, k, v and the attention output (2q + 2kv), the MLP's gate, up and
    activation outputs (3i), plus LoRA-dropout copies of each linear's input (3h + q + 2h + i) with
    their 1-byte masks. With checkpointing only the layer input (h, a residual) stays.
    """
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    residual_bytes = residual_bytes or act_bytes
    if gradient_checkpointing:
        return h * residual_bytes
    elements = (h + q + h + i) + (2 * q + 2 * kv) + 3 * i
    dropout = (3 * h + q + 2 * h + i) if lora_dropout else 0
    return 4 * h * residual_bytes + elements * act_bytes + dropout * (act_bytes + 1)


def full_trainable_params(shape: Shape, train_embeddings: bool = False) -> int:
    """Weights that train under method full: all of them, or all but the input embedding (and the head tied to it)."""
    return shape.parameters - (0 if train_embeddings else shape.vocab * shape.hidden)


def _full_weight_terms(shape: Shape, optimizer: str, bytes_16: int, train_embeddings: bool) -> tuple[float, float, int]:
    """(weights, trainable weights + grads + optimizer states, trainable count) of full fine-tuning.

    Weights: the frozen ones in fp32 (the model loads in fp32), plus in 16-bit compute one copy of
    every matmul weight (the linears, and the head), which autocast casts once per forward and
    backward keeps. Trainable: fp32 master weight + fp32 gradient + optimizer states each.
    """
    trainable = full_trainable_params(shape, train_embeddings)
    copies = (shape.linear_params + shape.vocab * shape.hidden) * bytes_16 if bytes_16 < 4 else 0
    return (shape.parameters - trainable) * 4 + copies, trainable * optimizer_bytes_per_param(optimizer), trainable


def _lora_weight_terms(shape: Shape, quantization: str, double_quant: bool, bytes_16: int, lora_r: int,
                       lora_target: str | Sequence[str], optimizer: str, shards: int) -> tuple[float, float, int]:
    """(base weights, LoRA weights + grads + optimizer states, LoRA count), per process under FSDP (see `estimate`)."""
    weights = weight_bytes(shape, quantization, double_quant, bytes_16)
    n_lora = lora_params(shape, lora_r, lora_target)
    lora = n_lora * optimizer_bytes_per_param(optimizer)
    if shards > 1:
        root = (shape.embedding_params + shape.hidden) * bytes_16
        layer = (weights - root) / shape.layers
        weights = (weights - root) / shards + 2 * layer + root
        lora /= shards
    return weights, lora, n_lora


@dataclass
class MemoryEstimate:
    weights_gib: float
    lora_and_optimizer_gib: float
    activations_gib: float
    logits_and_loss_gib: float
    dequant_buffer_gib: float
    overhead_gib: float
    peak_reserved_gib: float  # what torch.cuda.max_memory_reserved() should show
    cuda_context_gib: float
    total_gib: float  # what must be free on the GPU
    lora_params: int  # 0 under method full
    parameters: int
    runtime_gib: float = 0.0  # on a CPU: the process itself (Python, libraries, tokenizer)
    method: str = "lora"  # full: lora_and_optimizer_gib is of every trainable weight, not of adapters
    trainable_params: int = 0  # the LoRA weights, or under method full the model's trainable weights

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _activation_bytes(shape: Shape, tokens: int, checkpointing: bool, act_bytes: int, lora_dropout: bool, hidden_bytes: int) -> float:
    """What the decoder layers keep for backward over `tokens`, plus the embeddings' output, the final norm and its gradient."""
    per_layer = activation_bytes_per_token_layer(shape, checkpointing, act_bytes, lora_dropout, hidden_bytes)
    activations = tokens * shape.layers * per_layer
    if checkpointing:  # one layer is recomputed in full during backward
        activations += tokens * activation_bytes_per_token_layer(shape, False, act_bytes, lora_dropout, hidden_bytes)
    return activations + tokens * shape.hidden * hidden_bytes * 3


def estimate(
    shape: Shape,
    *,
    quantization: str = "none",
    double_quant: bool = True,
    lora_r: int = 16,
    lora_target: str | Sequence[str] = "all-linear",
    optimizer: str = "adamw",
    batch_tokens: int = 2048,
    supervised_share: float = 0.4,
    answer_only_logits: bool = True,
    gradient_checkpointing: bool = False,
    precision: str = "bf16",
    lora_dropout: bool = True,
    shards: int = 1,
    device: str = "cuda",
    method: str = "lora",
    train_embeddings: bool = False,
) -> MemoryEstimate:
    """Predicted peak memory of one training step with these settings, on one GPU (or the CPU).

    Args:
        shards: processes the weights are sharded over (`sharding: fsdp`; 1 = each holds all).
            Each then keeps 1/shards of the decoder layers' weights and of the LoRA state, plus two
            layers gathered whole (the one computing and the one prefetched) and the root unit
            (embeddings, head, norms), which FSDP keeps gathered from forward through backward.
        batch_tokens: tokens in one micro-batch (all rows together).
        supervised_share: share of those tokens that carry a label (qdtool computes logits only
            there, core/loss.py's chunk of rows at a time, keeping each row's hidden-state gradient);
            ignored when `answer_only_logits` is False (the seed script's full logits at every token).
        device: "cuda" (peak reserved + CUDA context) or "cpu" (peak resident memory of the process).
        method: "lora", or "full" (the lora_* settings are then ignored; no quantization, no sharding).
        train_embeddings: under method full, whether the input embedding (and a head tied to it) trains too.
    """
    bytes_16 = 4 if precision == "fp32" else 2
    full = method == "full"
    if full and (quantization != "none" or shards > 1):
        raise ValueError("method full trains unquantized weights in one process each: quantization none, shards 1")
    if full:
        weights, lora, n_trainable = _full_weight_terms(shape, optimizer, bytes_16, train_embeddings)
    else:
        weights, lora, n_trainable = _lora_weight_terms(shape, quantization, double_quant, bytes_16, lora_r, lora_target, optimizer,
                                                        shards)
    hidden_bytes = 4 if full else bytes_16  # the residual stream's dtype: the embedding output's
    activations = _activation_bytes(shape, batch_tokens, gradient_checkpointing, bytes_16, lora_dropout and not full, hidden_bytes)
    # in fp32 the head's output is already fp32: no upcast copy
    per_logit = LOSS_BYTES_PER_LOGIT if precision != "fp32" else LOSS_BYTES_PER_LOGIT - 2
    if answer_only_logits:  # one chunk's logits at a time, plus the [answer tokens, hidden] gradient kept
        answer_rows = batch_tokens * supervised_share
        logits = min(answer_rows, chunk_rows(shape.vocab)) * shape.vocab * per_logit + answer_rows * shape.hidden * hidden_bytes
    else:
        logits = batch_tokens * shape.vocab * per_logit
    dequant = max(a * b for a, b in shape.linear_dims().values()) * bytes_16 if quantization != "none" else 0.0
    allocated = weights + lora + activations + logits + dequant
    overhead = allocated * (CPU_ALLOCATOR_OVERHEAD if device == "cpu" else ALLOCATOR_OVERHEAD)
    reserved = allocated + overhead
    context, runtime = (0.0, CPU_RUNTIME_GIB) if device == "cpu" else (CUDA_CONTEXT_GIB, 0.0)
    return MemoryEstimate(weights / GIB, lora / GIB, activations / GIB, logits / GIB, dequant / GIB, overhead / GIB,
                          reserved / GIB, context, reserved / GIB + context + runtime, 0 if full else n_trainable, shape.parameters,
                          runtime, method, n_trainable)
