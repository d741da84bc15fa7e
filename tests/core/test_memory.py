"""core/memory.py: parameter counts against real models, terms against hand computation, and the
calibration points recorded in shared/BENCH.md."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from qdtool.config import TrainConfig
from qdtool.core.lora import add_lora
from qdtool.core.memory import GIB, Shape, activation_bytes_per_token_layer, estimate, lora_params, weight_bytes
from qdtool.core.presets import model_shape

from conftest import build_tiny_model


def test_parameter_and_lora_counts_match_real_models():
    model = build_tiny_model(600)
    shape = Shape.from_config(model.config)
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    peft = add_lora(model, TrainConfig(lora_r=8))
    assert lora_params(shape, 8) == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert lora_params(shape, 8, ["q_proj", "v_proj"]) == 2 * 8 * ((64 + 64) + (64 + 32))


def test_tiny_shape_by_hand():
    # hidden 64, inter 128, 2 layers, 4 heads of 16, 2 kv heads, vocab 600, untied
    shape = Shape(64, 128, 2, 4, 2, 16, 600, False)
    linear = 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128)  # = 2 * 36864
    assert shape.linear_params == linear == 73728
    assert shape.embedding_params == 2 * 600 * 64
    assert weight_bytes(shape, "none") == 2 * shape.parameters
    nf4_dq = linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + (shape.embedding_params + shape.norm_params) * 2
    assert weight_bytes(shape, "4bit", double_quant=True) == pytest.approx(nf4_dq)
    nf4 = linear * (0.5 + 4 / 64) + (shape.embedding_params + shape.norm_params) * 2
    assert weight_bytes(shape, "4bit", double_quant=False) == pytest.approx(nf4)
    # activations per token and layer, no checkpointing, bf16, LoRA dropout:
    # 4h + (h + q + h + i) + (2q + 2kv) + 3i elements x 2 B, plus (3h + q + 2h + i) x 3 B
    h, i, q, kv = 64, 128, 64, 32
    expected = (4 * h + (h + q + h + i) + (2 * q + 2 * kv) + 3 * i) * 2 + (3 * h + q + 2 * h + i) * 3
    assert activation_bytes_per_token_layer(shape, False) == expected
    assert activation_bytes_per_token_layer(shape, True) == h * 2


def test_fsdp_shards_layers_and_lora_but_keeps_the_root_whole():
    shape = Shape(64, 128, 2, 4, 2, 16, 600, False)
    whole, sharded = estimate(shape, batch_tokens=256), estimate(shape, batch_tokens=256, shards=4)
    root = (2 * 600 * 64 + 64) * 2  # embeddings + untied head + final norm, bf16: gathered through forward and backward
    layer = (36864 + 2 * 64) * 2  # one decoder layer's linears and its two norms
    assert whole.weights_gib * GIB == 2 * shape.parameters == root + 2 * layer
    assert sharded.weights_gib * GIB == pytest.approx(2 * layer / 4 + 2 * layer + root)  # own shard + two layers gathered
    assert sharded.lora_and_optimizer_gib == pytest.approx(whole.lora_and_optimizer_gib / 4)
    assert (sharded.activations_gib, sharded.logits_and_loss_gib) == (whole.activations_gib, whole.logits_and_loss_gib)
    big = model_shape("Qwen/Qwen2.5-14B-Instruct")  # where sharding pays: 8 GPUs hold well under 1/2 each
    assert estimate(big, shards=8).weights_gib < estimate(big).weights_gib / 2


def test_terms_add_up_and_logits_follow_the_supervised_share():
    shape = Shape(64, 128, 2, 4, 2, 16, 600, False)
    e = estimate(shape, batch_tokens=1000, supervised_share=0.25)
    # 250 answer rows fit one chunk of the small vocab: their logits, plus the kept [rows, hidden] gradient
    assert e.logits_and_loss_gib * GIB == pytest.approx(250 * 600 * 14 + 250 * 64 * 2)
    full = estimate(shape, batch_tokens=1000, answer_only_logits=False)
    assert full.logits_and_loss_gib * GIB == pytest.approx(1000 * 600 * 14)  # the seed's logits at every token
    gemma = Shape(640, 2048, 18, 4, 1, 256, 262_144, True)  # a big vocab: one 32-row chunk, however many answer rows
    small, big = (estimate(gemma, batch_tokens=n, supervised_share=0.5).logits_and_loss_gib * GIB for n in (1024, 8192))
    assert small == pytest.approx(32 * 262_144 * 14 + 512 * 640 * 2)
    assert big - small == pytest.approx((4096 - 512) * 640 * 2)
    parts = e.weights_gib + e.lora_and_optimizer_gib + e.activations_gib + e.logits_and_loss_gib + e.dequant_buffer_gib + e.overhead_gib
    assert e.peak_reserved_gib == pytest.approx(parts)
    assert e.total_gib == pytest.approx(e.peak_reserved_gib + e.cuda_context_gib)
    cpu = estimate(shape, batch_tokens=1000, supervised_share=0.25, device="cpu")
    assert cpu.cuda_context_gib == 0 and cpu.runtime_gib > 0
    assert cpu.total_gib == pytest.approx(cpu.peak_reserved_gib + cpu.runtime_gib)
    assert estimate(shape, optimizer="paged_adamw_8bit").lora_and_optimizer_gib < e.lora_and_optimizer_gib


@pytest.mark.parametrize(
    ("spec", "measured"),
    [
        (dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
              num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True), 14.8),
        (dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
              num_key_value_heads=32, vocab_size=32000), 30.6),
        (dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
              num_key_value_heads=4, vocab_size=152064), 36.1),
    ],
    ids=["qwen2.5-1.5b", "llama-2-7b", "qwen2.5-7b"],
)
def test_calibration_points_from_bench_md(spec, measured):
    """Peaks recorded in shared/BENCH.md (H200, bf16, LoRA r16 all-linear, 2,048 tokens/step, full
    logits): within 10%, and never under by more than 5%."""
    spec = dict(spec)
    shape = Shape.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    predicted = estimate(shape, batch_tokens=2048, answer_only_logits=False).peak_reserved_gib
    assert -0.05 <= predicted / measured - 1 <= 0.10


@pytest.mark.parametrize(("batch_tokens", "measured"), [(1024, 3.37), (2048, 4.82)])
def test_cpu_calibration_points_from_docs_benchmarks(batch_tokens, measured):
    """Peak RSS of training the embedded model on this project's CPU (bf16, LoRA r16 all-linear,
    docs/benchmarks.md "Training memory"): within 10%, as probe-gpu reports it on a CPU."""
    predicted = estimate(model_shape("embedded"), batch_tokens=batch_tokens, precision="bf16", device="cpu").total_gib
    assert abs(predicted / measured - 1) <= 0.10


def test_full_fine_tuning_terms_by_hand():
    """Method full on a small tied architecture: fp32 master weights + grads + 2 AdamW states (16 B) for every trainable
    weight, the frozen embedding in fp32, bf16 autocast copies of the matmul weights, an fp32 residual stream."""
    from qdtool.core.lora import make_trainable
    from qdtool.core.memory import full_trainable_params

    shape = Shape(64, 128, 2, 4, 2, 16, 600, True)  # linears 73,728; embedding = head 38,400; norms 320
    assert shape.parameters == 112_448
    e = estimate(shape, method="full", batch_tokens=1000, supervised_share=0.25)
    assert (e.method, e.trainable_params, e.lora_params) == ("full", 112_448 - 38_400, 0)
    assert e.lora_and_optimizer_gib * GIB == 74_048 * (4 + 4 + 8)
    assert e.weights_gib * GIB == 38_400 * 4 + (73_728 + 38_400) * 2
    # per token and layer: 4h residual/norm elements in fp32, the rest of the LoRA formula's in bf16, no dropout copies
    per_layer = 4 * 64 * 4 + ((64 + 64 + 64 + 128) + (2 * 64 + 2 * 32) + 3 * 128) * 2
    assert e.activations_gib * GIB == 1000 * 2 * per_layer + 1000 * 64 * 4 * 3
    assert e.logits_and_loss_gib * GIB == pytest.approx(250 * 600 * 14 + 250 * 64 * 4)
    everything = estimate(shape, method="full", train_embeddings=True)
    assert everything.lora_and_optimizer_gib * GIB == 112_448 * 16 and everything.weights_gib * GIB == (73_728 + 38_400) * 2
    fp32 = estimate(shape, method="full", precision="fp32")
    assert fp32.weights_gib * GIB == 38_400 * 4  # no autocast copies
    assert estimate(shape, method="full", optimizer="adamw_8bit").lora_and_optimizer_gib * GIB == 74_048 * (4 + 4 + 2)
    with pytest.raises(ValueError, match="method full"):
        estimate(shape, method="full", quantization="4bit")
    # the count is what full fine-tuning really trains
    model = make_trainable(build_tiny_model(600, tied=True), TrainConfig(method="full"))
    assert full_trainable_params(shape) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert Shape.from_config(model.config) == shape
    gemma = model_shape("embedded")  # full costs more than LoRA there, by about the 100M trained weights' 16 bytes each
    extra = estimate(gemma, method="full", device="cpu").total_gib - estimate(gemma, device="cpu").total_gib
    assert 1.5 < extra < 3.5
