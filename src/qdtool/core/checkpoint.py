"""Checkpoints that survive a kill: written to a temp dir, then renamed; the newest K are kept.

A checkpoint holds the trainable weights (the LoRA adapters, or under method full every weight that
trains, as named in model.state_dict()), the optimizer, scheduler and scaler states, the RNG states,
the step, and a fingerprint of the data it trained on. Restoring all of them makes a resumed run
continue the same loss curve.

Nothing in a checkpoint can carry code: every part is a safetensors file (tensors) whose metadata
holds the rest of the state as JSON (numbers, strings, lists, tuples, dicts), and
trainer_state.json is plain JSON. No pickle is ever loaded, so a run directory from someone else
can be resumed without running anything planted in it. Checkpoints of format 1 (torch pickles,
`.pt`) are refused, never read.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from itertools import zip_longest
from pathlib import Path
from typing import Any

from qdtool.core.files import DamagedFileError, atomic_dir, dump_json, read_json, remove_stale_temps
from qdtool.errors import TrainingError

FORMAT = 2  # 1 was torch pickles (.pt): unpickling can run code, so those are refused
_STATE = "trainer_state.json"  # written last inside the temp dir: marks a complete checkpoint
_PREFIX = "step-"
_ADAPTER = "adapter.safetensors"  # the trainable weights: LoRA adapters, or whole weights (method full)
_PARTS = ("optimizer", "scheduler", "rng")  # scaler.safetensors too, under fp16
_TREE = "qdtool_state"  # safetensors metadata key: the part's structure as JSON
_TAGS = {"__tensor__", "__tuple__", "__dict__"}
_START_OVER = "pass --overwrite to start over, or train into a new --output-dir"


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / _STATE).is_file()


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit() and is_checkpoint(p)]
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
    every process's RNG state (`rng_state()`), in rank order, when there are several.

    Raises:
        WriteError: the disk is full or read-only; the partial checkpoint is removed, older ones are kept.
    """
    from safetensors.torch import save

    if adapter_state is None:
        adapter_state = trainable_state(model)
    rng = rng_state()
    if rng_states is not None and len(rng_states) > 1:
        rng["ranks"] = rng_states
    parts = {"optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng}
    if scaler is not None:
        parts["scaler"] = scaler.state_dict()
    # Serialized one file at a time: a full fine-tuning run's weights and AdamW states are GBs, and
    # holding every file's bytes at once would add them all to the peak memory.
    files = {_ADAPTER: lambda: save(adapter_state)}
    files.update({f"{name}.safetensors": (lambda value=value: _pack(value)) for name, value in parts.items()})
    files[_STATE] = lambda: dump_json({**state, "step": step, "format": FORMAT}).encode("utf-8")  # last: marks it complete

    final = root / f"{_PREFIX}{step:07d}"
    remove_stale_temps(root)  # left by a killed or failed save of any step, not only this one
    needed = _tensor_bytes(adapter_state) + _tensor_bytes(parts) + 2**16  # + headers and metadata, about
    with atomic_dir(final, needed_bytes=needed) as tmp:
        for name, serialize in files.items():
            (tmp / name).write_bytes(serialize())
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def trainable_state(model: Any) -> dict[str, Any]:
    """The weights a checkpoint keeps, on the CPU: the LoRA adapters as PEFT names them, or (method full,
    a model without PEFT) every trainable weight, named as in model.state_dict()."""
    if _is_peft(model):
        from peft import get_peft_model_state_dict

        return {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def _tensor_bytes(tree: Any) -> int:
    """Bytes of the tensors in a state tree (what its safetensors files hold, less headers)."""
    import torch

    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_tensor_bytes(v) for v in tree)
    return 0


def saved_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer state (step, losses so far, how many processes wrote it, its data)."""
    try:
        state = read_json(path / _STATE)
    except OSError as exc:
        raise _damaged(path / _STATE, exc) from None
    except DamagedFileError as exc:
        raise _damaged(path / _STATE, exc.__cause__ or exc) from None
    if not isinstance(state, dict):
        raise _damaged(path / _STATE, ValueError(f"a JSON object was expected, not {type(state).__name__}"))
    return state


def resumable_state(path: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint this qdtool can resume from (cheap: reads no tensors).

    Raises:
        TrainingError: an old pickle checkpoint (never loaded), another format, or a part missing.
    """
    state = saved_state(path)
    if "format" not in state:
        raise TrainingError(
            f"{path} was written by an older qdtool as torch pickle files (.pt), which can run code when loaded, so "
            f"qdtool no longer reads them; {_START_OVER}"
        )
    if state["format"] != FORMAT:
        raise TrainingError(f"{path} has checkpoint format {state['format']!r}; this qdtool reads format {FORMAT}; {_START_OVER}")
    missing = [name for name in (_ADAPTER, *(f"{part}.safetensors" for part in _PARTS)) if not (path / name).is_file()]
    if missing:
        raise TrainingError(f"{path} is incomplete (no {', '.join(missing)}); resume from another checkpoint with "
                            f"--resume {path.parent}/step-N, or {_START_OVER}")
    wrong = [key for key, ok in _STATE_FIELDS.items() if (key in state or key == "step") and not ok(state.get(key))]
    if wrong:
        raise _damaged(path / _STATE, ValueError(f"bad value for {', '.join(wrong)}"))
    return state


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


# what the training loop reads back from trainer_state.json, and what each must be
_STATE_FIELDS = {
    "step": _count, "processes": _count, "supervised_tokens": _count, "sharded": lambda v: isinstance(v, bool),
    "train_seconds": _number_or_none, "best_eval_loss": _number_or_none, "first_eval_loss": _number_or_none,
    "final_eval_loss": _number_or_none, "final_train_loss": _number_or_none,
    "best_step": lambda v: v is None or _count(v), "best_score": _number_or_none, "best_eval_sari": _number_or_none,
    "final_eval_sari": _number_or_none, "method": lambda v: v in ("lora", "full"),
}


def rng_state() -> dict[str, Any]:
    """This process's random number generators (dropout masks come from them)."""
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_adapter(path: Path, model: Any) -> None:
    """The checkpoint's trainable weights into `model`: LoRA adapters (before FSDP shards it, when it
    does), or a full fine-tuning run's weights.

    Raises:
        TrainingError: the file is damaged, or (method full) holds other weights than `model` trains.
    """
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path / _ADAPTER))
    except Exception as exc:  # noqa: BLE001 - any failure to parse the file means it is damaged
        raise _damaged(path / _ADAPTER, exc) from None
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
        return
    _load_whole_weights(path / _ADAPTER, model, weights)


