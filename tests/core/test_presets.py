"""core/hardware.py + core/presets.py with NVML mocked: 0, 1 and 2 GPUs of 8 to 80 GB."""

from __future__ import annotations

import sys
import types

import pytest

from qdtool.config import load_train_config
from qdtool.core.hardware import probe_hardware
from qdtool.core.memory import estimate
from qdtool.core.presets import KNOWN_SHAPES, TIERS, choose_auto, load_preset, model_shape, resolve_preset
from conftest import GIB as GB
from conftest import fake_nvml
from qdtool.errors import ConfigError


def test_no_gpu_reports_the_cpu(monkeypatch):
    def broken_init():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=broken_init))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
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
    choice = resolve_preset("12gb", probe_hardware(), model="Qwen/Qwen2.5-1.5B-Instruct")
    assert choice.settings["model"] == "Qwen/Qwen2.5-1.5B-Instruct" and choice.settings["quantization"] == "4bit"
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_preset("huge")


def test_auto_falls_back_to_a_smaller_tier_model_when_memory_is_taken(monkeypatch):
    fake_nvml(monkeypatch, [16], used_gib=11.0)  # a 16 GB card with 5 GiB free
    choice = choose_auto(probe_hardware())
    assert choice.settings["model"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert choice.estimate.total_gib <= 5 * 0.92
