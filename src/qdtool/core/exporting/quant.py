"""The number formats of an export: f16, bf16 and q8_0 bytes, and the values each gives back.

q8_0 is llama.cpp's 8-bit format: each run of 32 values along a row becomes one block of an fp16
scale d = max|x| / 127 and 32 int8s q = round(x / d), read back as d * q. It is written here with
numpy from that definition; `gguf` (llama.cpp's reader, which transformers uses) decodes it, so a
mistake here cannot hide behind the same mistake in the reader.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qdtool.errors import ModelError

OUTTYPES = ("f16", "bf16", "q8_0")
Q8_0_BLOCK = 32  # values per block
Q8_0_BYTES = 2 + Q8_0_BLOCK  # fp16 scale + 32 int8
F16_MAX = 65504.0


def tensor_type(shape: tuple[int, ...], outtype: str) -> str:
    """The format one tensor is stored in: vectors (norms, biases) stay f32, as llama.cpp keeps them;
    a q8_0 matrix whose rows are not whole blocks falls back to f16."""
    if len(shape) < 2:
        return "f32"
    if outtype == "q8_0" and shape[-1] % Q8_0_BLOCK != 0:
        return "f16"
    return outtype


def nbytes(shape: tuple[int, ...], kind: str) -> int:
    count = int(np.prod(shape))
    if kind == "q8_0":
        return count // Q8_0_BLOCK * Q8_0_BYTES
    return count * (4 if kind == "f32" else 2)


def byte_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """The shape of `encode`'s uint8 array for bf16 / q8_0 (gguf takes it with the format's type)."""
    if kind == "q8_0":
        return (*shape[:-1], shape[-1] // Q8_0_BLOCK * Q8_0_BYTES)
    return (*shape[:-1], shape[-1] * 2)


def quantize_q8_0(values: np.ndarray) -> np.ndarray:
    """float32 (..., n) with n a multiple of 32 -> uint8 (..., n / 32 * 34): per block the fp16 scale, then 32 int8s."""
    blocks = np.asarray(values, dtype=np.float32).reshape(-1, Q8_0_BLOCK)
    scale = np.abs(blocks).max(axis=1) / 127.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    quants = np.clip(np.rint(blocks * inverse[:, None]), -127, 127).astype(np.int8)
    out = np.empty((blocks.shape[0], Q8_0_BYTES), dtype=np.uint8)
    out[:, :2] = scale.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = quants.view(np.uint8)
    return out.reshape(byte_shape(values.shape, "q8_0"))


def dequantize_q8_0(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 values q8_0 bytes stand for (d * q), in `shape`."""
    blocks = np.ascontiguousarray(data).reshape(-1, Q8_0_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
    quants = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (scale * quants).reshape(shape)


def _bf16_bytes(values: np.ndarray) -> np.ndarray:
    import torch

    halves = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)  # round to nearest even
    return halves.view(torch.int16).numpy().view(np.uint8).reshape(byte_shape(values.shape, "bf16"))


def encode(values: np.ndarray, kind: str, name: str = "") -> np.ndarray:
    """The bytes (as the array gguf writes) of a float32 tensor in format `kind`.

    Raises:
        ModelError: f16 cannot hold the values (they overflow to infinity).
    """
    if kind == "f32":
        return np.ascontiguousarray(values, dtype=np.float32)
    if kind == "f16":
        peak = float(np.abs(values).max()) if values.size else 0.0
        if not peak <= F16_MAX:
            raise ModelError(f"{name} holds values up to {peak:.4g}, beyond f16's range (65504): they would become infinite; "
                             "export with --outtype bf16")
        return values.astype(np.float16)
    if kind == "bf16":
        return _bf16_bytes(values)
    return quantize_q8_0(values)


def decode(data: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 values of `encode`'s output: what a reader of the file gets back."""
    if kind in ("f32", "f16"):
        return np.asarray(data, dtype=np.float32).reshape(shape)
    if kind == "bf16":
        bits = np.ascontiguousarray(data).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return dequantize_q8_0(data, shape)


def round_trip(values: np.ndarray, kind: str, name: str = "") -> np.ndarray:
    """`values` as they come back from the file in format `kind`: the outtype's own rounding."""
    return decode(encode(values, kind, name), kind, values.shape)


def as_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as float32 numpy (bf16 has no numpy type, so everything goes through float32)."""
    return tensor.detach().to("cpu").float().numpy()
