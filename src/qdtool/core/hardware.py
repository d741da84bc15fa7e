"""What hardware is here: GPUs through NVML (pynvml), else torch.cuda, else a CPU report."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass
class GpuInfo:
    index: int
    name: str
    total_gib: float
    free_gib: float
    compute_capability: str  # "8.9"
    bf16: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HardwareReport:
    source: Literal["nvml", "torch", "none"]
    gpus: list[GpuInfo] = field(default_factory=list)
    driver: str | None = None
    cuda: str | None = None
    cpu_cores: int = 1
    ram_gib: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gpus": [g.to_dict() for g in self.gpus]}


def _ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 0.0


def _from_nvml() -> HardwareReport | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...: no NVIDIA GPU here
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(GpuInfo(index, name.decode() if isinstance(name, bytes) else name, memory.total / 2**30,
                                memory.free / 2**30, f"{major}.{minor}", major >= 8))
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return HardwareReport("nvml", gpus, driver.decode() if isinstance(driver, bytes) else driver,
                              f"{cuda // 1000}.{cuda % 1000 // 10}", os.cpu_count() or 1, _ram_gib())
    finally:
        pynvml.nvmlShutdown()


def _from_torch() -> HardwareReport | None:
    import torch

    if not torch.cuda.is_available():
        return None
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(GpuInfo(index, props.name, total / 2**30, free / 2**30, f"{props.major}.{props.minor}", props.major >= 8))
    return HardwareReport("torch", gpus, None, torch.version.cuda, os.cpu_count() or 1, _ram_gib())


def probe_hardware() -> HardwareReport:
    """GPUs (NVML first, torch.cuda second) and the CPU; never raises for missing GPUs."""
    return _from_nvml() or _from_torch() or HardwareReport("none", [], None, None, os.cpu_count() or 1, _ram_gib())
