"""core/hardware.py + core/presets.py with NVML mocked: 0, 1 and 2 GPUs of 8 to 80 GB."""

from __future__ import annotations

import sys
import types

import pytest

from qdtool.config import load_train_config
from qdtool.core.hardware import GpuInfo, HardwareReport, probe_hardware
from qdtool.core.memory import estimate
from qdtool.core.presets import (
    KNOWN_SHAPES,
    TIERS,
    choose_auto,
    load_preset,
    model_shape,
    plan_training,
    resolve_preset,
    typed_inputs,
)
from qdtool.errors import ConfigError

from conftest import GIB as GB
from conftest import fake_nvml


def _no_gpu(monkeypatch):
    def broken_init():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=broken_init))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


def test_no_gpu_reports_the_cpu(monkeypatch):
    _no_gpu(monkeypatch)
    report = probe_hardware()
    assert report.source == "none" and report.gpus == [] and report.cpu_cores >= 1 and report.ram_gib > 0
    choice = choose_auto(report)
    assert choice.name == "cpu" and choice.settings["model"] == "embedded" and choice.settings["quantization"] == "none"


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("size", [8, 12, 16, 24, 40, 80])
def test_auto_picks_settings_that_fit(monkeypatch, size, count):
    fake_nvml(monkeypatch, [size] * count)
    report = probe_hardware()
    assert report.source == "nvml" and len(report.gpus) == count and report.cuda == "12.6"
    choice = choose_auto(report)
    free = report.gpus[0].free_gib
    assert choice.estimate.total_gib <= free * 0.92 + 1e-9
    load_train_config(overrides=choice.settings)  # a valid training configuration
    recomputed = estimate(model_shape(choice.settings["model"]), quantization=choice.settings["quantization"],
                          batch_tokens=choice.settings["batch_tokens"], gradient_checkpointing=choice.settings["gradient_checkpointing"],
                          optimizer=choice.settings["optimizer"])
    assert recomputed.total_gib == pytest.approx(choice.estimate.total_gib)


@pytest.mark.parametrize("model", ["Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"])
def test_8gb_with_a_7b_8b_model_picks_4bit(monkeypatch, model):
    fake_nvml(monkeypatch, [8])
    choice = choose_auto(probe_hardware(), model=model)
    assert choice.settings["quantization"] == "4bit"
    assert choice.estimate.total_gib <= 8 * GB / 2**30 * 0.92


def test_big_gpus_avoid_4bit_and_checkpointing(monkeypatch):
    fake_nvml(monkeypatch, [80])
    choice = choose_auto(probe_hardware(), model="Qwen/Qwen2.5-7B-Instruct")
    assert (choice.settings["quantization"], choice.settings["gradient_checkpointing"]) == ("none", False)


def test_smallest_gpu_decides_and_nothing_fits_is_clear(monkeypatch):
    fake_nvml(monkeypatch, [80, 24])
    choice = choose_auto(probe_hardware(), model="Qwen/Qwen2.5-7B-Instruct")
    assert choice.estimate.total_gib <= 24 * GB / 2**30 * 0.92
    fake_nvml(monkeypatch, [4])
    with pytest.raises(ConfigError, match="does not fit .* even in 4-bit"):
        choose_auto(probe_hardware(), model="Qwen/Qwen2.5-14B-Instruct")


def test_a_model_too_big_for_each_gpu_is_sharded_over_all_of_them(monkeypatch):
    fake_nvml(monkeypatch, [12])
    with pytest.raises(ConfigError, match="does not fit"):
        choose_auto(probe_hardware(), model="Qwen/Qwen2.5-14B-Instruct")
    fake_nvml(monkeypatch, [12] * 8)
    choice = choose_auto(probe_hardware(), model="Qwen/Qwen2.5-14B-Instruct")
    assert (choice.settings["sharding"], choice.settings["quantization"]) == ("fsdp", "none")
    assert choice.estimate.total_gib <= (12 * GB / 2**30 - 0.3) * 0.92
    assert any("torchrun --nproc_per_node 8" in reason for reason in choice.reasons)
    assert choice.settings["optimizer"] == "adamw"  # the AdamW the sharded tests run
    assert any(reason.startswith("host RAM: each process loads the whole model") for reason in choice.reasons)
    load_train_config(overrides=choice.settings)  # a valid training configuration
    fake_nvml(monkeypatch, [80, 80])  # fits one GPU: plain DDP, no sharding
    assert "sharding" not in choose_auto(probe_hardware(), model="Qwen/Qwen2.5-14B-Instruct").settings


