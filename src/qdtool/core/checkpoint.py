"""Checkpoints that survive a kill: written to a temp dir, then renamed; the newest K are kept.

A checkpoint holds the LoRA weights (safetensors), the optimizer and scheduler states, the RNG
states and the step. Restoring all of them makes a resumed run continue the same loss curve.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

_STATE = "trainer_state.json"  # written last inside the temp dir: marks a complete checkpoint
_PREFIX = "step-"


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / _STATE).is_file()


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and is_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def drop_after(root: Path, step: int) -> None:
    """Remove checkpoints newer than `step` (a resume from an older one abandons them)."""
    for path in checkpoint_dirs(root):
        if int(path.name[len(_PREFIX):]) > step:
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    root: Path, step: int, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any], keep: int, scaler: Any = None,
    *, adapter_state: dict[str, Any] | None = None, optimizer_state: dict[str, Any] | None = None,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint; `adapter_state` / `optimizer_state` replace the model's and optimizer's own
    (FSDP: the states gathered whole from every process, see core/sharding.py); `rng_states` holds
    every process's RNG state (`rng_state()`), in rank order, when there are several."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:07d}"
    for stale in root.glob(".tmp-*"):  # left by a killed save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    if adapter_state is None:
        adapter_state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    save_file(adapter_state, str(tmp / "adapter.safetensors"))
    torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    rng = rng_state()
    if rng_states is not None and len(rng_states) > 1:
        rng["ranks"] = rng_states
    torch.save(rng, tmp / "rng.pt")
    (tmp / _STATE).write_text(json.dumps({**state, "step": step}, indent=2), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def saved_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer state (step, losses so far, and how many processes wrote it)."""
    return json.loads((path / _STATE).read_text(encoding="utf-8"))


def rng_state() -> dict[str, Any]:
    """This process's random number generators (dropout masks come from them)."""
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_adapter(path: Path, model: Any) -> None:
    """The checkpoint's LoRA weights into `model` (before FSDP shards it, when it does)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter.safetensors")))


def load_checkpoint(
    path: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any = None, *, load_optimizer: Any = None,
    rank: int = 0, world: int = 1,
) -> dict[str, Any]:
    """Restore a checkpoint into live objects; returns its trainer state (with `step`).

    `model` None skips the adapter (already loaded with `load_adapter`); `load_optimizer` replaces
    `optimizer.load_state_dict` (FSDP: a whole state into a sharded optimizer). Process `rank` of
    `world` takes its own RNG state when the checkpoint was written by as many processes.
    """
    import torch

    if model is not None:
        load_adapter(path, model)
    (load_optimizer or optimizer.load_state_dict)(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and (path / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)  # our own file: RNG states include a Python tuple
    if len(rng.get("ranks", [])) == world:
        rng = rng["ranks"][rank]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return saved_state(path)