def _load_whole_weights(file: Path, model: Any, weights: dict[str, Any]) -> None:
    trains = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != trains:
        odd = sorted(set(weights) ^ trains)
        raise TrainingError(f"{file} holds other weights than this run trains ({len(set(weights) - trains)} it does not train, "
                            f"{len(trains - set(weights))} missing, e.g. {odd[0]}): it was written with other settings "
                            f"(train_embeddings?); resume with those, or {_START_OVER}")
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a shape that differs
        raise _damaged(file, exc) from None


def load_checkpoint(
    path: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any = None, *, load_optimizer: Any = None,
    rank: int = 0, world: int = 1,
) -> dict[str, Any]:
    """Restore a checkpoint into live objects; returns its trainer state (with `step`).

    `model` None skips the adapter (already loaded with `load_adapter`); `load_optimizer` replaces
    `optimizer.load_state_dict` (FSDP: a whole state into a sharded optimizer). Process `rank` of
    `world` takes its own RNG state when the checkpoint was written by as many processes.

    Raises:
        TrainingError: the checkpoint is of an old format, incomplete or damaged.
    """
    import torch

    state = resumable_state(path)
    if model is not None:
        load_adapter(path, model)
    parts = {name: _unpack(path / f"{name}.safetensors") for name in _PARTS}
    if scaler is not None and (path / "scaler.safetensors").is_file():
        parts["scaler"] = _unpack(path / "scaler.safetensors")
    name = "optimizer"
    try:
        (load_optimizer or optimizer.load_state_dict)(parts["optimizer"])
        name = "scheduler"
        scheduler.load_state_dict(parts["scheduler"])
        if "scaler" in parts:
            name = "scaler"
            scaler.load_state_dict(parts["scaler"])
        name = "rng"
        rng = parts["rng"]
        if len(rng.get("ranks", [])) == world:
            rng = rng["ranks"][rank]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise _damaged(path / f"{name}.safetensors", exc) from None
    return {k: v for k, v in state.items() if k != "format"}  # the file's layout is no part of the run's state


