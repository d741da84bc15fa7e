"""What hardware is here, and the one rule for the precision to compute in.

`probe_hardware` reports the machine (GPUs through NVML, else torch.cuda; the CPU and RAM) for
planning; `select_device` is the device this process computes on, as torch sees it; both decide
precision with `decide_precision`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from qdtool.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from qdtool.config import TrainConfig

Precision = Literal["bf16", "fp16", "fp32"]
BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")  # bitsandbytes: CUDA only


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


def torch_dtype(precision: str) -> Any:
    """The torch dtype of a precision name (bf16, fp16, fp32)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


@dataclass(frozen=True)
class Device:
    """The device this process computes on (training, generation), and the precision it computes in."""

    device: Literal["cuda", "cpu"]
    precision: Precision
    name: str  # "NVIDIA H100 80GB HBM3", "CPU"
    index: int = 0  # the CUDA device this process uses (its LOCAL_RANK under torchrun)

    @property
    def dtype(self) -> Any:
        return torch_dtype(self.precision)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX)."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def decide_precision(requested: str = "auto", device: str = "cpu", *, bf16: bool | None = None, name: str = "",
                     sharding: str = "none", quantization: str = "none", optimizer: str = "adamw") -> Precision:
    """The precision to compute in; asking for what the device lacks is a ConfigError.

    `auto` is bf16 where the device has it, else fp16 on a GPU (fp32 under FSDP, which has no sharded
    gradient scaler) and fp32 on a CPU. A CPU runs bf16 whenever asked, but `auto` takes it only where
    it is native (bf16 matmuls run ~4x faster than fp32 there).

    Args:
        bf16: whether the device has bf16 (a GPU: as its probe says; a CPU: natively); None on a CPU: probe it.
        name: the device's name, for messages.

    Raises:
        ConfigError: quantization or a bitsandbytes optimizer without CUDA; fp16 on a CPU; bf16 on a GPU without it.
    """
    if device == "cpu":
        if quantization != "none":
            raise ConfigError(
                f"quantization {quantization} needs a CUDA GPU (bitsandbytes); this machine has none. "
                "Use --quantization none (configs/cpu.yaml), or run on a GPU."
            )
        if optimizer in BNB_OPTIMIZERS:
            raise ConfigError(f"optimizer {optimizer} needs a CUDA GPU (bitsandbytes); on CPU use --optimizer adamw")
        if requested == "fp16":
            raise ConfigError("fp16 training on CPU is not supported; use --precision fp32 or bf16")
        if requested != "auto":
            return requested  # type: ignore[return-value]
        return "bf16" if (cpu_has_fast_bf16() if bf16 is None else bf16) else "fp32"
    if requested == "auto":
        return "bf16" if bf16 else ("fp32" if sharding == "fsdp" else "fp16")
    if requested == "bf16" and not bf16:
        raise ConfigError(f"{name or 'this GPU'} does not support bf16; use --precision fp16 (or auto)")
    return requested  # type: ignore[return-value]


def select_device(config: TrainConfig | None = None, *, device: str = "auto") -> Device:
    """The device this process computes on and its precision: a CUDA GPU where torch sees one (and
    `device` allows it), else the CPU; the precision from `config` (None: auto, for inference).

    Raises:
        UsageError: `device` is not auto, cpu or cuda, or cuda when torch sees no GPU.
        ConfigError: the config asks for what the device lacks (see `decide_precision`).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda (got {device})")
    import torch

    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise UsageError("--device cuda: no CUDA GPU is visible")
    asked = {} if config is None else {"requested": config.precision, "sharding": config.sharding,
                                       "quantization": config.quantization, "optimizer": config.optimizer}
    if cuda and device != "cpu":
        name = torch.cuda.get_device_name(0)
        return Device("cuda", decide_precision(device="cuda", bf16=torch.cuda.is_bf16_supported(), name=name, **asked), name)
    return Device("cpu", decide_precision(device="cpu", **asked), "CPU")
