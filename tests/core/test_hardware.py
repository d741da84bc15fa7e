"""core/hardware.py: the machine probe without GPUs, the device torch sees, and the one precision rule."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from qdtool.config import TrainConfig
from qdtool.core import hardware
from qdtool.core.hardware import Device, cpu_has_fast_bf16, decide_precision, probe_hardware, select_device, torch_dtype
from qdtool.errors import ConfigError, UsageError


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch sees one CUDA GPU; `bf16` says whether it has bf16 (a T4 has not)."""

    def install(name: str = "Tesla T4", bf16: bool = False) -> None:
        monkeypatch.setattr("torch.cuda.is_available", lambda: True)
        monkeypatch.setattr("torch.cuda.get_device_name", lambda index=0: name)
        monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *a, **k: bf16)

    return install


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


@pytest.mark.parametrize("nvml", ["missing", "no driver"])
def test_probe_without_gpus_reports_the_cpu(monkeypatch, no_gpu, nvml):
    def broken_init():
        raise RuntimeError("NVML Shared Library Not Found")

    # None in sys.modules makes `import pynvml` raise ImportError
    monkeypatch.setitem(sys.modules, "pynvml", None if nvml == "missing" else types.SimpleNamespace(nvmlInit=broken_init))
    report = probe_hardware()
    assert (report.source, report.gpus, report.driver, report.cuda) == ("none", [], None, None)
    assert report.cpu_cores >= 1 and report.ram_gib > 0
    assert report.to_dict()["gpus"] == [] and report.to_dict()["source"] == "none"


@pytest.mark.parametrize(("avx512", "amx", "fast"), [(False, False, False), (True, False, True), (False, True, True)])
def test_cpu_bf16_probe_asks_avx512_bf16_and_amx(monkeypatch, avx512, amx, fast):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_has_fast_bf16() is fast


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_cpu_is_bf16_only_where_it_is_native(monkeypatch, native, expected):
    assert decide_precision("auto", "cpu", bf16=native) == expected
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: native)
    assert decide_precision("auto", "cpu") == expected  # bf16 not given: the CPU is probed


def test_a_cpu_runs_the_precision_it_is_asked_for_except_fp16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: pytest.fail("an explicit precision needs no probe"))
    assert decide_precision("bf16", "cpu", bf16=False) == "bf16"  # emulated, but it runs
    assert decide_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ConfigError, match="^fp16 training on CPU is not supported; use --precision fp32 or bf16$"):
        decide_precision("fp16", "cpu")


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_a_cpu_refuses_quantization(quantization):
    with pytest.raises(ConfigError, match=f"quantization {quantization} needs a CUDA GPU.*--quantization none"):
        decide_precision("auto", "cpu", bf16=True, quantization=quantization)


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"])
def test_a_cpu_refuses_bitsandbytes_optimizers(optimizer):
    with pytest.raises(ConfigError, match=f"optimizer {optimizer} needs a CUDA GPU.*--optimizer adamw"):
        decide_precision("fp32", "cpu", optimizer=optimizer)
    assert decide_precision("fp32", "cpu", optimizer="adamw_fused") == "fp32"


@pytest.mark.parametrize(("bf16", "sharding", "expected"), [
    (True, "none", "bf16"), (True, "fsdp", "bf16"),
    (False, "none", "fp16"),
    (False, "fsdp", "fp32"),  # FSDP has no sharded gradient scaler: never fp16
])
def test_auto_on_a_gpu(bf16, sharding, expected):
    assert decide_precision("auto", "cuda", bf16=bf16, sharding=sharding) == expected


def test_a_gpu_runs_what_it_has_and_refuses_bf16_without_it():
    assert decide_precision("fp16", "cuda", bf16=False) == "fp16"
    assert decide_precision("fp32", "cuda", bf16=False) == "fp32"
    assert decide_precision("bf16", "cuda", bf16=True, quantization="4bit", optimizer="paged_adamw_8bit") == "bf16"
    with pytest.raises(ConfigError, match=r"^Tesla T4 does not support bf16; use --precision fp16 \(or auto\)$"):
        decide_precision("bf16", "cuda", bf16=False, name="Tesla T4")


def test_select_device_on_a_cpu(no_gpu, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert select_device() == Device("cpu", "fp32", "CPU")
    assert select_device(TrainConfig(precision="bf16")) == Device("cpu", "bf16", "CPU")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        select_device(TrainConfig(quantization="4bit"))
    with pytest.raises(UsageError, match="^--device cuda: no CUDA GPU is visible$"):
        select_device(device="cuda")


def test_select_device_on_a_gpu_follows_the_config(fake_gpu):
    """A T4 has no bf16: auto trains in fp16, under FSDP in fp32 (no sharded gradient scaler)."""
    fake_gpu("Tesla T4", bf16=False)
    assert select_device(TrainConfig()) == Device("cuda", "fp16", "Tesla T4")
    assert select_device(TrainConfig(sharding="fsdp")).precision == "fp32"
    assert select_device().precision == "fp16"  # inference: auto
    with pytest.raises(ConfigError, match="Tesla T4 does not support bf16"):
        select_device(TrainConfig(precision="bf16"))
    fake_gpu("NVIDIA H100", bf16=True)
    assert select_device(TrainConfig(quantization="4bit", optimizer="paged_adamw_8bit")) == Device("cuda", "bf16", "NVIDIA H100")


def test_select_device_cpu_ignores_a_visible_gpu(fake_gpu, monkeypatch):
    fake_gpu("NVIDIA H100", bf16=True)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    assert select_device(device="cpu") == Device("cpu", "bf16", "CPU")
    with pytest.raises(UsageError, match=r"^--device must be auto, cpu or cuda \(got gpu\)$"):
        select_device(device="gpu")


def test_dtypes():
    assert [torch_dtype(p) for p in ("bf16", "fp16", "fp32")] == [torch.bfloat16, torch.float16, torch.float32]
    assert Device("cuda", "bf16", "x", index=3).dtype == torch.bfloat16
    with pytest.raises(KeyError):
        torch_dtype("int8")