def data_fingerprint(train: list[Path], eval_: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """Size and SHA-256 of every train and eval data file: what a resumed run must train on again."""
    return {"train": [_fingerprint(Path(p)) for p in train], "eval": [_fingerprint(Path(p)) for p in eval_]}


def _fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def check_same_data(checkpoint: Path, saved: dict[str, Any], now: dict[str, list[dict[str, Any]]]) -> None:
    """Stop a resume whose data files differ from those the checkpoint trained on.

    Raises:
        TrainingError: names the first file that changed (or was added or removed) and the ways forward.
    """
    before = saved.get("data")
    entry = lambda e: isinstance(e, dict) and isinstance(e.get("path"), str)  # noqa: E731
    if not (isinstance(before, dict) and all(isinstance(before.get(r), list) and all(map(entry, before[r])) for r in ("train", "eval"))):
        raise _damaged(checkpoint / _STATE, ValueError("no valid record of the data it trained on"))
    for role in ("train", "eval"):
        for old, new in zip_longest(before[role], now.get(role) or []):
            if old == new:
                continue
            if old is None:
                what = f"the {role} data now includes {new['path']}, which {checkpoint} did not train on"
            elif new is None:
                what = f"the {role} data no longer includes {old.get('path')}, which {checkpoint} trained on"
            elif old.get("path") != new["path"]:
                what = f"the {role} data is {new['path']}, but {checkpoint} trained on {old.get('path')}"
            else:
                what = (f"{new['path']} ({role} data) changed since {checkpoint} was written: it was {old.get('size')} bytes, "
                        f"sha256 {str(old.get('sha256'))[:12]}, and is now {new['size']} bytes, sha256 {new['sha256'][:12]}")
            raise TrainingError(f"{what}; resuming would continue the run on other data. Restore the file, or {_START_OVER}")


def _damaged(path: Path, exc: BaseException) -> TrainingError:
    return TrainingError(
        f"{path} is damaged or not a qdtool checkpoint file ({type(exc).__name__}: {str(exc)[:200]}); resume from another "
        f"checkpoint with --resume {path.parent.parent}/step-N, or {_START_OVER}"
    )


# --- a state tree (nested dicts, lists, tuples, numbers, tensors) as one safetensors file ---------

def _pack(tree: Any) -> bytes:
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    structure = _encode(tree, tensors, set())
    return save(tensors, metadata={_TREE: json.dumps(structure)})


def _encode(value: Any, tensors: dict[str, Any], storages: set[int]) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage and storage in storages:  # safetensors refuses tensors that share memory
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        key = str(len(tensors))
        tensors[key] = tensor
        return {"__tensor__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not _TAGS & value.keys():
            return {k: _encode(v, tensors, storages) for k, v in value.items()}
        return {"__dict__": [[_encode(k, tensors, storages), _encode(v, tensors, storages)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, storages) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors, storages) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__} (only tensors, numbers, strings, lists, tuples, dicts)")


def _unpack(path: Path) -> Any:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            structure = json.loads((f.metadata() or {})[_TREE])
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        return _decode(structure, tensors)
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, it cannot be resumed from
        raise _damaged(path, exc) from None


def _decode(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and value.keys() <= _TAGS:
            (tag, inner), = value.items()
            if tag == "__tensor__":
                return tensors[inner]
            if tag == "__tuple__":
                return tuple(_decode(v, tensors) for v in inner)
            return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in inner}
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict)):
        raise TypeError(f"a dict key cannot be a {type(key).__name__}")
    return key