def test_max_seq_len_follows_the_data_p99(monkeypatch):
    fake_nvml(monkeypatch, [24])
    choice = choose_auto(probe_hardware(), p99_tokens=141)
    assert choice.settings["max_seq_len"] == 192 and choice.settings["batch_tokens"] >= 192


@pytest.mark.parametrize("tier", [t for t in TIERS if t != "cpu"])
def test_every_named_preset_fits_its_tier(tier):
    settings = load_preset(tier)
    config = load_train_config(overrides=settings)
    memory_gib = int(tier.removesuffix("gb")) * GB / 2**30
    est = estimate(KNOWN_SHAPES[config.model], quantization=config.quantization, batch_tokens=config.batch_tokens,
                   gradient_checkpointing=config.gradient_checkpointing, optimizer=config.optimizer, lora_r=config.lora_r)
    assert est.total_gib <= memory_gib * 0.95, est.to_dict()


def test_named_preset_keeps_a_given_model():
    choice = resolve_preset("12gb", probe_hardware(), {"model": "Qwen/Qwen2.5-1.5B-Instruct"})
    assert choice.settings["model"] == "Qwen/Qwen2.5-1.5B-Instruct" and choice.settings["quantization"] == "4bit"
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_preset("huge")


def test_auto_falls_back_to_a_smaller_tier_model_when_memory_is_taken(monkeypatch):
    fake_nvml(monkeypatch, [16], used_gib=11.0)  # a 16 GB card with 5 GiB free
    choice = choose_auto(probe_hardware())
    assert choice.settings["model"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert choice.estimate.total_gib <= 5 * 0.92


# --- plan_training: preset + YAML + flags, merged and validated once ---------------------------

SEVEN_B = "Qwen/Qwen2.5-7B-Instruct"


def _recomputed(config, precision="bf16", device="cuda"):
    """The estimate of a TrainConfig, computed here from memory.estimate (not through presets)."""
    return estimate(KNOWN_SHAPES[config.model], quantization=config.quantization, lora_r=config.lora_r, optimizer=config.optimizer,
                    batch_tokens=config.batch_tokens, gradient_checkpointing=config.gradient_checkpointing, precision=precision,
                    device=device)


@pytest.fixture
def validations(monkeypatch):
    """How many TrainConfig objects are validated (each construction runs every check)."""
    import qdtool.config as config

    count = {"n": 0}

    class Counted(config.TrainConfig):
        def __init__(self, **values):
            count["n"] += 1
            super().__init__(**values)

    monkeypatch.setattr(config, "TrainConfig", Counted)
    return count


def test_without_a_preset_the_file_lies_under_the_flags(tmp_path, monkeypatch, validations):
    monkeypatch.setattr("qdtool.core.hardware.probe_hardware", lambda: pytest.fail("no preset: no hardware probe"))
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1.0e-3\nlora_r: 8\n")
    config, choice = plan_training(None, path, {"lora_r": 32, "seed": None})
    assert choice is None and (config.lr, config.lora_r, config.seed) == (1e-3, 32, 42) and validations["n"] == 1


def test_a_named_preset_is_validated_once_merged_with_the_flags(monkeypatch, validations):
    monkeypatch.setattr("qdtool.core.hardware.probe_hardware", lambda: pytest.fail("a named preset needs no hardware probe"))
    # valid only merged: the cpu preset's max_seq_len 256 fits 300 batch tokens, the default 512 would not
    config, choice = plan_training("cpu", None, {"batch_tokens": 300})
    assert (config.batch_tokens, config.max_seq_len, config.lr) == (300, 256, 3e-4) and validations["n"] == 1
    assert choice.name == "cpu" and choice.estimate is None and choice.reasons == ["the cpu preset (configs/presets/cpu.yaml)"]


def test_every_problem_is_reported_once_and_together(monkeypatch, validations):
    fake_nvml(monkeypatch, [24])
    with pytest.raises(ConfigError) as info:
        plan_training("auto", None, {"model": SEVEN_B, "lora_r": 0, "lr": -1.0})
    message = str(info.value)
    assert message.count("invalid configuration") == 1 and "lora_r:" in message and "lr:" in message
    assert validations["n"] == 1


@pytest.mark.parametrize("override", [{}, {"lora_r": 64}, {"batch_tokens": 1024}, {"lora_target": ["q_proj", "v_proj"]}])
def test_auto_on_a_gpu_estimates_the_config_that_trains(monkeypatch, override, validations):
    fake_nvml(monkeypatch, [24])
    config, choice = plan_training("auto", None, {"model": SEVEN_B, **override})
    assert validations["n"] == 1 and all(getattr(config, k) == v for k, v in override.items())
    assert choice.name == "auto" and choice.estimate.total_gib <= choice.budget_gib
    expected = estimate(KNOWN_SHAPES[SEVEN_B], quantization=config.quantization, lora_r=config.lora_r, lora_target=config.lora_target,
                        optimizer=config.optimizer, batch_tokens=config.batch_tokens,
                        gradient_checkpointing=config.gradient_checkpointing, precision="bf16")
    assert choice.estimate.total_gib == pytest.approx(expected.total_gib)
    assert choice.estimate.lora_params == expected.lora_params
    if override:
        assert f"kept as given (--config, flags): {next(iter(override))} " in "; ".join(choice.reasons)


def test_an_override_changes_the_estimate_it_shows(monkeypatch):
    fake_nvml(monkeypatch, [80])  # room for all: the plan stays bf16 without checkpointing, only the override moves
    base, base_choice = plan_training("auto", None, {"model": SEVEN_B})
    wide, wide_choice = plan_training("auto", None, {"model": SEVEN_B, "lora_r": 128})
    short, short_choice = plan_training("auto", None, {"model": SEVEN_B, "batch_tokens": 1024})
    assert (base.quantization, wide.quantization, short.quantization) == ("none", "none", "none")
    assert wide_choice.estimate.lora_and_optimizer_gib == pytest.approx(8 * base_choice.estimate.lora_and_optimizer_gib)
    assert wide_choice.estimate.total_gib > base_choice.estimate.total_gib
    assert short_choice.estimate.activations_gib == pytest.approx(base_choice.estimate.activations_gib * 1024 / base.batch_tokens)
    assert short_choice.estimate.total_gib == pytest.approx(_recomputed(short).total_gib)


def test_auto_plans_around_the_values_given(monkeypatch, tmp_path):
    fake_nvml(monkeypatch, [24])
    path = tmp_path / "mine.yaml"
    path.write_text("quantization: none\ngradient_checkpointing: false\n")
    config, choice = plan_training("auto", path, {"model": SEVEN_B})
    assert (config.quantization, config.gradient_checkpointing, config.batch_tokens) == ("none", False, 512)
    assert choice.estimate.total_gib <= choice.budget_gib
    with pytest.raises(ConfigError, match=r"does not fit .* even unquantized without gradient checkpointing \(needs about \d+\.\d GiB\), "
                                          r"with the values given \(batch_tokens 4096, quantization none"):
        plan_training("auto", path, {"model": SEVEN_B, "batch_tokens": 4096})


def test_auto_on_a_cpu_is_the_cpu_preset_with_the_estimate_of_its_run(monkeypatch):
    _no_gpu(monkeypatch)
    config, choice = plan_training("auto", None, {"batch_tokens": 4096, "lora_r": 8})
    assert choice.name == "cpu" and (config.model, config.batch_tokens, config.lora_r, config.max_seq_len) == ("embedded", 4096, 8, 256)
    assert choice.estimate.cuda_context_gib == 0 and choice.budget_gib == probe_hardware().ram_gib
    precision = "bf16" if "bf16 on this CPU" in "; ".join(choice.reasons) else "fp32"
    expected = _recomputed(config, precision, device="cpu")  # the process's resident memory: no CUDA context
    assert choice.estimate.total_gib == pytest.approx(expected.total_gib)
    assert expected.total_gib == pytest.approx(expected.peak_reserved_gib + expected.runtime_gib)
    assert choice.reasons[0] == "max_seq_len 256: no data given, the cpu preset's"
    with pytest.raises(ConfigError, match="quantization 4bit needs a CUDA GPU"):
        plan_training("auto", None, {"quantization": "4bit"})


def test_auto_over_several_gpus_shards_and_says_how_to_launch(monkeypatch, validations):
    fake_nvml(monkeypatch, [12] * 8)
    config, choice = plan_training("auto", None, {"model": "Qwen/Qwen2.5-14B-Instruct"})
    assert (config.sharding, config.quantization, config.optimizer) == ("fsdp", "none", "adamw") and validations["n"] == 1
    expected = estimate(KNOWN_SHAPES[config.model], optimizer="adamw", batch_tokens=config.batch_tokens, shards=8,
                        gradient_checkpointing=config.gradient_checkpointing)
    assert choice.estimate.total_gib == pytest.approx(expected.total_gib) and choice.estimate.total_gib <= choice.budget_gib
    with pytest.raises(ConfigError, match=r"does not fit .* even in 4-bit with gradient checkpointing \(needs about [\d.]+ GiB\), "
                                          r"with the values given \(sharding none\)"):  # not tried, so not "nor sharded"
        plan_training("auto", None, {"model": "Qwen/Qwen2.5-14B-Instruct", "sharding": "none"})


def test_max_seq_len_is_cut_to_a_batch_tokens_given_and_bad_values_wait_for_validation():
    assert typed_inputs({"batch_tokens": "4096", "lora_r": 0, "lr": 1.0, "lora_target": "q_proj"}) == {"batch_tokens": 4096}
    hardware = HardwareReport("nvml", [GpuInfo(0, "Fake GPU 24GB", 24.0, 23.7, "8.9", True)])
    choice = choose_auto(hardware, model=SEVEN_B, p99_tokens=700, fixed={"batch_tokens": 512})
    assert choice.settings["max_seq_len"] == 512 and choice.settings["batch_tokens"] == 512
    assert choice.reasons[1] == ("max_seq_len 512: the data's p99 sample is 700 tokens, rounded up to a multiple of 64, "
                                 "cut to the batch_tokens given (512)")


def test_auto_with_method_full_plans_unquantized_unsharded_and_estimates_full_fine_tuning(monkeypatch):
    """A small GPU where auto would pick 4-bit for LoRA: full fine-tuning never gets it (nor FSDP), and its estimate is
    of the full run's terms, higher than LoRA's."""
    fake_nvml(monkeypatch, [8, 8])
    report = probe_hardware()
    fixed = typed_inputs({"method": "full", "model": "embedded"})
    assert fixed == {"method": "full", "model": "embedded"}
    choice = choose_auto(report, fixed=fixed)
    assert (choice.settings["quantization"], choice.settings.get("sharding", "none")) == ("none", "none")
    assert choice.estimate.method == "full" and choice.estimate.trainable_params == KNOWN_SHAPES["embedded"].parameters - 262144 * 640
    config, planned = plan_training("auto", None, {"method": "full", "model": "embedded"}, hardware=report)
    assert config.method == "full" and planned.estimate.method == "full"
    lora = choose_auto(report, fixed={"model": "embedded"})
    assert planned.estimate.lora_and_optimizer_gib > 10 * lora.estimate.lora_and_optimizer_gib
    fake_nvml(monkeypatch, [3])  # LoRA fits in 4-bit here; full fine-tuning does not fit, and is never planned in 4-bit
    assert choose_auto(probe_hardware(), fixed={"model": "embedded"}).settings["quantization"] in ("none", "4bit")
    with pytest.raises(ConfigError, match=r"embedded does not fit in 2\.7 GiB free .* even unquantized .*method full"):
        choose_auto(probe_hardware(), fixed=fixed)
